"""What the numbers were measured on: device, clocks, CPU and library versions.

A latency means nothing without them. Every probe is optional: a library that is missing is
reported as such, GPU clocks come from NVML (``nvidia-ml-py``/``pynvml``) when importable, else
from ``nvidia-smi``, else are marked unreadable.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
from typing import Any

import torch

from dronseg_edge import __version__

NOT_INSTALLED = "not installed"


def system_info(device: torch.device) -> dict[str, Any]:
    """Device, CPU, versions and the torch flags that change latency (TF32, cudnn.benchmark)."""
    return {
        "device": gpu_info(device) if device.type == "cuda" else {"type": "cpu", "name": cpu_model()},
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "machine": platform.machine(), "load_average": load_average()},
        "versions": versions(),
        "torch_flags": torch_flags(),
    }


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine is the first suspect for noisy numbers."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on Windows
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_info(device: torch.device) -> dict[str, Any]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    info: dict[str, Any] = {
        "type": "cuda",
        "index": index,
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
    }
    info.update(gpu_clocks(index))
    return info


def gpu_clocks(index: int) -> dict[str, Any]:
    """Current/max SM and memory clocks in MHz, driver version, power limit; or the reason they are missing."""
    try:
        return _clocks_nvml(index)
    except ImportError:
        nvml_error = "nvml not installed"
    except Exception as exc:  # NVML present but failing (e.g. no driver access): try nvidia-smi
        nvml_error = f"nvml: {type(exc).__name__}"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"clocks": None, "clocks_source": f"unreadable ({nvml_error}; nvidia-smi not found)"}
    return _clocks_smi(smi, index)


def _clocks_nvml(index: int) -> dict[str, Any]:
    import pynvml  # provided by the nvidia-ml-py package

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
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
    return {"clocks": clocks, "clocks_source": "nvml", "driver": _text(driver), "power_limit_w": power_w}


def _clocks_smi(smi: str, index: int) -> dict[str, Any]:
    fields = "clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,driver_version,power.limit"
    try:
        out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits", f"--id={index}"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        sm, mem, max_sm, max_mem, driver, power = [v.strip() for v in out.strip().splitlines()[0].split(",")]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"clocks": None, "clocks_source": f"unreadable (nvidia-smi: {type(exc).__name__})"}
    clocks = {"sm_mhz": _number(sm), "mem_mhz": _number(mem), "max_sm_mhz": _number(max_sm),
              "max_mem_mhz": _number(max_mem)}
    return {"clocks": clocks, "clocks_source": "nvidia-smi", "driver": driver, "power_limit_w": _number(power)}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]" on boards that do not report it
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def versions() -> dict[str, Any]:
    """Versions of python, torch (+CUDA, cuDNN), torchvision, numpy, onnx, onnxruntime (+providers), tensorrt."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "dronseg_edge": __version__,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
    }
    for name in ("torchvision", "numpy", "onnx"):
        found[name] = _module_version(name)
    found["onnxruntime"], found["onnxruntime_providers"] = _onnxruntime()
    found["tensorrt"] = _module_version("tensorrt")
    return found


def _module_version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return NOT_INSTALLED
    except Exception as exc:  # present but broken, e.g. tensorrt bindings without their libraries
        return f"unusable ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"
    return str(getattr(module, "__version__", "unknown"))


def _onnxruntime() -> tuple[str, list[str]]:
    version = _module_version("onnxruntime")
    if version == NOT_INSTALLED or version.startswith("unusable"):
        return version, []
    import onnxruntime

    return version, list(onnxruntime.get_available_providers())


def torch_flags() -> dict[str, Any]:
    """Global torch switches that move latency by up to 3x on Ampere+ GPUs (TF32 alone, docs/facts.md#h100-baseline)."""
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
        clocks = device.get("clocks")
        if clocks:
            line += (f", clocks SM {_mhz(clocks['sm_mhz'])}/{_mhz(clocks['max_sm_mhz'])} MHz,"
                     f" memory {_mhz(clocks['mem_mhz'])}/{_mhz(clocks['max_mem_mhz'])} MHz (now/max)")
        else:
            line += f", clocks {device.get('clocks_source', 'unreadable')}"
        if device.get("driver"):
            line += f", driver {device['driver']}"
    else:
        line = "device: cpu"
    cpu = info["cpu"]
    load = cpu.get("load_average")
    load_text = f", load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}" if load else ""
    lines = [line, f"cpu: {cpu['model']} ({cpu['logical_cores']} logical cores, torch uses {cpu['torch_threads']} threads"
                   f"{load_text})"]
    v = info["versions"]
    providers = ",".join(p.replace("ExecutionProvider", "") for p in v.get("onnxruntime_providers", []))
    ort = v["onnxruntime"] + (f" [{providers}]" if providers else "")
    lines.append(f"versions: python {v['python']}, torch {v['torch']} (CUDA {v['cuda'] or '-'}, cuDNN {v['cudnn'] or '-'}),"
                 f" onnxruntime {ort}, tensorrt {v['tensorrt']}, dronseg-edge {v['dronseg_edge']}")
    flags = info["torch_flags"]
    if device["type"] == "cuda":
        lines.append(f"torch flags: TF32 conv {'on' if flags['cudnn_allow_tf32'] else 'off'}, TF32 matmul "
                     f"{'on' if flags['matmul_allow_tf32'] else 'off'}, cudnn.benchmark {flags['cudnn_benchmark']}")
    return lines


def _mhz(value: Any) -> str:
    return "?" if value is None else f"{value:.0f}"
