"""The TensorRT environment: importing it, its version, the GPU, and whether an engine fits them.

Shared by the engine build (export/tensorrt.py) and runner (runtime/tensorrt.py), so it lives next to
the runner: the runtime never imports the export package. ``tensorrt`` is imported only when needed.
Every TensorRT name used here is checked against the 8.6, 10.3 and 11.4 bindings
(tests/export/test_tensorrt_names.py); 8.6 is the oldest so checked, and 8.5 (JetPack 5.1) lacks at
least ``builder_optimization_level``: older ones are refused (``version_problem``).
"""

from __future__ import annotations

import re

from dronseg_edge.errors import BackendUnavailable, DronsegError

INSTALL_HINT = (
    "TensorRT is not installed for this Python: on x86-64 pip install 'dronseg-edge[trt]' (a CUDA 13 driver) or "
    "'dronseg-edge[trt-cu12]' (a CUDA 12 driver; `dronseg-edge checks` says which this one supports); "
    "on Jetson it comes with JetPack (sudo apt install python3-libnvinfer) and a venv must be created with "
    "--system-site-packages to see it"
)


MIN_VERSION = (8, 6)


def import_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailable saying how to install it (or that it is too old)."""
    from dronseg_edge.runtime.cuda_runtime import import_or_explain

    trt = import_or_explain("tensorrt", INSTALL_HINT)
    if problem := version_problem(trt):
        raise BackendUnavailable(problem)
    return trt


def version_tuple(version: str) -> tuple[int, int, int]:
    """'10.3.0' -> (10, 3, 0); '11.4.0.106' -> (11, 4, 0); '8.6.2.3' -> (8, 6, 2)."""
    numbers = [int(part) for part in re.findall(r"\d+", str(version))[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))  # type: ignore[return-value]


def trt_major(trt) -> int:
    return version_tuple(trt.__version__)[0]


def version_problem(trt) -> str | None:
    """Why this TensorRT cannot be used (one line naming the JetPack that has a usable one), or None."""
    version = str(getattr(trt, "__version__", "0"))
    if version_tuple(version)[:2] >= MIN_VERSION:
        return None
    return (f"TensorRT {version} is older than 8.6, the oldest this package builds and runs engines with: on a Jetson "
            "install JetPack 6.0 (TensorRT 8.6.2) or 6.1/6.2 (TensorRT 10.3); on x86-64 pip install 'dronseg-edge[trt]' "
            "(CUDA 13 drivers) or 'dronseg-edge[trt-cu12]' (CUDA 12 drivers)")


def network_flags(trt, strongly_typed: bool) -> int:
    """Flags for ``builder.create_network``: explicit batch on 8.x, strong typing where asked and known.

    8.x makes an implicit-batch network without EXPLICIT_BATCH, which the ONNX parser refuses; 10.x
    ignores that flag (explicit batch is the only kind) and 11.x removed it. Bits come from the enum
    by name: their values differ between versions.
    """
    kinds = trt.NetworkDefinitionCreationFlag
    flags = 0
    if trt_major(trt) < 10 and hasattr(kinds, "EXPLICIT_BATCH"):
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    if strongly_typed and hasattr(kinds, "STRONGLY_TYPED"):
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    return flags


def gpu_identity(device) -> dict:
    """{'gpu_name': 'NVIDIA H100 80GB HBM3', 'compute_capability': '9.0'} of a CUDA device (a torch.device
    or a devices.Device), read with cuda.bindings like the engine runner's, so build and run compare alike."""
    if device.type != "cuda":
        raise DronsegError(f"TensorRT engines run on NVIDIA GPUs only, not on --device {device}: use --device cuda")
    from dronseg_edge.runtime import cuda_runtime

    return cuda_runtime.device_identity(cuda_runtime.resolve_index(device))


def engine_mismatch(built: dict, here: dict) -> str | None:
    """Why an engine built on ``built`` cannot run ``here`` (dicts of tensorrt_version, gpu_name,
    compute_capability), or None when they match."""
    differences = [key for key in ("tensorrt_version", "gpu_name", "compute_capability") if str(built.get(key)) != str(here.get(key))]
    if not differences:
        return None

    def describe(side: dict) -> str:
        cc = str(side.get("compute_capability", "?")).replace(".", "")
        return f"{side.get('gpu_name', '?')} (sm{cc}) with TensorRT {side.get('tensorrt_version', '?')}"

    return f"was built for {describe(built)}; this machine has {describe(here)}"
