"""ONNX file -> serialized TensorRT engine, on TensorRT 10.x (JetPack 6: 10.3) and 11.x.

Precision: TensorRT 11 has only strongly typed networks, so precision comes from the ONNX file
(the fp16 graph, or the Q/DQ int8 graph). On 10.x fp16 comes from the fp32 graph and the FP16
builder flag (weakly typed: TensorRT picks fp16 kernels where they are faster), and int8 from the
Q/DQ graph with the INT8 and FP16 flags so the unquantised layers may run in fp16; fp32 builds are
strongly typed on both, with TF32 off (strict fp32, like parity's PyTorch reference). Every
TensorRT name used here is checked against the real 10.3 and 11.4 bindings by
tests/export/test_tensorrt_names.py.

An engine only runs on the GPU model and TensorRT version that built it: its name says both
(``NAME_<precision>_<gpu>_sm<cc>[_dla<N>]_trt<version>.engine``) and so does its JSON sidecar. Finding
TensorRT and the GPU is runtime/tensorrt_env.py's job, shared with the engine runner.

DLA (``dla_core``): the layers DLA can run go to that core of a Jetson's Deep Learning Accelerator,
the rest fall back to the GPU (BuilderFlag.GPU_FALLBACK). DLA runs fp16/int8 at fixed shapes only
(export/options.py refuses the rest). TensorRT 10.x has it (JetPack 6: 10.3); 11.0 to 11.4.0 dropped it
on Linux and 11.4.1 brought it back for Jetson AGX Orin on JetPack 7.2.2+, so those versions are refused
here, as is a machine whose builder sees no DLA core.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from dronseg_edge.atomic import atomic_path
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.metadata import ModelInfo, sha256_file, write_engine_sidecar
from dronseg_edge.runtime import tensorrt_env

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


def _version_tuple(version: str) -> tuple[int, ...]:
    """'10.3.0' -> (10, 3, 0); '11.4.0.106' -> (11, 4, 0)."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def check_dla(trt, builder, dla_core: int) -> int:
    """The number of DLA cores ``builder`` sees; DronsegError (one line) when ``dla_core`` cannot be used here."""
    version = str(trt.__version__)
    if NO_DLA_FROM <= _version_tuple(version) < DLA_BACK_IN:
        raise BackendUnavailable(f"--dla-core {dla_core}: TensorRT {version} has no DLA (11.0 to 11.4.0 dropped it; "
                                 "TensorRT 10.x on JetPack 6 and 11.4.1+ on JetPack 7.2.2 have it): drop --dla-core "
                                 "to build for the GPU")
    cores = int(builder.num_DLA_cores)
    if cores == 0:
        raise BackendUnavailable(f"--dla-core {dla_core}: TensorRT {version} sees no DLA core on this machine (Jetson "
                                 "AGX Orin and Orin NX have DLA; Orin Nano and desktop/server GPUs do not): drop --dla-core")
    if dla_core >= cores:
        raise DronsegError(f"--dla-core {dla_core}: this machine has {cores} DLA core{'s' if cores > 1 else ''} "
                           f"(0..{cores - 1}): pass one of them")
    return cores


def check_dla_available(dla_core: int) -> int:
    """check_dla with a builder of its own: the CLI calls it before any ONNX work, so a refusal comes first."""
    trt = tensorrt_env.import_tensorrt()
    return check_dla(trt, trt.Builder(trt.Logger(trt.Logger.WARNING)), dla_core)


def default_timing_cache(gpu_name: str, compute_capability: str, trt_version: str) -> Path:
    """A per-GPU, per-version timing cache in the user's cache folder, reused by every build there."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dronseg-edge" / "tensorrt"
    cc = compute_capability.replace(".", "")
    return root / f"timing_{gpu_slug(gpu_name)}_sm{cc}_trt{trt_version}.cache"


# Largest frame a dynamic frames engine (export --io frames --dynamic) takes unless the model input
# is larger: TensorRT reserves activation memory for the profile's maximum, and bilinear logits of
# 4 x 12 classes at 4K would need ~1.6 GB of it, too much beside the model on an 8 GB Jetson.
FRAMES_MAX_SIZE = (1920, 1080)


def dynamic_profile(info: ModelInfo, batch: int) -> dict[str, list[int]]:
    """min/opt/max input shapes of a --dynamic engine: 1 x 64x64 up to max(batch, 4) x the export size.

    A frames graph (``info.io == 'frames'``) takes (N, H, W, 3) uint8 frames of any size, resized
    inside: 1 x 64x64 up to max(batch, 4) x the larger of FRAMES_MAX_SIZE and the model input.
    """
    width, height = info.input_size
    if info.io == "frames":
        top_w, top_h = max(width, FRAMES_MAX_SIZE[0]), max(height, FRAMES_MAX_SIZE[1])
        return {"min": [1, min(MIN_SIDE, height), min(MIN_SIDE, width), 3],
                "opt": [batch, height, width, 3],
                "max": [max(batch, MIN_MAX_BATCH), top_h, top_w, 3]}
    return {"min": [1, 3, min(MIN_SIDE, height), min(MIN_SIDE, width)],
            "opt": [batch, 3, height, width],
            "max": [max(batch, MIN_MAX_BATCH), 3, height, width]}


def uses_strong_typing(trt, precision: str) -> bool:
    """11.x: always (its only mode). 10.x: fp32 only; fp16 and int8 use builder flags (module docstring)."""
    if tensorrt_env.trt_major(trt) >= 11:
        return True
    return precision == "fp32" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def parser_errors(parser) -> str:
    """All ONNX parser errors as one line: node index, name, operator and description each."""
    found = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = f"node {error.node()}"
        try:
            where += f" {error.node_name()} ({error.node_operator()})"
        except AttributeError:  # older parsers have no node names
            pass
        found.append(f"{where}: {error.desc()}")
    return "; ".join(found) or "no details from the parser"


def build_engine(onnx_path: Path, engine_path: Path, info: ModelInfo, *, precision: str, workspace_gib: float = 4.0,
                 device: torch.device, opt_batch: int = 1, timing_cache: Path | None = None,
                 dla_core: int | None = None, builder_opt_level: int | None = None) -> ModelInfo:
    """Build ``engine_path`` from ``onnx_path`` (the graph of ``precision``, see module docstring).

    ``info`` describes the ONNX graph (input size, batch, dynamic); ``workspace_gib`` caps TensorRT's
    scratch memory (GiB); ``opt_batch`` is the batch a --dynamic engine is tuned for. ``dla_core``:
    build for that DLA core with GPU fallback (module docstring); ``builder_opt_level``: TensorRT's
    builder optimisation level 0..5 (None: TensorRT's default, 3).
    Writes the engine and its sidecar atomically and returns the engine's ModelInfo.
    """
    trt = tensorrt_env.import_tensorrt()
    identity = tensorrt_env.gpu_identity(device)
    version = str(trt.__version__)
    strongly = uses_strong_typing(trt, precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if dla_core is not None:
        check_dla(trt, builder, dla_core)  # before parsing: a refusal should not wait for the ONNX file
    # The flag's bit differs between versions: take it from the enum, never a literal.
    flags = 0
    if strongly and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise DronsegError(f"TensorRT {version} cannot parse {onnx_path}: {parser_errors(parser)}; "
                           "re-export with another --opset, or report the failing operator")
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
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(identity["gpu_name"], identity["compute_capability"], version)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    profile_shapes = None
    if info.dynamic:
        profile_shapes = dynamic_profile(info, opt_batch)
        profile = builder.create_optimization_profile()
        input_name = network.get_input(0).name
        profile.set_shape(input_name, profile_shapes["min"], profile_shapes["opt"], profile_shapes["max"])
        config.add_optimization_profile(profile)
    with torch.cuda.device(device):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DronsegError(f"TensorRT {version} could not build an engine from {onnx_path} (see its messages above); "
                           f"a larger --workspace (now {workspace_gib:g} GiB) may help")
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = dla_core  # a DLA engine loads onto the core the runtime names
    if runtime.deserialize_cuda_engine(plan) is None:
        raise DronsegError(f"TensorRT {version} built an engine from {onnx_path} that it cannot load back; rebuild it")
    with atomic_path(engine_path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(plan)
    _save_timing_cache(config, cache_path)
    engine_info = ModelInfo.from_dict({**info.to_dict(), "precision": precision}, source=str(onnx_path))
    engine_info.extra["tensorrt"] = {
        "tensorrt_version": version, **identity, "strongly_typed": strongly, "builder_flags": builder_flags,
        "tf32": tf32, "workspace_gib": workspace_gib, "profile": profile_shapes, "onnx": Path(onnx_path).name,
        "onnx_sha256": sha256_file(Path(onnx_path)), "timing_cache": str(cache_path),
        "dla_core": dla_core, "builder_optimization_level": builder_opt_level,
    }
    write_engine_sidecar(engine_path, engine_info)
    return engine_info


def _save_timing_cache(config, cache_path: Path) -> None:
    """Keep the tactic timings for the next build on this GPU; a cache that cannot be written only costs time."""
    try:
        serialized = config.get_timing_cache().serialize()
        with atomic_path(cache_path) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(serialized)
    except (OSError, DronsegError) as exc:
        log.warning("TensorRT timing cache %s not saved: %s", cache_path, exc)

