"""What the numbers were measured on: device, clocks, CPU and library versions (a latency means nothing
without them). Every probe is optional; GPU clocks come from NVML (``pynvml``), else ``nvidia-smi``, else
are marked unreadable. Nothing here imports torch: what only a loaded torch can tell is None without it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Any

from dronseg_edge import __version__
from dronseg_edge.devices import driver_gpu_properties
from dronseg_edge.machine import cpu_model, import_optional, installed_version

NOT_INSTALLED = "not installed"


def system_info(device) -> dict[str, Any]:
    """Device, CPU, versions and, when torch is loaded, the torch flags that change latency (TF32, cudnn.benchmark)."""
    torch = sys.modules.get("torch")
    return {
        "device": gpu_info(device) if device.type == "cuda" else {"type": "cpu", "name": cpu_model()},
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads() if torch is not None else None,
                "machine": platform.machine(), "load_average": load_average()},
        "versions": versions(),
        "torch_flags": torch_flags() if torch is not None else None,
    }


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine is the first suspect for noisy numbers."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None  # none on Windows


def gpu_info(device) -> dict[str, Any]:
    """Name, compute capability, memory (GiB), multiprocessors (from the CUDA driver, as torch reports them) and
    clocks of a CUDA ``device`` (a ``torch.device`` or a ``devices.Device``)."""
    torch = sys.modules.get("torch")
    index = device.index if device.index is not None else (
        torch.cuda.current_device() if torch is not None and isinstance(device, torch.device) else 0)
    return {"type": "cuda", "index": index, **driver_gpu_properties(index), **gpu_clocks(index)}


def gpu_clocks(index: int) -> dict[str, Any]:
    """Current/max SM and memory clocks in MHz, driver version, power limit of CUDA device ``index``;
    or the reason they are missing.

    NVML and nvidia-smi number GPUs by PCI bus, CUDA fastest first (unless CUDA_DEVICE_ORDER=PCI_BUS_ID)
    and after CUDA_VISIBLE_DEVICES: the CUDA index is mapped to its PCI bus id, which both understand.
    """
    from dronseg_edge.devices import cuda_pci_bus_id

    bus_id = cuda_pci_bus_id(index)
    if bus_id is None:  # an index would name whichever GPU NVML lists there: no clocks beat wrong ones
        return {"clocks": None, "clocks_source": f"unreadable (no PCI bus id for cuda:{index} from the CUDA driver)"}
    try:
        return {**_clocks_nvml(bus_id), "pci_bus_id": bus_id}
    except ImportError:
        nvml_error = "nvml not installed"
    except Exception as exc:  # NVML present but failing (e.g. no driver access): try nvidia-smi
        nvml_error = f"nvml: {type(exc).__name__}"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"clocks": None, "clocks_source": f"unreadable ({nvml_error}; nvidia-smi not found)"}
    return {**_clocks_smi(smi, bus_id), "pci_bus_id": bus_id}


def _clocks_nvml(bus_id: str) -> dict[str, Any]:
    import pynvml  # provided by the nvidia-ml-py package

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id.encode())  # bytes: old pynvml releases take no str
        clocks = {
            "sm_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "max_sm_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "max_mem_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        }
        driver = pynvml.nvmlSystemGetDriverVersion()
        power_w = pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0
    finally:
        pynvml.nvmlShutdown()
    return {"clocks": clocks, "clocks_source": "nvml", "driver": driver.decode() if isinstance(driver, bytes) else str(driver), "power_limit_w": power_w}


def _clocks_smi(smi: str, bus_id: str) -> dict[str, Any]:
    fields = "clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,driver_version,power.limit"
    try:
        out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits", f"--id={bus_id}"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        sm, mem, max_sm, max_mem, driver, power = [v.strip() for v in out.strip().splitlines()[0].split(",")]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"clocks": None, "clocks_source": f"unreadable (nvidia-smi: {type(exc).__name__})"}
    sm, mem, max_sm, max_mem, power = (float(value) if value.replace(".", "", 1).isdigit() else None  # "[N/A]"
                                       for value in (sm, mem, max_sm, max_mem, power))
    # whole MHz, as NVML gives them (1755, not 1755.0: one type in bench JSON whichever tool read them)
    clocks = {key: None if value is None else round(value)
              for key, value in zip(("sm_mhz", "mem_mhz", "max_sm_mhz", "max_mem_mhz"), (sm, mem, max_sm, max_mem))}
    return {"clocks": clocks, "clocks_source": "nvidia-smi", "driver": driver, "power_limit_w": power}


def versions() -> dict[str, Any]:
    """Versions of python, torch (+CUDA, cuDNN), torchvision, numpy, opencv, onnx, onnxruntime (+providers), tensorrt;
    torch, torchvision and onnx from their metadata unless already loaded (then ``torch_imported`` is False)."""
    torch = sys.modules.get("torch")
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "dronseg_edge": __version__,
        "torch": _installed_version("torch"), "torch_imported": False, "cuda": None, "cudnn": None,
    }
    if torch is not None:
        found.update(torch=str(torch.__version__), torch_imported=True, cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    # torchvision is imported (it may be unusable with this torch) only where torch already is.
    found["torchvision"] = _module_version("torchvision") if torch is not None else _installed_version("torchvision")
    found["numpy"] = _module_version("numpy")
    found["opencv"] = _module_version("cv2")  # decodes, resizes and encodes every frame of a pipeline run
    found["onnx"] = _module_version("onnx") if "onnx" in sys.modules else _installed_version("onnx")
    found["onnxruntime"] = _module_version("onnxruntime")
    ort = sys.modules.get("onnxruntime")
    found["onnxruntime_providers"] = list(ort.get_available_providers()) if found["onnxruntime"][0].isdigit() else []
    found["tensorrt"] = _module_version("tensorrt")
    return found


def _installed_version(distribution: str) -> str:
    return installed_version(distribution) or NOT_INSTALLED


def _module_version(name: str) -> str:
    module, why = import_optional(name)  # why: present but broken, e.g. tensorrt bindings without their libraries
    return str(getattr(module, "__version__", "unknown")) if module else NOT_INSTALLED if why == NOT_INSTALLED else \
        f"unusable ({why.removeprefix('cannot be imported: ')})"


def torch_flags() -> dict[str, Any]:
    """Global torch switches that move latency by up to 3x on Ampere+ GPUs (TF32 alone); torch is loaded."""
    torch = sys.modules["torch"]
    return {
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def describe_system(info: dict[str, Any]) -> list[str]:
    """Two or three human-readable lines: device (+ clocks), CPU, versions."""
    device = info["device"]
    if device["type"] == "cuda":
        line = f"device: {device['name']} (sm {device['compute_capability']}, {device['memory_gib']} GiB)"
        clocks = {key: "?" if mhz is None else f"{mhz:.0f}" for key, mhz in (device.get("clocks") or {}).items()}
        if clocks:
            line += (f", clocks SM {clocks['sm_mhz']}/{clocks['max_sm_mhz']} MHz,"
                     f" memory {clocks['mem_mhz']}/{clocks['max_mem_mhz']} MHz (now/max)")
        else:
            line += f", clocks {device.get('clocks_source', 'unreadable')}"
        if device.get("driver"):
            line += f", driver {device['driver']}"
    else:
        line = "device: cpu"
    cpu, load = info["cpu"], info["cpu"].get("load_average")
    load_text = f", load average {' / '.join(f'{v:.2f}' for v in load)}" if load else ""
    threads = f", torch uses {cpu['torch_threads']} threads" if cpu.get("torch_threads") is not None else ""
    lines = [line, f"cpu: {cpu['model']} ({cpu['logical_cores']} logical cores{threads}{load_text})"]
    v = info["versions"]
    providers = ",".join(p.replace("ExecutionProvider", "") for p in v.get("onnxruntime_providers", []))
    ort = v["onnxruntime"] + (f" [{providers}]" if providers else "")
    if v.get("torch_imported", True):
        torch_text = f"{v['torch']} (CUDA {v['cuda'] or '-'}, cuDNN {v['cudnn'] or '-'})"
    else:
        torch_text = f"{v['torch']} (not imported)" if v["torch"] != NOT_INSTALLED else NOT_INSTALLED
    lines.append(f"versions: python {v['python']}, torch {torch_text}, onnxruntime {ort},"
                 f" opencv {v.get('opencv', '?')}, tensorrt {v['tensorrt']}, dronseg-edge {v['dronseg_edge']}")
    flags = info.get("torch_flags")
    if device["type"] == "cuda" and flags:
        on = {key: "on" if flags[key] else "off" for key in ("cudnn_allow_tf32", "matmul_allow_tf32")}
        lines.append(f"torch flags: TF32 conv {on['cudnn_allow_tf32']}, TF32 matmul {on['matmul_allow_tf32']}, "
                     f"cudnn.benchmark {flags['cudnn_benchmark']}")
    return lines
