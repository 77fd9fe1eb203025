"""Choosing the device from ``--device auto|cpu|cuda|cuda:N|N``, with torch or without it.

:func:`resolve_device` gives a ``torch.device`` (checkpoints, training, export); :func:`resolve_lean_device`
a :class:`Device`, never importing torch (an ``.onnx`` or ``.engine`` run by ONNX Runtime or TensorRT).
Backends use only ``.type`` ("cpu" | "cuda") and ``.index``. Without torch, GPUs are counted, named and
described by the driver library (``libcuda``) and the driver's release read from NVML, both with ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.option_fields import OptionSpec

if TYPE_CHECKING:
    import torch

_NOT_A_DEVICE = "is not a device: use auto, cpu, cuda, cuda:N or N"
# --device of every command (option_fields.py); a bare index is cuda:N, as Ultralytics users type it.
DEVICE = OptionSpec("auto (a CUDA GPU when one is visible, else the CPU), cpu, cuda, cuda:N, or N for cuda:N.",
                    names=("--device",), type=str)


@dataclass(frozen=True)
class Device:
    """A device without torch: ``type`` "cpu" or "cuda", ``index`` None (the current GPU) or N."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def parse_device(name: str | None) -> Device | None:
    """The device a ``--device`` value names (None for auto); its syntax only, nothing is probed."""
    name = (name or "auto").strip().lower()
    if name in ("auto", "cpu"):
        return None if name == "auto" else Device("cpu")
    match = re.fullmatch(r"(\d+)|cuda(?::(\d*))?", name)
    if match is None:
        raise DronsegError(f"--device {name!r} {_NOT_A_DEVICE}")
    index = match.group(1) or match.group(2)
    return Device("cuda", int(index) if index else None)


def torch_loaded() -> bool:
    """True when torch is already imported in this process (nothing here imports it to find out)."""
    return "torch" in sys.modules


def _first_library(*names: str):
    """The first of these shared libraries that loads (an empty name is skipped), or None."""
    for name in filter(None, names):
        with contextlib.suppress(OSError):
            return ctypes.CDLL(name)
    return None


@functools.lru_cache(maxsize=1)
def _driver_library():
    """The CUDA driver library, loaded but not initialised, or None (no NVIDIA driver: a CPU machine)."""
    return _first_library("libcuda.so.1", ctypes.util.find_library("cuda") or "", "nvcuda.dll")


@functools.lru_cache(maxsize=1)
def _libcuda():
    """The CUDA driver library, initialised, or None (no driver, or no GPU it can use)."""
    lib = _driver_library()
    return lib if lib is not None and lib.cuInit(0) == 0 else None


def cuda_driver_version() -> tuple[int, int] | None:
    """The newest CUDA version the installed driver supports, e.g. (12, 4); None without a driver.

    ``cuDriverGetVersion`` needs no GPU and no initialisation: it answers on a machine whose GPU is
    hidden or busy too, which is when a CUDA 12/13 mismatch is worth saying.
    """
    lib, version = _driver_library(), ctypes.c_int(0)
    if lib is None or lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def _cu_device(index: int):
    """(libcuda, the CUdevice handle of CUDA device ``index``), or (None, None) without a driver or that GPU."""
    lib, handle = _libcuda(), ctypes.c_int(0)
    return (lib, handle) if lib is not None and lib.cuDeviceGet(ctypes.byref(handle), index) == 0 else (None, None)


def cuda_pci_bus_id(index: int) -> str | None:
    """The PCI bus id ('0000:3B:00.0') of CUDA device ``index`` as this process numbers it, or None.

    CUDA numbers GPUs fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, and after CUDA_VISIBLE_DEVICES;
    NVML and nvidia-smi number them by PCI bus. The bus id names the same GPU in both.
    """
    (lib, handle), bus_id = _cu_device(index), ctypes.create_string_buffer(32)
    if lib is None or lib.cuDeviceGetPCIBusId(bus_id, len(bus_id), handle) != 0:
        return None
    return bus_id.value.decode(errors="replace") or None


def driver_device_count() -> int:
    """CUDA GPUs the driver shows this process (after CUDA_VISIBLE_DEVICES), whatever torch says: a CPU-only
    torch counts none on a machine full of GPUs."""
    lib, count = _libcuda(), ctypes.c_int(0)
    return count.value if lib is not None and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0


def cuda_device_count() -> int:
    """CUDA GPUs visible to this process (torch's count when torch is loaded, else the driver's)."""
    return sys.modules["torch"].cuda.device_count() if torch_loaded() else driver_device_count()


# CUdevice_attribute values (cuda.h): stable across CUDA versions.
_CU_MULTIPROCESSOR_COUNT, _CU_CC_MAJOR, _CU_CC_MINOR = 16, 75, 76


def driver_gpu_properties(index: int) -> dict:
    """Name, compute capability ('9.0'), memory (GiB) and multiprocessors of CUDA device ``index``, from
    the driver library (ctypes, no torch); the name is ``cuda:N`` and the rest unknown without a driver."""
    lib, handle = _cu_device(index)
    if lib is None:
        return {"name": f"cuda:{index}", "compute_capability": "?", "memory_gib": None, "multiprocessors": None}
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, handle)
    values = {}
    for key, attribute in (("sm", _CU_MULTIPROCESSOR_COUNT), ("major", _CU_CC_MAJOR), ("minor", _CU_CC_MINOR)):
        value = ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(value), attribute, handle)
        values[key] = value.value
    memory = ctypes.c_size_t(0)
    lib.cuDeviceTotalMem_v2(ctypes.byref(memory), handle)
    return {"name": name.value.decode(errors="replace"), "compute_capability": f"{values['major']}.{values['minor']}",
            "memory_gib": round(memory.value / 2**30, 1), "multiprocessors": values["sm"]}


NVIDIA_PROC_VERSION = "/proc/driver/nvidia/version"


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver's release ('550.54.15'): NVML's answer (libnvidia-ml, ctypes: the library that
    nvidia-ml-py wraps), else the kernel module's /proc file; None on a machine without either (no
    driver, or a Jetson, whose driver is its L4T release)."""
    lib = _nvml_library()
    if lib is not None:
        init = getattr(lib, "nvmlInit_v2", None) or lib.nvmlInit
        if init() == 0:
            try:
                text = ctypes.create_string_buffer(96)
                if lib.nvmlSystemGetDriverVersion(text, len(text)) == 0 and text.value:
                    return text.value.decode(errors="replace")
            finally:
                lib.nvmlShutdown()
    try:  # 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ...'
        with open(NVIDIA_PROC_VERSION, encoding="utf-8", errors="replace") as handle:
            words = handle.readline().split()
    except OSError:
        return None
    return next((word for word in words if word[:1].isdigit() and "." in word), None)


def _nvml_library():
    return _first_library("libnvidia-ml.so.1", ctypes.util.find_library("nvidia-ml") or "", "nvml.dll")


def _check_cuda(device: Device, count: int, who: str, fix: str) -> None:
    if count == 0:
        raise BackendUnavailable(f"--device {device}: no CUDA GPU is visible to {who}; use --device cpu{fix}")
    if device.index is not None and device.index >= count:
        raise DronsegError(f"--device {device}: only {count} GPU(s) visible")


def resolve_lean_device(name: str = "auto") -> Device:
    """``auto`` picks the first CUDA GPU when the driver shows one, else the CPU; never imports torch."""
    device = parse_device(name) or Device("cuda" if cuda_device_count() else "cpu")
    if device.type == "cuda":
        _check_cuda(device, cuda_device_count(), "the CUDA driver", " or install the NVIDIA driver")
    return device


def resolve_device(name: str = "auto") -> "torch.device":
    """The torch form of :func:`resolve_lean_device` (imports torch)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = parse_device(name) or Device("cuda" if count else "cpu")
    if device.type == "cuda":
        _check_cuda(device, count, f"torch {torch.__version__}",
                    " or install a CUDA build of torch (on Jetson: NVIDIA's JetPack wheel)")
    return torch.device(str(device))


def device_description(device, torch_threads: bool = True) -> str:
    """Human-readable name, e.g. 'NVIDIA H100 80GB HBM3 (sm90)', 'cpu (2 threads)' (torch's, where it runs the model:
    ``torch_threads``) or 'cpu (2 cores)' (ONNX Runtime's pool is its provider's to say)."""
    if device.type == "cuda":
        if torch_loaded():
            torch = sys.modules["torch"]
            index = device.index if device.index is not None else torch.cuda.current_device()
            major, minor = torch.cuda.get_device_capability(index)
            return f"{torch.cuda.get_device_name(index)} (sm{major}{minor})"
        gpu = driver_gpu_properties(device.index or 0)
        return gpu["name"] if gpu["memory_gib"] is None else f"{gpu['name']} (sm{gpu['compute_capability'].replace('.', '')})"
    if torch_threads and torch_loaded():
        return f"cpu ({sys.modules['torch'].get_num_threads()} threads)"
    return f"cpu ({os.cpu_count() or 1} cores)"


@contextlib.contextmanager
def tf32_mode(enabled: bool | None) -> Iterator[None]:
    """Temporarily force TF32 on/off for cuDNN convolutions and matmuls (None leaves torch's flags alone)."""
    if enabled is None:
        yield
        return
    import torch

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
