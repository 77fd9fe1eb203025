"""The TensorRT environment: importing it, its version, the GPU, and whether an engine fits them.

Shared by the engine build (export/tensorrt.py) and the engine runner (runtime/tensorrt.py), so it
lives next to the runner: the runtime never imports the export package. ``tensorrt`` and ``torch``
are imported only when a function needs them, so reading this module costs nothing. Every TensorRT
name used here is checked against the real 10.3 and 11.4 bindings by tests/export/test_tensorrt_names.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dronseg_edge.errors import BackendUnavailable, DronsegError

if TYPE_CHECKING:
    import torch

INSTALL_HINT = (
    "TensorRT is not installed for this Python: on x86-64 `pip install tensorrt` (or pip install 'dronseg-edge[trt]'); "
    "on Jetson it comes with JetPack (sudo apt install python3-libnvinfer) and a venv must be created with "
    "--system-site-packages to see it"
)


def import_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailable saying how to install it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: bindings present but libnvinfer missing
        detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({str(exc).splitlines()[0][:120]})"
        raise BackendUnavailable(INSTALL_HINT + detail) from None
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def gpu_identity(device: "torch.device") -> dict:
    """{'gpu_name': 'NVIDIA H100 80GB HBM3', 'compute_capability': '9.0'} of a CUDA device."""
    if device.type != "cuda":
        raise DronsegError(f"TensorRT engines run on NVIDIA GPUs only, not on --device {device}: use --device cuda")
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu_name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


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
