"""A Triton Inference Server model repository from an exported ONNX file or TensorRT engine.

``export --format triton`` writes the ONNX file to OUT as usual and the model folder to the
repository OUT/triton: Triton takes every subfolder of a repository for a model, and OUT holds
other things (hidden caches of ONNX Runtime's TensorRT provider, for one).

    REPO/NAME/config.pbtxt    platform, inputs and outputs (names, data types, dims read from the
                              graph), batching, one GPU instance, the TensorRT accelerator (ONNX),
                              the preprocessing the client must do (mean, std, size) as parameters
    REPO/NAME/labels.txt      the class names, one per line (line i = class index i)
    REPO/NAME/1/model.onnx    the parity-checked ONNX file, byte for byte (or 1/model.plan: the engine)

``tritonserver --model-repository REPO`` serves every model folder in REPO. The config has no
``name`` field: Triton then takes the folder's name, so the folder may be renamed freely (a
``name`` that differs from its folder makes Triton refuse the model).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from dronseg_edge import __version__
from dronseg_edge.atomic import ensure_writable_dir, storage_errors
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.leftovers import working_prefix
from dronseg_edge.metadata import ModelInfo, read_engine_sidecar, read_onnx_info

PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".engine": ("tensorrt_plan", "model.plan")}
LABELS = "labels.txt"
MARKER = "written by dronseg-edge"  # first line of every config.pbtxt here: whose folder may be replaced
# ONNX element type -> Triton data type (model_config.proto's DataType).
DATA_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16", onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.UINT64: "TYPE_UINT64", onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
}
# ONNX Runtime's TensorRT accelerator builds its own engine from the ONNX graph: with the precision the
# graph was exported for (Q/DQ int8 graphs need INT8 and no calibration table; fp16 graphs need FP16).
PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # TYPE_FP32, TYPE_UINT8, ...
    dims: tuple[int, ...]  # -1 for a dynamic dimension


def model_name(base: str, precision: str, backend: str) -> str:
    """``best_fp16`` (the ONNX file's stem) for ONNX Runtime, ``best_fp16_plan`` for a TensorRT plan."""
    return f"{base}_{precision}" + ("_plan" if backend == "tensorrt" else "")


def check_triton_backend(backend: str) -> None:
    """Fail before any export work when ``backend`` (export.options.TRITON_BACKENDS) cannot be built here."""
    if backend == "tensorrt":
        from dronseg_edge.runtime.tensorrt_env import import_tensorrt

        try:
            import_tensorrt()
        except BackendUnavailable as exc:
            raise BackendUnavailable(
                f"--triton-backend tensorrt builds model.plan here, on the GPU that will serve it, and needs TensorRT: "
                f"{exc}; or use the default --triton-backend onnxruntime (model.onnx, which Triton's ONNX Runtime "
                "backend runs with its TensorRT accelerator)") from None


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


def _tensor_block(spec: TensorSpec, dims: tuple[int, ...], labels: bool) -> list[str]:
    lines = ["  {", f"    name: {_quoted(spec.name)}", f"    data_type: {spec.data_type}",
             f"    dims: [ {', '.join(str(d) for d in dims)} ]"]
    if labels:
        lines.append(f"    label_filename: {_quoted(LABELS)}")
    return lines + ["  }"]


def config_text(info: ModelInfo, inputs: list[TensorSpec], outputs: list[TensorSpec], *, platform: str,
                source: Path, max_batch: int, workspace_gib: float) -> str:
    """config.pbtxt for these tensors. A graph whose every tensor has a dynamic first dimension batches:
    ``max_batch_size`` > 0, dims without the batch, and dynamic batching; otherwise ``max_batch_size: 0``
    and the full dims."""
    batching = all(spec.dims and spec.dims[0] == -1 for spec in inputs + outputs)
    width, height = info.input_size
    lines = [
        f"# Triton Inference Server model configuration, {MARKER} {__version__} from {source.name}",
        f"# precision {info.precision}, head {info.head}, input {width}x{height} (WxH), "
        + ("dynamic batch" if batching else f"batch {info.batch or 1}") + (", dynamic height/width" if info.dynamic else ""),
        "# The client sends float32 NCHW RGB scaled to 0..1, minus mean, divided by std (parameters below).",
        f"platform: {_quoted(platform)}",
        f"max_batch_size: {max_batch if batching else 0}",
        "input [",
    ]
    for index, spec in enumerate(inputs):
        lines += _tensor_block(spec, spec.dims[1:] if batching else spec.dims, labels=False)
        if index < len(inputs) - 1:
            lines[-1] += ","
    lines += ["]", "output ["]
    for index, spec in enumerate(outputs):
        lines += _tensor_block(spec, spec.dims[1:] if batching else spec.dims, labels=index == 0)
        if index < len(outputs) - 1:
            lines[-1] += ","
    lines.append("]")
    if batching:
        lines.append("dynamic_batching { }")
    lines += ["instance_group [", "  {", "    kind: KIND_GPU", "    count: 1", "  }", "]"]
    if platform == "onnxruntime_onnx":
        lines += [
            "# ONNX Runtime builds a TensorRT engine at load (minutes for ResNet-101); to keep it between",
            "# restarts add parameters trt_engine_cache_enable \"1\" and trt_engine_cache_path (a writable folder).",
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator: [",
            "      {",
            "        name: \"tensorrt\"",
            f"        parameters {{ key: \"precision_mode\" value: {_quoted(PRECISION_MODES.get(info.precision, 'FP32'))} }}",
            f"        parameters {{ key: \"max_workspace_size_bytes\" value: \"{int(workspace_gib * (1 << 30))}\" }}",
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    # Backends read only the parameter keys they know; these are for clients (get_model_config).
    parameters = {
        "mean": ",".join(f"{v:g}" for v in info.mean), "std": ",".join(f"{v:g}" for v in info.std),
        "input_size": f"{width}x{height}", "input_layout": "NCHW RGB float32", "head": info.head,
        "precision": info.precision, "source_sha256": info.source_sha256, "dronseg_edge": __version__,
    }
    for key, value in parameters.items():
        lines.append(f"parameters {{ key: {_quoted(key)} value: {{ string_value: {_quoted(value)} }} }}")
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


def _check_replaceable(folder: Path) -> None:
    """Only a folder this module wrote (or an empty one) is replaced: NAME might be someone's own model."""
    if not folder.exists():
        return
    config = folder / "config.pbtxt"
    ours = False
    with contextlib.suppress(OSError):
        ours = MARKER in (config.read_text(encoding="utf-8").splitlines() or [""])[0]
    if not folder.is_dir() or not (ours or not any(folder.iterdir())):
        raise DronsegError(f"{folder} exists and is not a model folder written by dronseg-edge: move it away, "
                           "or pass another --out")


def _publish(staged: Path, final: Path) -> None:
    """Move the finished folder into place; an older one is swapped out first and removed after."""
    if not final.exists():
        os.rename(staged, final)
        return
    old = Path(tempfile.mkdtemp(prefix=working_prefix(final.name) + "old-", dir=staged.parent))
    os.rmdir(old)  # only its unique name is wanted
    os.rename(final, old)
    try:
        os.rename(staged, final)
    except OSError:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_model_repository(artifact: Path, root: Path, name: str, *, max_batch: int = 4,
                           workspace_gib: float = 4.0) -> Path:
    """Lay out ``root/name`` (see the module docstring) for ``artifact`` (.onnx or .engine); returns that folder.

    ``max_batch``: Triton's max_batch_size for a graph with a dynamic batch (an engine's own profile
    wins); ``workspace_gib``: the TensorRT accelerator's workspace, GiB. The folder is built under a
    hidden temporary name in the repository's parent folder and renamed into place, so Triton (which
    may poll the repository) never sees half a model, nor a temporary folder it would take for one.
    """
    artifact, root = Path(artifact), Path(root)
    ensure_writable_dir(root, "Triton model repository")
    if artifact.suffix.lower() not in PLATFORMS:
        raise DronsegError(f"{artifact}: a Triton repository is made from an .onnx file or an .engine, not {artifact.suffix!r}")
    platform, filename = PLATFORMS[artifact.suffix.lower()]
    info, graph, max_batch = _artifact_parts(artifact, max_batch)
    inputs, outputs = graph_io(graph)
    text = config_text(info, inputs, outputs, platform=platform, source=artifact, max_batch=max_batch,
                       workspace_gib=workspace_gib)
    final = root / name
    _check_replaceable(final)
    with storage_errors(final):  # a full or read-only disk: one line naming the model folder, exit code 5
        _stage_and_publish(artifact, final, filename, info, text)
    return final


def _stage_and_publish(artifact: Path, final: Path, filename: str, info: ModelInfo, text: str) -> None:
    """Build the model folder under a hidden name beside the repository, then rename it to ``final``."""
    name = final.name
    staged = Path(tempfile.mkdtemp(prefix=working_prefix(name), suffix=".tmp", dir=final.parent.parent))
    try:
        version = staged / "1"
        version.mkdir()
        shutil.copyfile(artifact, version / filename)
        external = artifact.with_name(artifact.name + ".data")  # > 2 GiB graphs: its name is fixed inside the graph
        if filename == "model.onnx" and external.is_file():
            shutil.copyfile(external, version / external.name)
        (staged / LABELS).write_text("".join(f"{label}\n" for label in info.class_names), encoding="utf-8")
        (staged / "config.pbtxt").write_text(text, encoding="utf-8")
        # mkdtemp makes 0700 folders; Triton often runs as another user (a container): plain mkdir permissions.
        for folder in (staged, version):
            os.chmod(folder, 0o777 & ~_umask())
        _publish(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
