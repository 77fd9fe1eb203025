"""The NVIDIA driver and its GPUs, and the CUDA builds installed for it: the driver's release, the CUDA
it supports and each GPU it shows (no torch needed: the core install on a Jetson has none), next to
the CUDA major that cuda-bindings and TensorRT's wheels were built for.

Why: on x86-64 ``pip install 'dronseg-edge[trt]'`` resolves TensorRT 11 for CUDA 13 (tensorrt-cu13)
and cuda-bindings 13, which import on a machine with a CUDA 12 driver and then fail at the first
CUDA call. The driver is asked through ``cuDriverGetVersion`` on libcuda (devices.py, ctypes: no
torch, no GPU initialisation); the installed builds are read from the packages' metadata, without
importing them. JetPack's TensorRT is a system package without a ``-cuNN`` name: it matches JetPack's
CUDA, and is not judged here.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from typing import Iterator

from dronseg_edge import devices, machine
from dronseg_edge.checks.base import OK, WARN, Check

# The driver each CUDA major needs at least (NVIDIA's CUDA release notes: 12.0 GA >= 525.60.13,
# 13.0 GA >= 580.65.06 on Linux).
DRIVER_FOR = {12: "525", 13: "580"}
TENSORRT_WHEEL = re.compile(r"^tensorrt-cu(\d+)$")


def cuda_checks() -> Iterator[Check]:
    driver = devices.cuda_driver_version()
    if driver is None:
        yield Check("cuda driver", WARN, "no NVIDIA driver (libcuda) found: no GPU backend here; .onnx files run on the CPU",
                    {"driver": None, "cuda": None})
        return
    release = devices.nvidia_driver_version()
    shown = f"{release}, supports" if release else "supports"
    yield Check("cuda driver", OK, f"{shown} CUDA up to {driver[0]}.{driver[1]}",
                {"driver": release, "cuda": f"{driver[0]}.{driver[1]}"})
    yield from gpu_checks()
    yield bindings_check(driver)
    for name, version, major in tensorrt_wheels():
        yield _build_check("tensorrt build", f"{name} {version}", major, driver, f"it cannot run here; pip uninstall "
                           f"tensorrt {name} {name}-libs {name}-bindings, then {trt_extra(driver[0])}",
                           {"package": name, "version": version, "cuda_major": major})


def gpu_checks() -> Iterator[Check]:
    """One line per GPU the driver shows this process: name, compute capability, memory, PCI bus."""
    count = devices.driver_device_count()
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        yield Check("gpus", WARN, f"the driver shows this process no GPU{hidden}: everything runs on the CPU", {"count": 0})
        return
    for index in range(count):
        gpu = devices.driver_gpu_properties(index)
        bus = devices.cuda_pci_bus_id(index)
        memory = f", {gpu['memory_gib']} GiB" if gpu["memory_gib"] is not None else ""
        yield Check(f"gpu{index}", OK, f"{gpu['name']}, sm {gpu['compute_capability']}{memory}" + (f", bus {bus}" if bus else ""),
                    {"index": index, "model": gpu["name"], "compute_capability": gpu["compute_capability"],
                     "memory_gib": gpu["memory_gib"], "multiprocessors": gpu["multiprocessors"], "pci_bus_id": bus})


def trt_extra(driver_major: int) -> str:
    """How to install TensorRT and cuda-bindings for a driver of this CUDA major: none is built for CUDA 11 or older."""
    if driver_major < 12:
        return f"a driver for CUDA 12 ({DRIVER_FOR[12]} or newer; a Jetson Orin: JetPack 6), then pip install 'dronseg-edge[trt-cu12]'"
    return "pip install 'dronseg-edge[trt-cu12]'" if driver_major == 12 else "pip install 'dronseg-edge[trt]'"


def bindings_check(driver: tuple[int, int]) -> Check:
    """cuda-bindings (the engine runner's CUDA binding): its CUDA major against the driver's."""
    version = machine.installed_version("cuda-bindings")
    if version is None:
        return Check("cuda-bindings", WARN, f"not installed: .engine files cannot run (this driver supports CUDA "
                                            f"{driver[0]}.{driver[1]}: {trt_extra(driver[0])})", {"version": None})
    major = int(version.split(".")[0])
    fix = f"pip install 'cuda-bindings>={driver[0]}.3,<{driver[0] + 1}'" if driver[0] >= 12 else trt_extra(driver[0])
    return _build_check("cuda-bindings", version, major, driver, f"every CUDA call of the engine runner will fail; {fix}",
                        {"version": version, "cuda_major": major})


def tensorrt_wheels() -> list[tuple[str, str, int]]:
    """(distribution, version, CUDA major) of each pip-installed TensorRT build (tensorrt-cu12, tensorrt-cu13, ...)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "").lower())  # PEP 503: tensorrt_cu13 is tensorrt-cu13
        match = TENSORRT_WHEEL.match(name)
        if match:
            found[name] = (name, dist.version, int(match.group(1)))
    return sorted(found.values())


def _build_check(label: str, shown: str, major: int, driver: tuple[int, int], fix: str, facts: dict) -> Check:
    """OK when a build for CUDA ``major`` runs on this driver; else WARN with ``fix`` (or a newer driver)."""
    if major > driver[0]:
        newer = f", {DRIVER_FOR[major]} or newer" if major in DRIVER_FOR else ""
        return Check(label, WARN, f"{shown} is built for CUDA {major}, and this driver supports CUDA {driver[0]}.{driver[1]}: "
                                  f"{fix} (or a driver for CUDA {major}{newer})", facts)
    return Check(label, OK, f"{shown} (CUDA {major}; the driver supports {driver[0]}.{driver[1]})", facts)
