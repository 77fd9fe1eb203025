"""The dependency table: each requirement of the installed dronseg-edge (its own metadata, markers evaluated
here) against the installed version. Distributions are real dist-info folders written to tmp_path."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys

import numpy
import pytest

from dronseg_edge import machine
from dronseg_edge.checks import OK, WARN, dependencies

HERE = platform.machine()
ELSEWHERE = "sparc64" if HERE != "sparc64" else "x86_64"
REQUIRES = [
    f'numpy>=1.24,<2; platform_machine == "{HERE}"',  # what aarch64 gets: JetPack's OpenCV needs numpy 1.x
    f'numpy>=1.24; platform_machine != "{HERE}"',
    "typer>=0.12",
    "onnxruntime>=1.17",
    'torch>=2.10; extra == "train"',
    'torch>=2.10; extra == "export"',
    'onnxruntime-gpu>=1.17; platform_machine == "x86_64" and extra == "ort-gpu"',
    f'tensorrt>=10.3; platform_machine == "{ELSEWHERE}" and extra == "trt"',
    'cuda-bindings>=12.3; extra == "trt"',
    'cuda-bindings>=12.3,<13; extra == "trt-cu12"',
    'av>=12; extra == "video"',
]


def fake_distribution(tmp_path, requires=REQUIRES, direct_url=None):
    folder = tmp_path / "dronseg_edge-0.1.0.dist-info"
    folder.mkdir()
    extras = ["train", "export", "ort-gpu", "trt", "trt-cu12", "video", "dev"]
    lines = ["Metadata-Version: 2.1", "Name: dronseg-edge", "Version: 0.1.0",
             *(f"Provides-Extra: {e}" for e in extras), *(f"Requires-Dist: {r}" for r in requires)]
    (folder / "METADATA").write_text("\n".join(lines) + "\n")
    if direct_url is not None:
        (folder / "direct_url.json").write_text(json.dumps(direct_url))
    return importlib.metadata.PathDistribution(folder)


def installed(monkeypatch, versions: dict[str, str]):
    def version(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(importlib.metadata, "version", version)


def test_the_dev_extras_test_tools_are_not_judged(tmp_path):
    ranges = dependencies.required_ranges(fake_distribution(tmp_path, [*REQUIRES, 'setuptools>=70.1; extra == "dev"']))
    assert "setuptools" not in ranges  # a fresh Python 3.11 venv's setuptools 65 is no fault of a core install


def test_ranges_are_read_from_the_metadata_with_this_machines_markers(tmp_path):
    ranges = dependencies.required_ranges(fake_distribution(tmp_path))
    assert ranges["numpy"] == {"core": "<2,>=1.24"}  # only the marker that holds here
    assert list(ranges)[:3] == ["numpy", "onnxruntime", "typer"]  # the core first
    assert ranges["torch"] == {"train": ">=2.10", "export": ">=2.10"}
    assert ranges["cuda-bindings"] == {"trt": ">=12.3", "trt-cu12": "<13,>=12.3"}
    assert "tensorrt" not in ranges  # its marker holds on no extra here
    assert ("onnxruntime-gpu" in ranges) is (HERE == "x86_64")


def rows(tmp_path, monkeypatch, versions):
    installed(monkeypatch, versions)
    ranges = dependencies.required_ranges(fake_distribution(tmp_path))
    return {check.name: check for check in (dependencies.dependency_check(n, r) for n, r in ranges.items())}


def test_a_core_package_outside_its_range_warns_with_the_fix(tmp_path, monkeypatch):
    lines = rows(tmp_path, monkeypatch, {"numpy": "2.2.6", "typer": "0.29.1", "onnxruntime": "1.23.2"})
    numpy_row = lines["dep numpy"]
    assert numpy_row.status == WARN and numpy_row.detail == ("2.2.6 is outside the range required (core: <2,>=1.24): "
                                                             "pip install 'numpy<2,>=1.24'")
    assert numpy_row.facts == {"package": "numpy", "installed": "2.2.6", "required": {"core": "<2,>=1.24"}, "satisfied": False}
    assert lines["dep typer"] == dependencies.Check("dep typer", OK, "0.29.1 (core: >=0.12)", {
        "package": "typer", "installed": "0.29.1", "required": {"core": ">=0.12"}, "satisfied": True})


def test_extras_not_installed_are_fine_and_an_old_torch_is_not(tmp_path, monkeypatch):
    lines = rows(tmp_path, monkeypatch, {"numpy": "1.26.4", "typer": "0.29.1", "onnxruntime": "1.23.2", "torch": "2.8.0"})
    assert lines["dep av"].status == OK and lines["dep av"].detail == "not installed (video: >=12)"
    assert lines["dep av"].facts["installed"] is None and lines["dep av"].facts["satisfied"] is None
    assert lines["dep torch"].status == WARN and "2.8.0 is outside the range required (train: >=2.10; export: >=2.10)" in lines["dep torch"].detail


def test_an_old_torch_on_a_jetson_is_not_told_to_take_pips(tmp_path, monkeypatch):
    """pip's aarch64 torch is CPU-only: `pip install 'torch>=2.10'` would replace NVIDIA's wheel (docs/jetson.md)."""
    (tmp_path / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3\n")
    monkeypatch.setattr(machine, "TEGRA_RELEASE", tmp_path / "nv_tegra_release")
    lines = rows(tmp_path, monkeypatch, {"numpy": "1.26.4", "typer": "0.29.1", "torch": "2.5.0a0+872d972e41.nv24.08"})
    assert lines["dep torch"].status == WARN and "pip install" not in lines["dep torch"].detail
    assert "/docs/jetson.md#nvidias-torch-and-onnx-runtime-wheels" in lines["dep torch"].detail
    assert lines["dep typer"].status == OK


def test_nvidias_prerelease_torch_and_either_cuda_bindings_range_count(tmp_path, monkeypatch):
    lines = rows(tmp_path, monkeypatch, {"numpy": "1.26.4", "typer": "0.29.1", "onnxruntime": "1.23.2",
                                         "torch": "2.11.0a0+17a4bd1.nv26.02", "cuda-bindings": "13.0.1"})
    assert lines["dep torch"].status == OK  # '2.11.0a0' meets >=2.10: pre-releases count
    assert lines["dep cuda-bindings"].status == OK and lines["dep cuda-bindings"].facts["satisfied"] is True  # trt's range


def test_onnxruntime_gpu_stands_in_for_onnxruntime_and_a_missing_core_package_warns(tmp_path, monkeypatch):
    lines = rows(tmp_path, monkeypatch, {"numpy": "1.26.4", "onnxruntime-gpu": "1.23.0"})
    assert lines["dep onnxruntime"].status == OK and lines["dep onnxruntime"].detail == "1.23.0 from onnxruntime-gpu (core: >=1.17)"
    assert lines["dep typer"].status == WARN and lines["dep typer"].detail == "not installed (core: >=0.12): pip install 'typer>=0.12'"


def test_without_an_installed_distribution_one_line_says_why(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    [line] = dependencies.dependency_checks()
    assert line.status == WARN and line.name == "dependencies" and "pip install -e ." in line.detail


def test_a_version_pip_cannot_compare_and_a_missing_packaging_warn(tmp_path, monkeypatch):
    lines = rows(tmp_path, monkeypatch, {"numpy": "1.26.4", "typer": "0.29.1", "onnxruntime": "custom-build"})
    assert (lines["dep onnxruntime"].status, lines["dep onnxruntime"].detail) == (
        WARN, "custom-build is not a version pip can compare (core: >=1.17)")
    monkeypatch.setitem(sys.modules, "packaging.requirements", None)  # `from packaging.requirements import` fails
    [line] = dependencies.dependency_checks()
    assert line.status == WARN and line.detail.startswith("cannot judge versions without packaging (")


def test_an_editable_install_of_another_checkout_is_named(tmp_path):
    elsewhere = fake_distribution(tmp_path, direct_url={"url": "file:///somewhere/else", "dir_info": {"editable": True}})
    check = dependencies.source_check(elsewhere)
    assert check.status == WARN and "editable install of /somewhere/else" in check.detail
    assert str(dependencies.PACKAGE_FOLDER) in check.detail
    (tmp_path / "dronseg_edge-0.1.0.dist-info" / "direct_url.json").write_text("{")  # unreadable: no editable install
    check = dependencies.source_check(elsewhere)
    assert check.status == WARN and check.facts["source"] == str(tmp_path.resolve())


def test_this_environments_table_has_numpy_at_its_version():
    """The real metadata of the dronseg-edge installed in this environment (the tests need one installed)."""
    try:
        importlib.metadata.distribution("dronseg-edge")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("dronseg-edge is not installed in this environment: no metadata to read")
    lines = {check.name: check for check in dependencies.dependency_checks()}
    assert lines["dependencies"].facts["version"] == importlib.metadata.version("dronseg-edge")
    assert lines["dep numpy"].facts["installed"] == numpy.__version__ and "core" in lines["dep numpy"].facts["required"]
