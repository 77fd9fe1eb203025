"""The install sets of pyproject.toml: the core alone (`pip install dronseg-edge`) runs inference.

A second, small venv gets the project's wheel and its core dependencies only (no torch, no onnx, no
training tools; ~350 MB resolved by pip from the same index as `make test`, from its cache after the
first run: 40-70 s on 2 busy cores) and runs `dronseg-edge infer` on an ONNX file; its masks must equal
the full install's. `checks` runs a real ONNX Runtime session there (its test model is package data) and
describes the machine and every dependency. Commands that need an extra say which, in one line. tools/check_jetson_deps.py's verdicts are tested on hand-made pip
reports (the real check needs the network for minutes: `make jetson-deps`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import zipfile
from importlib import metadata
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from testkit import side_env

ROOT = Path(__file__).resolve().parents[1]
# The core's libraries that compute a mask: installed in the core venv at the versions of this one.
SAME_VERSIONS = ("numpy", "onnxruntime", "opencv-python-headless")
# What the core must not bring (pyproject.toml's extras hold them).
NOT_IN_CORE = ("torch", "torchvision", "onnx", "onnxslim", "matplotlib", "tensorboard", "iterstrat", "av")


def _run(args: list, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run outside the work tree (else `python -c` would import the sources there, not the installed wheel)."""
    kwargs.setdefault("cwd", tempfile.gettempdir())
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=side_env(),
                          **kwargs)


def _jetson_check():
    """tools/check_jetson_deps.py as a module (it builds the wheel and judges pip's reports)."""
    spec = importlib.util.spec_from_file_location("check_jetson_deps", ROOT / "tools" / "check_jetson_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def core_python(tmp_path_factory) -> Path:
    """The python of a fresh venv holding the project's wheel and the core dependencies only."""
    root = tmp_path_factory.mktemp("core-install")
    start = time.perf_counter()
    wheel = _jetson_check().build_wheel(root / "wheel")  # from a copy of the sources: no build/ in the tree
    # No pip of its own (ensurepip takes longer than the install): this venv's pip installs into it with
    # --python, resolving the core's dependencies for it; no .pyc compiling, the venv is used once.
    made = _run([sys.executable, "-m", "venv", "--without-pip", root / "venv"])
    assert made.returncode == 0, made.stderr[-2000:]
    python = root / "venv" / "bin" / "python"
    # The libraries that compute the masks at this install's versions, so the two installs must agree exactly.
    same = [f"{name}=={metadata.version(name)}" for name in SAME_VERSIONS]
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-compile",
                      "--disable-pip-version-check", wheel, *same])
    assert installed.returncode == 0, f"pip could not install the core:\n{installed.stderr[-3000:]}"
    print(f"core venv built in {time.perf_counter() - start:.1f} s")
    return python


@pytest.mark.slow
def test_the_core_has_no_torch_and_its_cli_starts(core_python):
    probe = ("import importlib.util, sys, dronseg_edge.cli\n"
             "assert dronseg_edge.cli.__file__.startswith(sys.prefix), dronseg_edge.cli.__file__\n"
             f"print(','.join(m for m in {NOT_IN_CORE!r} if importlib.util.find_spec(m) is not None))\n"
             "print(','.join(m for m in ('cv2', 'onnxruntime', 'numpy', 'typer', 'PIL') if importlib.util.find_spec(m) is None))\n"
             "print('torch' in sys.modules)")
    done = _run([core_python, "-c", probe])
    assert done.returncode == 0, done.stderr
    extras, missing, torch_loaded = done.stdout.splitlines()
    assert extras == "" and missing == "" and torch_loaded == "False", done.stdout
    version = _run([core_python.parent / "dronseg-edge", "--version"])
    assert version.returncode == 0 and version.stdout.startswith("dronseg-edge "), version.stderr


@pytest.mark.slow
def test_checks_on_the_core_runs_a_real_session_and_describes_the_machine(core_python):
    """The Jetson case without a Jetson: no torch, no onnx, yet ONNX Runtime's providers are tried for real."""
    wheel = next((core_python.parents[2] / "wheel").glob("dronseg_edge-*.whl"))
    assert "dronseg_edge/checks/probe_relu.onnx" in zipfile.ZipFile(wheel).namelist()
    text = _run([core_python.parent / "dronseg-edge", "checks"])
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stdout[-3000:] + text.stderr[-2000:]
    assert "not tried" not in text.stdout and "ort Azure" not in text.stdout
    lines = {line[6:].split("  ")[0].strip(): line for line in text.stdout.splitlines()[:-1]}
    assert "session started and ran a test model" in lines["ort CPU"]
    assert {"cpu", "ram", "disk", "dependencies", "dep numpy", "dep onnxruntime", "dep torch", "backends"} <= set(lines)
    done = _run([core_python.parent / "dronseg-edge", "checks", "--json"])
    by_name = {item["name"]: item for item in json.loads(done.stdout)}
    assert by_name["ort CPU"]["status"] == "OK" and by_name["ort CPU"]["runs"] is True
    assert by_name["onnxruntime"]["version"] == metadata.version("onnxruntime")
    assert by_name["cpu"]["logical_cores"] == os.cpu_count() and by_name["ram"]["total_gib"] > 0
    assert by_name["disk"]["free_gib"] >= 0
    # The ranges come from the installed wheel's metadata, which is the package running.
    assert by_name["dependencies"]["status"] == "OK" and by_name["dependencies"]["version"] == metadata.version("dronseg-edge")
    for name in SAME_VERSIONS:
        row = by_name[f"dep {name}"]
        assert row["installed"] == metadata.version(name) and row["satisfied"] is True and "core" in row["required"], row
    numpy_range = "<2,>=1.24" if platform.machine() == "aarch64" and sys.version_info < (3, 13) else ">=1.24"
    assert by_name["dep numpy"]["required"] == {"core": numpy_range}
    assert by_name["dep torch"]["installed"] is None and by_name["dep torch"]["required"]["train"] == ">=2.10"
    assert by_name["torch"]["status"] == "WARN" and by_name["backends"]["backends"] == ["onnxruntime"]


@pytest.mark.slow
def test_checks_on_a_machine_where_nothing_can_run_a_model_exits_1(core_python):
    """The core without ONNX Runtime (hidden from the process): no torch, no TensorRT either."""
    probe = "import sys; sys.modules['onnxruntime'] = None\nfrom dronseg_edge.cli import main\nmain(['checks'])"
    done = _run([core_python, "-c", probe])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
    verdict = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(verdict) == 1 and "backends" in verdict[0] and "nothing here can run a model" in verdict[0]


@pytest.fixture(scope="module")
def onnx_model(tiny_checkpoint, onnx_export) -> Path:
    """The tiny model's ONNX file. Its random weights leave near-tied logits, which is fine here: both
    installs run the same host code with the same numpy, ONNX Runtime and OpenCV (SAME_VERSIONS)."""
    return onnx_export(tiny_checkpoint)


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((folder / "masks").glob("*.png"))}


@pytest.mark.slow
def test_core_install_runs_infer_on_onnx_with_the_full_install_masks(core_python, onnx_model, scenes, tmp_path):
    images = scenes / "imgs" / "imgs"
    options = ["--device", "cpu", "--save-masks", "--no-save-video", "--no-progress"]
    core = _run([core_python.parent / "dronseg-edge", "infer", onnx_model, images, "--out", tmp_path / "core", *options])
    assert core.returncode == 0, core.stdout[-2000:] + core.stderr[-3000:]
    full = _run([sys.executable, "-m", "dronseg_edge", "infer", onnx_model, images, "--out", tmp_path / "full", *options])
    assert full.returncode == 0, full.stderr[-3000:]
    core_masks, full_masks = _masks(tmp_path / "core"), _masks(tmp_path / "full")
    assert len(core_masks) == len(list(images.glob("*.jpg"))) and core_masks.keys() == full_masks.keys()
    differing = [name for name in core_masks if not np.array_equal(core_masks[name], full_masks[name])]
    assert differing == [], f"{len(differing)} masks differ between the core and the full install, e.g. {differing[:3]}"
    assert len({int(c) for m in core_masks.values() for c in np.unique(m)}) > 1  # a real segmentation, not one class


@pytest.mark.slow
def test_synth_runs_on_the_core(core_python, tmp_path):
    """synth needs numpy, OpenCV and Pillow only: since Pillow is in the core (image headers), no extra."""
    done = _run([core_python.parent / "dronseg-edge", "synth", tmp_path / "data", "--images", "4", "--size", "64x48",
                 "--video-frames", "0"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "data" / "imgs" / "imgs").glob("*.jpg"))) == 4


@pytest.mark.slow
@pytest.mark.parametrize("command, extra", [
    (["train", "--data", "nowhere"], "train"),
    (["export", "model.pt"], "export"),
    (["parity", "model.pt", "model.onnx"], "export"),
    (["eval", "model.pt"], "train"),
])
def test_commands_of_an_extra_say_what_to_install_in_one_line(core_python, tmp_path, command, extra):
    done = _run([core_python.parent / "dronseg-edge", *command], cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert f"pip install 'dronseg-edge[{extra}]'" in lines[0]


# tools/check_jetson_deps.py's verdicts on what pip would install, without the network.
def _item(name: str, version: str, filename: str) -> dict:
    return {"metadata": {"name": name, "version": version}, "download_info": {"url": f"https://files.example/{filename}"}}


def test_aarch64_is_asked_for_numpy_1_only_on_pythons_that_have_it():
    """numpy 1.x has no wheel past Python 3.12 and does not build on 3.13: asking numpy < 2 of aarch64 with
    Python 3.13 (a Raspberry Pi on Debian 13) left pip nothing to install, and the core did not install."""
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")  # pytest brings tomli to 3.10
    from packaging.requirements import Requirement

    wanted = [Requirement(text) for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    for machine, python, numpy_1 in (("aarch64", "3.10", True), ("aarch64", "3.12", True), ("aarch64", "3.13", False),
                                     ("aarch64", "3.14", False), ("x86_64", "3.10", False)):
        where = {"platform_machine": machine, "python_version": python, "extra": ""}
        ranges = [r.specifier for r in wanted if r.name == "numpy" and r.marker.evaluate(where)]
        assert len(ranges) == 1 and ranges[0].contains("2.1.0") != numpy_1 and ranges[0].contains("1.26.4"), (machine, python)


def test_make_test_oldest_pins_each_floor_pyproject_declares():
    """tools/oldest-constraints.txt is what `make test-oldest` runs on: every floor of the core and the train,
    export and video extras at its own release (it held numpy 1.24.4, OpenCV 4.8.1, onnxruntime 1.17.3,
    onnx 1.16.2, Pillow 9.0.1 and packaging 24.0, none of them the floor, so the floors went untested)."""
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    texts = [*project["dependencies"], *extras["train"], *extras["export"], *extras["video"]]
    floors = {r.name: Version(s.version) for r in map(Requirement, texts) for s in r.specifier if s.operator == ">="}
    lines = (ROOT / "tools" / "oldest-constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))

    def release(version: Version) -> tuple[int, ...]:  # 4.8 and 4.8.0.76 (OpenCV's wheel build) are both 4.8.0
        return (*version.release, 0, 0)[:3]

    assert sorted(pins) == sorted(floors)
    assert {name: release(Version(pin)) for name, pin in pins.items()} == {name: release(v) for name, v in floors.items()}


def test_jetson_check_passes_aarch64_and_pure_python_wheels():
    check = _jetson_check()
    failures, notes = check.judge("core", [
        _item("numpy", "2.2.6", "numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"),
        _item("typer", "0.29.1", "typer-0.29.1-py3-none-any.whl"),
    ])
    assert failures == [] and notes == []


def test_jetson_check_fails_x86_wheels_shadowing_packages_and_pip_tensorrt():
    check = _jetson_check()
    failures, _ = check.judge("core", [
        _item("onnxruntime", "1.23.2", "onnxruntime-1.23.2-cp310-cp310-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"),
        _item("opencv-python-headless", "5.0.0.93", "opencv_python_headless-5.0.0.93-cp37-abi3-manylinux2014_aarch64.whl"),
        _item("tensorrt", "10.3.0", "tensorrt-10.3.0-py2.py3-none-any.whl"),
    ])
    joined = "\n".join(failures)
    assert "manylinux_2_27_x86_64.manylinux_2_28_x86_64 is not aarch64" in joined
    assert "onnxruntime in the core on aarch64" in joined and "opencv-python-headless in the core" in joined
    assert "tensorrt from pip: TensorRT comes with JetPack" in joined


def test_jetson_check_notes_where_nvidia_wheels_replace_the_registry():
    check = _jetson_check()
    failures, notes = check.judge("train", [
        _item("torch", "2.14.1", "torch-2.14.1-cp310-cp310-manylinux_2_28_aarch64.whl"),
        _item("nvidia-cublas", "13.1.1.3", "nvidia_cublas-13.1.1.3-py3-none-manylinux_2_27_aarch64.whl"),
    ])
    assert failures == []
    assert any("NVIDIA's torch wheel" in n for n in notes) and any("1 nvidia-* CUDA library" in n for n in notes)


def test_jetson_check_makes_pip_evaluate_markers_as_a_jetson():
    """The check's shim replaces what pip's marker evaluation reads: the core's markers then leave OpenCV and
    ONNX Runtime out, as on a Jetson (a plain dry-run on x86-64 keeps them: pip evaluates markers locally).
    In a child process: importing pip turns setuptools' distutils shim off for the rest of a process, and a
    later torch.compile in this one would fail on it."""
    check = _jetson_check()
    shim = check.PIP_SHIM.split("from pip._internal")[0]  # the marker environment, without running pip
    probe = shim + ("print(markers.Marker(\"platform_machine != 'aarch64'\").evaluate(), markers.Marker("
                    "\"platform_machine == 'aarch64' and python_version == '3.10'\").evaluate({'extra': 'trt'}))")
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(check.JETSON_MARKERS)], capture_output=True, text=True)
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_jetson_check_offline_says_it_could_not_check(tmp_path, monkeypatch, capsys):
    """Before: with no index in reach pip finds no version of anything, and every set was a FAIL, exit 1, as if the
    sets did not resolve for aarch64; now "could not check", exit 2. pip without an index stands in for no network."""
    check = _jetson_check()
    monkeypatch.setattr(check, "build_wheel", lambda dest: tmp_path / "dronseg_edge-0.1.0-py3-none-any.whl")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # an empty folder, in place of any configured one
    assert check.main(["--sets", "core"]) == 2
    out, err = capsys.readouterr()
    assert "FAIL" not in out and err.startswith("error: could not check: pip finds no numpy<2 for aarch64")
