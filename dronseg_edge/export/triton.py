"""A Triton Inference Server model repository from an exported ONNX file or TensorRT engine.

``export --format triton`` writes the ONNX file to OUT as usual and the model folder to the
repository OUT/triton: Triton takes every subfolder of a repository for a model, and OUT holds
other things (hidden caches of ONNX Runtime's TensorRT provider, for one).

    REPO/NAME/config.pbtxt    platform, inputs and outputs (names, data types, dims read from the
                              graph), batching, the instance group, ONNX Runtime's TensorRT accelerator
                              with its shape profile, and for clients: the class names, and for float
                              inputs the preprocessing (mean, std, size), as parameters
    REPO/NAME/labels.txt      the class names, one per line (line i = class index i)
    REPO/NAME/1/model.onnx    the parity-checked ONNX file, byte for byte (or 1/model.plan: the engine)

Choices (reasons and sources: docs/triton.md): the export frees the batch axis and the config declares
``max_batch_size`` (max(--batch, 4)) and ``dynamic_batching`` (Triton batches along a free first dimension
only); ONNX Runtime's TensorRT accelerator gets ``trt_profile_{min,opt,max}_shapes`` (else it rebuilds its
engine for each larger shape); ``KIND_AUTO`` for ONNX Runtime (a CPU-only server loads it too), ``KIND_GPU``
for a plan; no ``label_filename`` (Triton's classification extension would label pixels); no ``name`` (Triton
takes the folder's, so it may be renamed). ``tritonserver --model-repository REPO`` serves every folder in REPO.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from dronseg_edge import __version__
from dronseg_edge.atomic import ensure_writable_dir, storage_faults
from dronseg_edge.errors import DronsegError
from dronseg_edge.export.tensorrt import dynamic_profile
from dronseg_edge.leftovers import working_prefix
from dronseg_edge.metadata import ModelInfo, read_engine_sidecar, read_onnx_info

PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".engine": ("tensorrt_plan", "model.plan")}
LABELS = "labels.txt"
MARKER = "written by dronseg-edge"  # first line of every config.pbtxt here: whose folder may be replaced
# ONNX element type -> Triton data type (model_config.proto's DataType): TYPE_ and the ONNX name, floats renamed.
_FLOATS = {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "DOUBLE": "FP64"}
DATA_TYPES = {onnx.TensorProto.DataType.Value(name): "TYPE_" + _FLOATS.get(name, name) for name in
              (*_FLOATS, "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64", "BOOL", "STRING")}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # TYPE_FP32, TYPE_UINT8, ...
    dims: tuple[int, ...]  # -1 for a dynamic dimension


def model_name(base: str, precision: str, backend: str) -> str:
    """``best_fp16`` (the ONNX file's stem) for ONNX Runtime, ``best_fp16_plan`` for a TensorRT plan."""
    return f"{base}_{precision}" + ("_plan" if backend == "tensorrt" else "")


def graph_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of an ONNX graph: names, Triton data types, dims (-1 where symbolic)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise DronsegError(f"cannot read {path} as an ONNX graph ({type(exc).__name__}): re-export it") from None
    initializers = {tensor.name for tensor in model.graph.initializer}  # old exporters list weights as inputs

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        if tensor.elem_type not in DATA_TYPES:
            raise DronsegError(f"{path}: tensor {value.name!r} has ONNX element type {tensor.elem_type}, "
                               "which Triton has no data type for")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)
        return TensorSpec(value.name, DATA_TYPES[tensor.elem_type], dims)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def _quoted(text: str) -> str:
    # JSON's escapes (\" \\ \n) are valid in protobuf text format; non-ASCII stays raw UTF-8, which it accepts.
    return json.dumps(str(text), ensure_ascii=False)


def _tensor_blocks(key: str, specs: list[TensorSpec], batching: bool) -> list[str]:
    """One ``input { ... }`` or ``output { ... }`` per tensor: name, data type, dims (without the batch when batching)."""
    return [f"{key} {{ name: {_quoted(spec.name)} data_type: {spec.data_type} "
            f"dims: [ {', '.join(map(str, spec.dims[1:] if batching else spec.dims))} ] }}" for spec in specs]


def trt_profile(info: ModelInfo, spec: TensorSpec, *, max_batch: int, opt_batch: int, source: Path) -> dict[str, str]:
    """ONNX Runtime's TensorRT accelerator parameters ``trt_profile_{min,opt,max}_shapes`` for the input
    ``spec`` ("name:1x3x64x96", full shapes with the batch), {} when every dimension of it is fixed.

    The shapes are a dynamic engine's (export/tensorrt.dynamic_profile), with the batch ending at ``max_batch``.
    """
    if -1 not in spec.dims:
        return {}
    shapes = dynamic_profile(info, opt_batch)
    shapes["opt"][0], shapes["max"][0] = min(opt_batch, max_batch), max_batch
    for shape in shapes.values():
        if len(shape) != len(spec.dims) or any(d not in (-1, s) for d, s in zip(spec.dims, shape)):
            raise DronsegError(f"{source}: input {spec.name!r} has dims {list(spec.dims)}, but its metadata describes "
                               f"{shape} (batch, size, io): re-export it")
    return {f"trt_profile_{key}_shapes": f"{spec.name}:" + "x".join(str(d) for d in shape) for key, shape in shapes.items()}


def _accelerator_lines(info: ModelInfo, profile: dict[str, str], workspace_gib: float) -> list[str]:
    """ONNX Runtime's TensorRT accelerator (onnxruntime_backend's README), used only by GPU instances."""
    # ORT's TensorRT accelerator builds its own engine with the precision the graph was exported for (Q/DQ
    # int8 graphs need INT8 and no calibration table; fp16 graphs need FP16).
    values = {"precision_mode": info.precision.upper() if info.precision in ("fp16", "int8") else "FP32",
              "max_workspace_size_bytes": str(int(workspace_gib * (1 << 30))), **profile}
    return [
        "# ONNX Runtime builds a TensorRT engine at load (minutes for ResNet-101); to keep it between",
        "# restarts add parameters trt_engine_cache_enable \"1\" and trt_engine_cache_path (a writable folder).",
        "optimization { execution_accelerators { gpu_execution_accelerator: [ {", '  name: "tensorrt"',
        *(f"  parameters {{ key: {_quoted(k)} value: {_quoted(v)} }}" for k, v in values.items()), "} ] } }",
    ]


def _client_parameters(info: ModelInfo) -> dict[str, str]:
    """What a client needs besides the tensors (backends read only the parameter keys they know)."""
    width, height = info.input_size
    common = {"class_names": json.dumps(list(info.class_names), ensure_ascii=False), "io": info.io,
              "input_size": f"{width}x{height}", "head": info.head, "precision": info.precision,
              "source_sha256": info.source_sha256, "dronseg_edge": __version__}
    if info.io == "frames":
        frame = "any" if info.source_size is None else f"{info.source_size[0]}x{info.source_size[1]}"
        return {"input_layout": f"NHWC {info.color_order} uint8", "frame_size": frame, **common}
    return {"input_layout": f"NCHW {info.color_order} float32", "mean": ",".join(f"{v:g}" for v in info.mean),
            "std": ",".join(f"{v:g}" for v in info.std), **common}


def config_text(info: ModelInfo, inputs: list[TensorSpec], outputs: list[TensorSpec], *, platform: str,
                source: Path, max_batch: int, workspace_gib: float, opt_batch: int = 1) -> str:
    """config.pbtxt for these tensors. A graph whose every tensor has a dynamic first dimension batches:
    ``max_batch_size`` = ``max_batch``, dims without the batch, and dynamic batching; otherwise
    ``max_batch_size: 0`` and the full dims. ``opt_batch``: the batch the TensorRT accelerator tunes for."""
    batching = all(spec.dims and spec.dims[0] == -1 for spec in inputs + outputs)
    width, height = info.input_size
    frames = info.io == "frames"
    shape = f"frames {info.source_size[0]}x{info.source_size[1]} (WxH), " if frames and info.source_size else ""
    lines = [
        # a comment ends at a line break: one in the file's name would start a line no parser takes
        f"# Triton Inference Server model configuration, {MARKER} {__version__} from {' '.join(source.name.splitlines())}",
        f"# precision {info.precision}, head {info.head}, io {info.io}, {shape}model input {width}x{height} (WxH), "
        + (f"batches of 1 to {max_batch}" if batching else f"batch {info.batch or 1}")
        + (", dynamic height/width" if info.dynamic else ""),
        "# The client sends uint8 BGR frames (H, W, 3) as cv2.imread gives them; resize, normalisation and argmax "
        "are inside the graph." if frames else
        "# The client sends float32 NCHW RGB scaled to 0..1, minus mean, divided by std (parameters below).",
        f"platform: {_quoted(platform)}",
        f"max_batch_size: {max_batch if batching else 0}",
        *_tensor_blocks("input", inputs, batching),
        *_tensor_blocks("output", outputs, batching),
        *(["dynamic_batching { }"] if batching else []),
        # KIND_AUTO: a GPU instance where Triton sees a GPU, else a CPU one; a TensorRT plan runs on GPUs only.
        f"instance_group [ {{ kind: {'KIND_AUTO' if platform == 'onnxruntime_onnx' else 'KIND_GPU'} count: 1 }} ]",
    ]
    if platform == "onnxruntime_onnx":
        profile = trt_profile(info, inputs[0], max_batch=max_batch, opt_batch=opt_batch, source=source) \
            if len(inputs) == 1 else {}
        lines += _accelerator_lines(info, profile, workspace_gib)
    lines += [f"parameters {{ key: {_quoted(k)} value: {{ string_value: {_quoted(v)} }} }}" for k, v in _client_parameters(info).items()]
    return "\n".join(lines) + "\n"


def _artifact_parts(artifact: Path, max_batch: int) -> tuple[ModelInfo, Path, int]:
    """(metadata, the ONNX graph that names the tensors, max batch) of an .onnx file or an .engine."""
    if artifact.suffix.lower() == ".onnx":
        return read_onnx_info(artifact), artifact, max_batch
    info = read_engine_sidecar(artifact)
    built = info.extra.get("tensorrt") or {}
    graph = artifact.with_name(str(built.get("onnx") or ""))
    if not built.get("onnx") or not graph.is_file():
        raise DronsegError(f"{artifact}: the ONNX file it was built from ({graph.name or 'unrecorded'}) is not beside it; "
                           "its tensors are read from there: re-export with --format triton --triton-backend tensorrt")
    profile = built.get("profile") or {}
    # A plan serves at most its optimisation profile's batch: Triton must not batch beyond it.
    return info, graph, int(profile["max"][0]) if profile.get("max") else max_batch


def check_replaceable(folder: Path) -> None:
    """Only a folder this module wrote (or an empty one) is replaced: NAME might be someone's own model. Export calls it
    before its work, with the repository's own check: a file there is refused, not met after the work."""
    if folder.parent.exists() and not folder.parent.is_dir():
        raise DronsegError(f"{folder.parent} is a file, where the Triton model repository goes: move it away, or pass "
                           "another --out")
    try:
        first = (folder / "config.pbtxt").read_text(encoding="utf-8", errors="replace").partition("\n")[0]
    except OSError:
        first = ""
    if folder.exists() and not (folder.is_dir() and (MARKER in first or not any(folder.iterdir()))):
        raise DronsegError(f"{folder} exists and is not a model folder written by dronseg-edge: move it away, "
                           "or pass another --out")


def _publish(staged: Path, final: Path) -> None:
    """Move the finished folder into place; an older one is swapped out first and removed after. Another
    export of the same model publishing meanwhile may swap ours out in turn: the last one stays."""
    olds: list[Path] = []
    while True:
        try:
            os.rename(staged, final)  # onto nothing or an empty folder; a model folder there: ENOTEMPTY
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                if olds:
                    with contextlib.suppress(OSError):
                        os.rename(olds[-1], final)  # the folder swapped out, back in place
                raise
        old = Path(tempfile.mkdtemp(prefix=working_prefix(final.name) + "old-", dir=staged.parent))
        os.rmdir(old)  # only its unique name is wanted
        with contextlib.suppress(FileNotFoundError):  # gone: another export swapped it out first
            os.rename(final, old)
            olds.append(old)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def write_model_repository(artifact: Path, root: Path, name: str, *, max_batch: int = 4, opt_batch: int = 1,
                           workspace_gib: float = 4.0) -> Path:
    """Lay out ``root/name`` (see the module docstring) for ``artifact`` (.onnx or .engine); returns that folder.

    ``max_batch``: Triton's max_batch_size for a graph with a dynamic batch (an engine's own profile
    wins); ``opt_batch``: the batch ONNX Runtime's TensorRT accelerator tunes for; ``workspace_gib``:
    its workspace, GiB. The folder is built under a hidden name in the repository's parent folder and
    renamed into place: Triton (which may poll the repository) never sees half a model, nor takes the
    temporary folder for one.
    """
    artifact, root = Path(artifact), Path(root)
    ensure_writable_dir(root, "Triton model repository")
    if artifact.suffix.lower() not in PLATFORMS:
        raise DronsegError(f"{artifact}: a Triton repository is made from an .onnx file or an .engine, not {artifact.suffix!r}")
    platform, filename = PLATFORMS[artifact.suffix.lower()]
    info, graph, max_batch = _artifact_parts(artifact, max_batch)
    inputs, outputs = graph_io(graph)
    text = config_text(info, inputs, outputs, platform=platform, source=artifact, max_batch=max_batch,
                       workspace_gib=workspace_gib, opt_batch=opt_batch)
    final = root / name
    check_replaceable(final)
    # A full or read-only disk: one line naming the model folder, exit code 5.
    with storage_faults(final):
        staged = Path(tempfile.mkdtemp(prefix=working_prefix(name), suffix=".tmp", dir=root.parent))
        try:
            version = staged / "1"
            version.mkdir()
            shutil.copyfile(artifact, version / filename)
            external = artifact.with_name(artifact.name + ".data")  # > 2 GiB graphs: its name is fixed inside the graph
            if filename == "model.onnx" and external.is_file():
                shutil.copyfile(external, version / external.name)
            (staged / LABELS).write_text("".join(f"{label}\n" for label in info.class_names), encoding="utf-8")
            (staged / "config.pbtxt").write_text(text, encoding="utf-8")
            # mkdtemp makes 0700 folders; Triton often runs as another user (a container): plain mkdir
            # permissions, as its subfolder 1/ got.
            os.chmod(staged, stat.S_IMODE(version.stat().st_mode))
            _publish(staged, final)
        except BaseException as exc:
            shutil.rmtree(staged, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno == errno.EXDEV:  # no rename from root.parent into root
                raise DronsegError(f"{root} is a link or mount point onto another file system: the model folder is made "
                                   f"in {root.parent} and renamed into it; pass an --out whose triton/ is a plain folder, "
                                   "and copy the model folder from there") from None
            raise
    return final
