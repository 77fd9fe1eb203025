"""ONNX file -> serialized TensorRT engine, on TensorRT 8.6 (JetPack 6.0), 10.x (JetPack 6.1/6.2: 10.3) and 11.x.

Precision: TensorRT 11 has only strongly typed networks, so precision comes from the ONNX file
(the fp16 graph, or the Q/DQ int8 graph). On 10.x and 8.6 fp16 comes from the fp32 graph and the
FP16 builder flag (weakly typed: TensorRT picks fp16 kernels where they are faster), and int8 from
the Q/DQ graph with the INT8 and FP16 flags so the unquantised layers may run in fp16; fp32 builds
have TF32 off (strict fp32, like parity's PyTorch reference) and are strongly typed where the
version has it (10.x, 11.x). 8.6 networks need the EXPLICIT_BATCH flag (tensorrt_env.network_flags)
and its parser reads ONNX opsets up to 17. Every TensorRT name used here is checked against the real
8.6, 10.3 and 11.4 bindings by tests/export/test_tensorrt_names.py.

An engine only runs on the GPU model and TensorRT version that built it: its name and its JSON
sidecar say both. Finding TensorRT and the GPU is runtime/tensorrt_env.py's job, shared with the runner.

DLA (``dla_core``): the layers DLA can run go to that core of a Jetson, the rest fall back to the GPU.
DLA runs fp16/int8 at fixed shapes only (export/options.py refuses the rest); TensorRT 11.0 to 11.4.0
dropped it on Linux (11.4.1 brought it back for Jetson AGX Orin on JetPack 7.2.2+).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from dronseg_edge.atomic import atomic_path
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.machine import cache_root
from dronseg_edge.metadata import ModelInfo, sha256_file, write_engine_sidecar
from dronseg_edge.runtime import cuda_runtime, tensorrt_env

log = logging.getLogger(__name__)

MIN_SIDE = 64  # smallest height/width a --dynamic engine accepts (the backbone downsamples 16-32x)
MIN_MAX_BATCH = 4


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'; 'Orin' -> 'orin'."""
    name = re.sub(r"^nvidia\s+", "", gpu_name.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def engine_filename(base: str, precision: str, gpu_name: str, compute_capability: str, trt_version: str,
                    dla_core: int | None = None) -> str:
    """``NAME_<precision>_<gpu>_sm<cc>[_dla<N>]_trt<version>.engine`` (a DLA engine names its core)."""
    cc = compute_capability.replace(".", "")
    dla = "" if dla_core is None else f"_dla{dla_core}"
    return f"{base}_{precision}_{gpu_slug(gpu_name)}_sm{cc}{dla}_trt{trt_version}.engine"


# TensorRT versions without DLA on Linux: from 11.0 up to (not including) 11.4.1.
NO_DLA_FROM, DLA_BACK_IN = (11, 0, 0), (11, 4, 1)
# Newest ONNX opset each parser reads (onnx-tensorrt docs/operators.md: "TensorRT 8.5 supports operators
# up to Opset 17", the same for 8.6); 10.x and 11.x read the exporters' default opsets (17 and 18).
MAX_OPSET = {8: 17}


def check_dla(trt, builder, dla_core: int) -> None:
    """DronsegError (one line) unless ``dla_core`` is a DLA core ``builder`` sees."""
    version = str(trt.__version__)
    if NO_DLA_FROM <= tensorrt_env.version_tuple(version) < DLA_BACK_IN:
        raise BackendUnavailable(f"--dla-core {dla_core}: TensorRT {version} has no DLA (11.0 to 11.4.0 dropped it; "
                                 "TensorRT 8.6 or 10.x on JetPack 6 and 11.4.1+ on JetPack 7.2.2 have it): drop "
                                 "--dla-core to build for the GPU")
    cores = int(builder.num_DLA_cores)
    if cores == 0:
        raise BackendUnavailable(f"--dla-core {dla_core}: TensorRT {version} sees no DLA core on this machine (Jetson "
                                 "AGX Orin and Orin NX have DLA; Orin Nano and desktop/server GPUs do not): drop --dla-core")
    if dla_core >= cores:
        raise DronsegError(f"--dla-core {dla_core}: this machine has {cores} DLA core{'s' if cores > 1 else ''} "
                           f"(0..{cores - 1}): pass one of them")


def check_dla_available(dla_core: int) -> None:
    """check_dla with a builder of its own: the CLI calls it before any ONNX work, so a refusal comes first."""
    trt = tensorrt_env.import_tensorrt()
    check_dla(trt, trt.Builder(trt.Logger(trt.Logger.WARNING)), dla_core)


def default_timing_cache(gpu_name: str, compute_capability: str, trt_version: str) -> Path:
    """A per-GPU, per-version timing cache in the user's cache folder, reused by every build there."""
    root = cache_root() / "tensorrt"
    cc = compute_capability.replace(".", "")
    return root / f"timing_{gpu_slug(gpu_name)}_sm{cc}_trt{trt_version}.cache"


# Largest frame a dynamic frames engine (export --io frames --dynamic) takes unless the model input
# is larger: TensorRT reserves activation memory for the profile's maximum, and bilinear logits of
# 4 x 12 classes at 4K would need ~1.6 GB of it, too much beside the model on an 8 GB Jetson.
FRAMES_MAX_SIZE = (1920, 1080)


def dynamic_profile(info: ModelInfo, batch: int, min_shape=None, opt_shape=None, max_shape=None) -> dict[str, list[int]]:
    """min/opt/max input shapes of a --dynamic engine: 1 x 64x64 up to max(batch, 4) x the export size.

    A frames graph (``info.io == 'frames'``) takes (N, H, W, 3) uint8 frames of any size, resized
    inside: 1 x 64x64 up to max(batch, 4) x the larger of FRAMES_MAX_SIZE and the model input.
    A graph with only a free batch (``info.batch`` None, not ``info.dynamic``): 1 to max(batch, 4) at its size.
    ``min_shape`` / ``opt_shape`` / ``max_shape`` ((batch, width, height), export --min-shape ...) replace
    those of a ``dynamic`` graph where given; DronsegError unless every side grows from min to opt to max.
    """
    width, height = info.input_size
    if not info.dynamic:
        fixed = [3, height, width] if info.io != "frames" else [*(info.source_size or info.input_size)[::-1], 3]
        return {"min": [1, *fixed], "opt": [batch, *fixed], "max": [max(batch, MIN_MAX_BATCH), *fixed]}
    top_w, top_h = (max(width, FRAMES_MAX_SIZE[0]), max(height, FRAMES_MAX_SIZE[1])) if info.io == "frames" else (width, height)
    given = {"min": min_shape, "opt": opt_shape, "max": max_shape}
    shapes = {"min": (1, min(MIN_SIDE, width), min(MIN_SIDE, height)), "opt": (batch, width, height),
              "max": (max(batch, MIN_MAX_BATCH), top_w, top_h)}
    shapes.update({name: tuple(shape) for name, shape in given.items() if shape is not None})
    for low, high in (("min", "opt"), ("opt", "max")):
        if any(a > b for a, b in zip(shapes[low], shapes[high])):
            shown = {name: "x".join(map(str, shape)) + ("" if given[name] else " (default)") for name, shape in shapes.items()}
            raise DronsegError(f"engine profile of {info.input_size[0]}x{info.input_size[1]} model: --{low}-shape "
                               f"{shown[low]} is larger than --{high}-shape {shown[high]} on some side (BATCHxWIDTHxHEIGHT): "
                               "give shapes that grow from min to opt to max")
    return {name: [n, h, w, 3] if info.io == "frames" else [n, 3, h, w] for name, (n, w, h) in shapes.items()}


def uses_strong_typing(trt, precision: str) -> bool:
    """11.x: always (its only mode). 10.x: fp32 only; fp16 and int8 use builder flags (module docstring).
    8.6: never (strong typing came with 9.x); fp32 is the default there, TF32 cleared like on 10.x."""
    if tensorrt_env.trt_major(trt) >= 11:
        return True
    return precision == "fp32" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def _attributes(node) -> str:
    """'antialias=1, mode=linear': the node's scalar and string attributes (what a parser restriction names)."""
    import onnx

    shown = []
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        value = value.decode(errors="replace") if isinstance(value, bytes) else value
        if isinstance(value, (int, float, str)) or (isinstance(value, list) and len(value) <= 8):
            shown.append(f"{attribute.name}={value}")
    return ", ".join(shown[:8])


def parser_errors(parser, onnx_path: Path) -> str:
    """All ONNX parser errors as one line: node index, name, operator, error code, description and the
    node's attributes. 10.x+ parsers name the node themselves (node_name/node_operator); for 8.6 the
    name and operator are read from the ONNX file at the node index the parser gives."""
    try:
        import onnx

        nodes = list(onnx.load(str(onnx_path), load_external_data=False).graph.node) if parser.num_errors else []
    except Exception:  # noqa: BLE001 (only a detail of an error message: never hide the parser's own error)
        nodes = []
    found = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        position = int(error.node())
        node = nodes[position] if 0 <= position < len(nodes) else None
        try:
            name, operator = error.node_name(), error.node_operator()
        except AttributeError:  # 8.6: only the index
            name = operator = ""
        name, operator = name or getattr(node, "name", ""), operator or getattr(node, "op_type", "")
        code = error.code()
        where = f"node {position}" + (f" {name}" if name else "") + (f" ({operator})" if operator else "")
        attributes = _attributes(node) if node is not None else ""
        found.append(f"{where} [{getattr(code, 'name', code)}]: {error.desc()}"
                     + (f" (attributes: {attributes})" if attributes else ""))
    return "; ".join(found) or "no details from the parser"


def parse_onnx(trt, builder, logger, onnx_path: Path, info: ModelInfo, strongly: bool):
    """The network parsed from ``onnx_path``; one-line DronsegError naming each failing node otherwise."""
    version = str(trt.__version__)
    newest = MAX_OPSET.get(tensorrt_env.trt_major(trt))
    opset = info.extra.get("opset")
    if newest is not None and opset is not None and int(opset) > newest:
        raise DronsegError(f"{onnx_path} is ONNX opset {opset}, and TensorRT {version}'s ONNX parser reads opsets up "
                           f"to {newest}: export with --opset {newest} (the TorchScript exporter writes it)")
    network = builder.create_network(tensorrt_env.network_flags(trt, strongly))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        major_minor = ".".join(version.split(".")[:2])
        raise DronsegError(f"TensorRT {version} cannot parse {onnx_path}: {parser_errors(parser, onnx_path)}; "
                           f"onnx-tensorrt's operator table for TensorRT {major_minor} (docs/operators.md) lists what "
                           "its parser supports")
    return network


def builder_config(trt, builder, *, precision: str, strongly: bool, workspace_gib: float, dla_core: int | None,
                   builder_opt_level: int | None) -> tuple[object, list[str], bool]:
    """(config, the builder flags set, whether TF32 stays allowed) for ``precision`` (module docstring)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    builder_flags = []
    if not strongly and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        builder_flags.append("FP16")
    if not strongly and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        builder_flags.append("INT8")
    # TensorRT allows TF32 by default; parity's PyTorch reference is strict fp32, and TF32
    # convolutions differ from it by ~1e-3 relative at 1280x720: an fp32 engine means fp32.
    tf32 = True
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
        tf32 = False
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run stay on the GPU
        builder_flags.append("GPU_FALLBACK")
    if builder_opt_level is not None:
        config.builder_optimization_level = builder_opt_level
    return config, builder_flags, tf32


def build_engine(onnx_path: Path, engine_path: Path, info: ModelInfo, *, precision: str, workspace_gib: float = 4.0,
                 device, opt_batch: int = 1, timing_cache: Path | None = None, dla_core: int | None = None,
                 builder_opt_level: int | None = None, profile: dict | None = None, verbose: bool = False) -> ModelInfo:
    """Build ``engine_path`` from ``onnx_path`` (the graph of ``precision``, see module docstring) on the GPU
    ``device``, and write it and its sidecar atomically; returns the engine's ModelInfo.

    ``info`` describes the ONNX graph; ``workspace_gib``: TensorRT's scratch memory limit, GiB; ``opt_batch``:
    the batch a --dynamic engine is tuned for; ``profile``: ``min_shape`` / ``opt_shape`` / ``max_shape`` for
    :func:`dynamic_profile`; ``timing_cache``: default :func:`default_timing_cache`; ``verbose``: VERBOSE log.
    """
    trt = tensorrt_env.import_tensorrt()
    identity = tensorrt_env.gpu_identity(device)
    version = str(trt.__version__)
    strongly = uses_strong_typing(trt, precision)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if dla_core is not None:
        check_dla(trt, builder, dla_core)  # before parsing: a refusal should not wait for the ONNX file
    network = parse_onnx(trt, builder, logger, Path(onnx_path), info, strongly)
    config, builder_flags, tf32 = builder_config(trt, builder, precision=precision, strongly=strongly,
                                                 workspace_gib=workspace_gib, dla_core=dla_core,
                                                 builder_opt_level=builder_opt_level)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(identity["gpu_name"], identity["compute_capability"], version)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    profile_shapes = None
    if info.dynamic or info.batch is None:
        profile_shapes = dynamic_profile(info, opt_batch, **(profile or {}))
        optimization_profile = builder.create_optimization_profile()
        optimization_profile.set_shape(network.get_input(0).name, profile_shapes["min"], profile_shapes["opt"],
                                       profile_shapes["max"])
        config.add_optimization_profile(optimization_profile)
    # TensorRT builds and loads into the thread's current CUDA device: both run with ``device``'s GPU made current.
    with cuda_runtime.on_device(cuda_runtime.resolve_index(device)):
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise DronsegError(f"TensorRT {version} could not build an engine from {onnx_path} (see its messages above); "
                               f"a larger --workspace-gib (now {workspace_gib:g} GiB) may help")
        runtime = trt.Runtime(logger)
        if dla_core is not None:
            runtime.DLA_core = dla_core  # a DLA engine loads onto the core the runtime names
        if runtime.deserialize_cuda_engine(plan) is None:
            raise DronsegError(f"TensorRT {version} built an engine from {onnx_path} that it cannot load back; rebuild it")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(plan)
    try:  # the tactic timings, for the next build on this GPU; a cache that cannot be written only costs time
        serialized = config.get_timing_cache().serialize()
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(serialized)
    except (OSError, DronsegError) as exc:
        log.warning("TensorRT timing cache %s not saved: %s", cache_path, exc)
    engine_info = ModelInfo.from_dict({**info.to_dict(), "precision": precision}, source=str(onnx_path))
    engine_info.extra["tensorrt"] = {
        "tensorrt_version": version, **identity, "strongly_typed": strongly, "builder_flags": builder_flags,
        "tf32": tf32, "workspace_gib": workspace_gib, "profile": profile_shapes, "onnx": Path(onnx_path).name,
        "onnx_sha256": sha256_file(Path(onnx_path)), "timing_cache": str(cache_path),
        "dla_core": dla_core, "builder_optimization_level": builder_opt_level,
    }
    write_engine_sidecar(engine_path, engine_info)
    return engine_info
