"""devices.py: every --device spelling a user types; the NVIDIA driver read without torch (GPU count and
properties through libcuda, the driver's release through NVML or the kernel module's file). The libraries are
faked: no machine here has a driver."""

from __future__ import annotations

import pytest

from dronseg_edge import devices
from dronseg_edge.devices import Device, parse_device
from dronseg_edge.errors import DronsegError


def _out(reference):
    """The object behind a ctypes.byref() argument."""
    return reference._obj


class FakeLibcuda:
    """The few libcuda entry points devices.py calls, for two GPUs."""

    GPUS = [(b"NVIDIA H100 80GB HBM3", 9, 0, 132, 80 * 2**30), (b"Orin", 8, 7, 16, 64 * 2**30)]

    def cuInit(self, flags):  # noqa: N802 (the driver's names)
        return 0

    def cuDeviceGetCount(self, count):  # noqa: N802
        _out(count).value = len(self.GPUS)
        return 0

    def cuDeviceGet(self, handle, index):  # noqa: N802
        if index >= len(self.GPUS):
            return 101  # CUDA_ERROR_INVALID_DEVICE
        _out(handle).value = index
        return 0

    def cuDeviceGetName(self, buffer, size, handle):  # noqa: N802
        buffer.value = self.GPUS[handle.value][0]
        return 0

    def cuDeviceGetAttribute(self, value, attribute, handle):  # noqa: N802
        name, major, minor, sms, _ = self.GPUS[handle.value]
        _out(value).value = {75: major, 76: minor, 16: sms}[attribute]
        return 0

    def cuDeviceTotalMem_v2(self, size, handle):  # noqa: N802
        _out(size).value = self.GPUS[handle.value][4]
        return 0


@pytest.fixture
def driver(monkeypatch):
    monkeypatch.setattr(devices, "_libcuda", lambda: FakeLibcuda())
    monkeypatch.setattr(devices, "torch_loaded", lambda: False)


def test_gpus_are_counted_and_described_by_the_driver(driver):
    assert devices.driver_device_count() == 2 and devices.cuda_device_count() == 2
    assert devices.driver_gpu_properties(1) == {"name": "Orin", "compute_capability": "8.7", "memory_gib": 64.0,
                                                "multiprocessors": 16}
    assert devices.device_description(devices.Device("cuda", 0)) == "NVIDIA H100 80GB HBM3 (sm90)"
    assert devices.driver_gpu_properties(5)["name"] == "cuda:5"  # an index the driver does not have


def test_without_a_driver_there_are_no_gpus(monkeypatch):
    monkeypatch.setattr(devices, "_libcuda", lambda: None)
    monkeypatch.setattr(devices, "torch_loaded", lambda: False)
    assert devices.driver_device_count() == 0
    assert devices.device_description(devices.Device("cuda", 1)) == "cuda:1"


class FakeNvml:
    def __init__(self, init=0, version=b"550.54.15"):
        self.init, self.version, self.shut = init, version, 0

    def nvmlInit_v2(self):  # noqa: N802 (NVML's names)
        return self.init

    def nvmlSystemGetDriverVersion(self, buffer, size):  # noqa: N802
        buffer.value = self.version
        return 0

    def nvmlShutdown(self):  # noqa: N802
        self.shut += 1
        return 0


def test_the_driver_release_comes_from_nvml_and_nvml_is_shut_down(monkeypatch):
    nvml = FakeNvml()
    monkeypatch.setattr(devices, "_nvml_library", lambda: nvml)
    assert devices.nvidia_driver_version() == "550.54.15" and nvml.shut == 1


def test_without_nvml_the_kernel_modules_file_gives_the_release(monkeypatch, tmp_path):
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16)\n"
                    "GCC version:  gcc version 12.2.0\n")
    monkeypatch.setattr(devices, "NVIDIA_PROC_VERSION", str(proc))
    monkeypatch.setattr(devices, "_nvml_library", lambda: FakeNvml(init=9))  # NVML present but failing (no permission)
    assert devices.nvidia_driver_version() == "580.65.06"
    monkeypatch.setattr(devices, "_nvml_library", lambda: None)
    assert devices.nvidia_driver_version() == "580.65.06"
    monkeypatch.setattr(devices, "NVIDIA_PROC_VERSION", str(tmp_path / "absent"))
    assert devices.nvidia_driver_version() is None  # a Jetson, or no driver at all


@pytest.mark.parametrize("text, device", [("auto", None), (None, None), ("cpu", Device("cpu")), ("CUDA", Device("cuda")),
                                          ("cuda:1", Device("cuda", 1)), ("0", Device("cuda", 0)),
                                          (" 2 ", Device("cuda", 2))])
def test_device_spellings_including_a_bare_gpu_index(text, device):
    assert parse_device(text) == device


@pytest.mark.parametrize("text", ["tpu", "cuda:x", "-1", "gpu0"])
def test_anything_else_is_one_line_naming_the_spellings(text):
    with pytest.raises(DronsegError, match="is not a device: use auto, cpu, cuda, cuda:N or N$"):
        parse_device(text)
