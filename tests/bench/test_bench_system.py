import importlib.metadata
import os
import stat
import sys
import types

import pytest
import torch

from bench_fakes import requires_cuda
from dronseg_edge import devices
from dronseg_edge.bench import system
from dronseg_edge.bench.system import describe_system, driver_gpu_properties, gpu_clocks, gpu_info, system_info, versions
from dronseg_edge.devices import Device


def test_cpu_system_info_names_device_cpu_and_versions():
    info = system_info(torch.device("cpu"))
    assert info["device"]["type"] == "cpu"
    assert info["cpu"]["logical_cores"] == os.cpu_count() and info["cpu"]["torch_threads"] == torch.get_num_threads()
    assert set(info["torch_flags"]) >= {"cudnn_allow_tf32", "matmul_allow_tf32", "cudnn_benchmark"}
    lines = describe_system(info)
    assert lines[0] == "device: cpu" and lines[2].startswith("versions: python ")


def test_torch_free_device_is_described_like_a_torch_one():
    lean, torch_form = system_info(Device("cpu")), system_info(torch.device("cpu"))
    for info in (lean, torch_form):
        info["cpu"].pop("load_average")
    assert lean == torch_form and lean["device"]["type"] == "cpu"


def test_versions_report_installed_and_missing_libraries():
    v = versions()
    assert v["torch"] == str(torch.__version__) and v["cuda"] == torch.version.cuda and v["torch_imported"] is True
    import onnxruntime

    assert v["onnxruntime"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in v["onnxruntime_providers"]
    import cv2  # every pipeline benchmark's decode, resize and encode: its results said nothing of which OpenCV

    assert v["opencv"] == cv2.__version__
    assert f"opencv {cv2.__version__}," in describe_system(system_info(torch.device("cpu")))[2]
    try:
        import tensorrt
    except Exception:
        assert v["tensorrt"] == "not installed" or v["tensorrt"].startswith("unusable")
    else:
        assert v["tensorrt"] == tensorrt.__version__


def fake_nvidia_smi(folder, output):
    """An nvidia-smi that prints ``output`` and writes the arguments it got to args.txt beside it."""
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {folder / 'args.txt'}\necho '{output}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


# CUDA device 0 of this process is the GPU on bus 0000:C1:00.0 (CUDA_VISIBLE_DEVICES=3, say): NVML's
# and nvidia-smi's index 0 would be another GPU.
BUS = {0: "0000:C1:00.0"}


@pytest.fixture
def remapped(monkeypatch):
    monkeypatch.setattr(devices, "cuda_pci_bus_id", lambda index: BUS.get(index))


def test_clocks_from_nvidia_smi_when_nvml_is_missing(tmp_path, monkeypatch, remapped):
    def no_nvml(bus_id):
        raise ImportError("no pynvml")

    monkeypatch.setattr(system, "_clocks_nvml", no_nvml)
    fake_nvidia_smi(tmp_path, "1755, 2619, 1980, 2619, 580.65.06, 700.00")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = gpu_clocks(0)
    assert found["clocks_source"] == "nvidia-smi" and found["driver"] == "580.65.06"
    assert found["clocks"] == {"sm_mhz": 1755, "mem_mhz": 2619, "max_sm_mhz": 1980, "max_mem_mhz": 2619}
    # whole MHz as NVML gives them: 1755.0 here and 1755 there broke typed readers of the bench JSON (u32 in Rust)
    assert all(type(value) is int for value in found["clocks"].values())
    assert found["power_limit_w"] == 700.0 and found["pci_bus_id"] == "0000:C1:00.0"
    assert "--id=0000:C1:00.0" in (tmp_path / "args.txt").read_text().split()  # the bus id, never the CUDA index


class FakeNvml(types.ModuleType):
    """pynvml with one GPU per bus id; taking a handle by NVML's own index is an error (it numbers GPUs by bus)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    def __init__(self):
        super().__init__("pynvml")
        self.asked: list = []

    def nvmlInit(self):  # noqa: N802 (NVML's names)
        pass

    def nvmlShutdown(self):  # noqa: N802
        pass

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):  # noqa: N802
        self.asked.append(bus_id)
        return {b"0000:C1:00.0": "h100-on-c1"}[bus_id]

    def nvmlDeviceGetHandleByIndex(self, index):  # noqa: N802
        raise AssertionError("NVML's index is not CUDA's")

    def nvmlDeviceGetClockInfo(self, handle, kind):  # noqa: N802
        return {"h100-on-c1": 1980}[handle] - kind

    def nvmlDeviceGetMaxClockInfo(self, handle, kind):  # noqa: N802
        return 1980

    def nvmlSystemGetDriverVersion(self):  # noqa: N802
        return b"580.65.06"

    def nvmlDeviceGetPowerManagementLimit(self, handle):  # noqa: N802
        return 700000


def test_nvml_is_asked_for_the_gpu_on_the_cuda_devices_bus(monkeypatch, remapped):
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    found = gpu_clocks(0)
    assert nvml.asked == [b"0000:C1:00.0"] and found["clocks_source"] == "nvml"
    assert found["clocks"]["sm_mhz"] == 1979 and found["driver"] == "580.65.06" and found["power_limit_w"] == 700.0


def test_no_clocks_rather_than_another_gpus_when_the_bus_id_is_unknown(tmp_path, monkeypatch, remapped):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    fake_nvidia_smi(tmp_path, "1755, 2619, 1980, 2619, 580.65.06, 700.00")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = gpu_clocks(1)
    assert found["clocks"] is None and found["clocks_source"] == "unreadable (no PCI bus id for cuda:1 from the CUDA driver)"
    assert not (tmp_path / "args.txt").exists()


def test_unreadable_clocks_say_why(tmp_path, monkeypatch, remapped):
    def failing_nvml(bus_id):
        raise RuntimeError("NVML_ERROR_NO_PERMISSION")

    monkeypatch.setattr(system, "_clocks_nvml", failing_nvml)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    found = gpu_clocks(0)
    assert found["clocks"] is None and "nvml: RuntimeError" in found["clocks_source"]
    fake_nvidia_smi(tmp_path, "[N/A], garbage")
    assert gpu_clocks(0)["clocks_source"].startswith("unreadable (nvidia-smi")


def test_describe_gpu_lists_name_capability_and_clocks():
    info = {"device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                       "memory_gib": 79.2, "clocks": {"sm_mhz": 1980.0, "max_sm_mhz": 1980.0, "mem_mhz": 2619.0,
                                                      "max_mem_mhz": 2619.0}, "driver": "580.65"},
            "cpu": {"model": "Xeon", "logical_cores": 16, "torch_threads": 16},
            "versions": versions(), "torch_flags": system.torch_flags()}
    lines = describe_system(info)
    assert "NVIDIA H100 80GB HBM3 (sm 9.0" in lines[0] and "SM 1980/1980 MHz" in lines[0] and "driver 580.65" in lines[0]
    assert lines[-1].startswith("torch flags: TF32 conv")


def test_describe_without_torch_loaded_names_its_version_and_no_torch_flags():
    """What `bench model.onnx` prints when torch was never imported (system_info's fields are None then)."""
    info = {"device": {"type": "cuda", "name": "Orin", "compute_capability": "8.7", "memory_gib": 61.4,
                       "clocks": None, "clocks_source": "unreadable (nvml not installed; nvidia-smi not found)"},
            "cpu": {"model": "ARMv8", "logical_cores": 12, "torch_threads": None, "load_average": None},
            "versions": {**versions(), "torch": "2.5.0", "torch_imported": False, "cuda": None, "cudnn": None},
            "torch_flags": None}
    lines = describe_system(info)
    assert lines[0].startswith("device: Orin (sm 8.7, 61.4 GiB), clocks unreadable")
    assert lines[1] == "cpu: ARMv8 (12 logical cores)"
    assert ", torch 2.5.0 (not imported)," in lines[2] and len(lines) == 3  # no torch-flags line
    info["versions"]["torch"] = "not installed"
    assert ", torch not installed," in describe_system(info)[2]


def test_installed_version_reads_metadata_without_importing():
    assert system._installed_version("torch") == importlib.metadata.version("torch")
    assert system._installed_version("no-such-package-here") == "not installed"


def test_gpu_without_a_driver_is_named_by_index(monkeypatch):
    monkeypatch.setattr(devices, "_libcuda", lambda: None)
    assert driver_gpu_properties(1) == {"name": "cuda:1", "compute_capability": "?", "memory_gib": None,
                                        "multiprocessors": None}


def test_without_a_driver_there_is_no_bus_id_and_no_driver_version(monkeypatch):
    monkeypatch.setattr(devices, "_libcuda", lambda: None)
    monkeypatch.setattr(devices, "_driver_library", lambda: None)
    assert devices.cuda_pci_bus_id(0) is None and devices.cuda_driver_version() is None


@pytest.mark.gpu
@requires_cuda
def test_the_bus_id_names_the_gpu_nvidia_smi_lists_under_it():
    bus_id = devices.cuda_pci_bus_id(0)
    assert bus_id and bus_id.count(":") == 2 and "." in bus_id
    found = gpu_clocks(0)
    assert found.get("pci_bus_id") == bus_id
    assert devices.cuda_driver_version() >= (int(torch.version.cuda.split(".")[0]), 0)


@pytest.mark.gpu
@requires_cuda
def test_driver_describes_the_gpu_as_torch_does():
    props, from_driver = torch.cuda.get_device_properties(0), gpu_info(Device("cuda", 0))
    assert gpu_info(torch.device("cuda", 0))["name"] == props.name
    assert from_driver["name"] == props.name and from_driver["compute_capability"] == f"{props.major}.{props.minor}"
    assert from_driver["memory_gib"] == round(props.total_memory / 2**30, 1)
    assert from_driver["multiprocessors"] == props.multi_processor_count
