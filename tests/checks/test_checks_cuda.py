"""The CUDA driver check: the driver's release, CUDA version and GPUs (no torch), next to the CUDA builds of
cuda-bindings and TensorRT, with the installed packages and the driver faked (no machine here has a driver)."""

from __future__ import annotations

import importlib.metadata
import types

import pytest

from dronseg_edge import devices
from dronseg_edge.checks import OK, WARN, cuda_checks


H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_gib": 79.1, "multiprocessors": 132}


def fake_machine(monkeypatch, driver, packages: dict[str, str], gpus=(H100,), release=None):
    """A driver supporting CUDA ``driver`` (None: no driver) showing ``gpus``, and these pip distributions installed."""
    monkeypatch.setattr(devices, "cuda_driver_version", lambda: driver)
    monkeypatch.setattr(devices, "nvidia_driver_version", lambda: release)
    monkeypatch.setattr(devices, "driver_device_count", lambda: len(gpus))
    monkeypatch.setattr(devices, "driver_gpu_properties", lambda index: dict(gpus[index]))
    monkeypatch.setattr(devices, "cuda_pci_bus_id", lambda index: f"0000:{index + 0x3B:02X}:00.0")

    def version(name):
        if name not in packages:
            raise importlib.metadata.PackageNotFoundError(name)
        return packages[name]

    dists = [types.SimpleNamespace(metadata={"Name": name}, version=v) for name, v in packages.items()]
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(dists))
    return {check.name: check for check in cuda_checks.cuda_checks()}


CUDA13_WHEELS = {"cuda-bindings": "13.0.1", "tensorrt": "11.4.0.106", "tensorrt_cu13": "11.4.0.106",
                 "tensorrt_cu13_libs": "11.4.0.106", "tensorrt_cu13_bindings": "11.4.0.106"}


def test_cuda13_wheels_on_a_cuda12_driver_are_a_clear_warning(monkeypatch):
    """What `pip install 'dronseg-edge[trt]'` gives a CUDA 12 machine today."""
    checks = fake_machine(monkeypatch, (12, 4), CUDA13_WHEELS)
    assert checks["cuda driver"].status == OK and checks["cuda driver"].detail == "supports CUDA up to 12.4"
    bindings, trt = checks["cuda-bindings"], checks["tensorrt build"]
    assert bindings.status == WARN and bindings.detail.startswith("13.0.1 is built for CUDA 13, and this driver supports CUDA 12.4")
    assert "pip install 'cuda-bindings>=12.3,<13'" in bindings.detail and "580 or newer" in bindings.detail
    assert trt.status == WARN and trt.detail.startswith("tensorrt-cu13 11.4.0.106 is built for CUDA 13")
    assert "pip install 'dronseg-edge[trt-cu12]'" in trt.detail


def test_matching_builds_are_ok(monkeypatch):
    checks = fake_machine(monkeypatch, (13, 0), CUDA13_WHEELS)
    assert list(checks) == ["cuda driver", "gpu0", "cuda-bindings", "tensorrt build"]
    assert {c.status for c in checks.values()} == {OK}
    assert checks["tensorrt build"].detail == "tensorrt-cu13 11.4.0.106 (CUDA 13; the driver supports 13.0)"
    assert checks["tensorrt build"].facts == {"package": "tensorrt-cu13", "version": "11.4.0.106", "cuda_major": 13}
    checks = fake_machine(monkeypatch, (12, 8), {"cuda-bindings": "12.9.10", "tensorrt-cu12": "10.16.1.11"})
    assert {c.status for c in checks.values()} == {OK}
    assert checks["cuda-bindings"].detail == "12.9.10 (CUDA 12; the driver supports 12.8)"
    assert checks["cuda-bindings"].facts == {"version": "12.9.10", "cuda_major": 12}


def test_a_cuda11_driver_is_told_to_update_not_to_install_cuda13_wheels(monkeypatch):
    """A 470 driver (CUDA 11.4) or JetPack 5: [trt] brings CUDA 13 builds, and no cuda-bindings in range runs on CUDA 11."""
    bindings = fake_machine(monkeypatch, (11, 4), {})["cuda-bindings"]
    assert bindings.status == WARN and "[trt]" not in bindings.detail and "a driver for CUDA 12 (525 or newer" in bindings.detail
    checks = fake_machine(monkeypatch, (11, 4), {"cuda-bindings": "12.9.10", "tensorrt-cu12": "10.16.1.11"})
    assert "cuda-bindings>=11" not in checks["cuda-bindings"].detail and "[trt]" not in checks["tensorrt build"].detail
    assert "then pip install 'dronseg-edge[trt-cu12]'" in checks["tensorrt build"].detail


def test_the_driver_release_and_each_gpu_are_lines_without_torch(monkeypatch):
    orin = {"name": "Orin", "compute_capability": "8.7", "memory_gib": 61.4, "multiprocessors": 16}
    checks = fake_machine(monkeypatch, (12, 6), {}, gpus=(H100, orin), release="550.54.15")
    driver = checks["cuda driver"]
    assert driver.detail == "550.54.15, supports CUDA up to 12.6" and driver.facts == {"driver": "550.54.15", "cuda": "12.6"}
    assert checks["gpu0"].detail == "NVIDIA H100 80GB HBM3, sm 9.0, 79.1 GiB, bus 0000:3B:00.0"
    assert checks["gpu1"].status == OK and checks["gpu1"].facts == {"index": 1, "model": "Orin", "compute_capability": "8.7",
                                                        "memory_gib": 61.4, "multiprocessors": 16, "pci_bus_id": "0000:3C:00.0"}


def test_a_driver_that_shows_no_gpu_says_so(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    checks = fake_machine(monkeypatch, (12, 4), {}, gpus=())
    assert checks["gpus"].status == WARN and "CUDA_VISIBLE_DEVICES=''" in checks["gpus"].detail
    assert checks["gpus"].facts == {"count": 0}


@pytest.mark.parametrize("driver, extra", [((12, 2), "[trt-cu12]"), ((13, 1), "[trt]")])
def test_without_cuda_bindings_the_extra_for_this_driver_is_named(monkeypatch, driver, extra):
    checks = fake_machine(monkeypatch, driver, {})
    assert checks["cuda-bindings"].status == WARN and f"pip install 'dronseg-edge{extra}'" in checks["cuda-bindings"].detail
    assert "tensorrt build" not in checks  # JetPack's TensorRT (no -cuNN wheel) is not judged


def test_without_a_driver_one_line_says_so(monkeypatch):
    checks = fake_machine(monkeypatch, None, CUDA13_WHEELS)
    assert list(checks) == ["cuda driver"] and checks["cuda driver"].status == WARN


def test_the_driver_version_is_decoded_like_cuda_h(monkeypatch):
    class Lib:
        def cuDriverGetVersion(self, out):  # noqa: N802 (the driver's name)
            out._obj.value = 12040  # CUDA_VERSION = 1000 * major + 10 * minor
            return 0

    monkeypatch.setattr(devices, "_driver_library", lambda: Lib())
    assert devices.cuda_driver_version() == (12, 4)
