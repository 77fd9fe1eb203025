"""Commands that need an extra say which, in one line, when this install lacks it (cli/extras.py).

The real core-only install is tests/test_install_sets.py; here modules are hidden from this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import dronseg_edge.data.synthetic as synthetic
from dronseg_edge.cli import main
from dronseg_edge.cli.extras import INSTALL_FOR_MODULE, REQUIRED, missing_module_error, missing_modules, require_extra
from dronseg_edge.errors import BackendUnavailable


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_a_full_install_has_every_extra_the_commands_check():
    assert missing_modules("train") == [] and missing_modules("export") == []


def test_require_extra_names_every_missing_module_and_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "iterstrat", None)
    with pytest.raises(BackendUnavailable) as info:
        require_extra("train", "train")
    message = str(info.value)
    assert "`dronseg-edge train` needs the train extra, and matplotlib, iterative-stratification are not installed" in message
    assert message.endswith("pip install 'dronseg-edge[train]'") and info.value.exit_code == 3


def test_missing_torch_also_points_jetson_users_to_nvidia_wheels(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(BackendUnavailable, match="is not installed: pip install 'dronseg-edge\\[export\\]'; on a Jetson"):
        require_extra("export", "export")


def test_train_without_its_extra_fails_in_one_line_before_reading_data(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_cli(capsys, "train", "--data", tmp_path / "nowhere")
    assert code == 3 and "Traceback" not in err
    assert err.strip().splitlines() == ["error: `dronseg-edge train` needs the train extra, and matplotlib is not "
                                        "installed: pip install 'dronseg-edge[train]'"]


def test_an_optional_module_missing_inside_a_command_is_one_line(monkeypatch, tmp_path, capsys):
    def needs_av(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'av'", name="av")

    monkeypatch.setattr(synthetic, "synthesize", needs_av)
    code, out, err = run_cli(capsys, "synth", tmp_path / "data")
    assert code == 3 and "Traceback" not in err
    assert err.strip() == "error: av (PyAV) is not installed, and this needs it: pip install 'dronseg-edge[video]'"


def test_a_missing_module_of_our_own_is_a_bug_and_keeps_its_traceback(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'dronseg_edge.nothing'", name="dronseg_edge.nothing")

    monkeypatch.setattr(synthetic, "synthesize", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["synth", str(tmp_path / "data")])
    assert missing_module_error(ModuleNotFoundError(name="dronseg_edge.nothing")) is None


def test_every_required_module_has_an_install_line():
    for modules in REQUIRED.values():
        for module in modules:
            assert "pip install 'dronseg-edge[" in INSTALL_FOR_MODULE[module][1], module


# A fresh interpreter whose OpenCV is installed but cannot load, as opencv-python on a server without libGL.
_BROKEN_CV2 = """
import importlib.machinery
import sys
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == "cv2" and sys.argv[1] == "numpy":  # a C extension whose init fails: no name, no frame of cv2
            return importlib.machinery.ModuleSpec("cv2", self)
        if name == "cv2":
            raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory", name="cv2")
    def create_module(self, spec):
        raise ImportError("numpy.core.multiarray failed to import")
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Broken())
from dronseg_edge.cli.main import main
main(sys.argv[2:])
"""


def _run_with_broken_cv2(*args, fault: str = "libGL") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BROKEN_CV2, fault, *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_an_opencv_that_cannot_load_is_one_line_and_checks_still_runs(tmp_path):
    """The most common OpenCV fault: `checks` must start to report it (its FAIL line), --help must work,
    and a command that needs OpenCV says what to do in one line."""
    checks = _run_with_broken_cv2("checks")
    assert checks.returncode == 1 and "Traceback" not in checks.stderr, checks.stderr
    assert any(line.startswith("FAIL") and " opencv " in line and "libGL.so.1" in line for line in checks.stdout.splitlines())
    shown = _run_with_broken_cv2("--help")
    assert shown.returncode == 0 and "infer" in shown.stdout, shown.stderr
    infer = _run_with_broken_cv2("infer", tmp_path / "m.onnx", tmp_path / "v.mp4")
    assert infer.returncode == 3 and "Traceback" not in infer.stderr
    assert infer.stderr.strip().splitlines() == [
        "error: OpenCV is installed but cannot be loaded (libGL.so.1: cannot open shared object file: No such file or "
        "directory): opencv-python needs a desktop's graphics libraries: pip uninstall opencv-python && pip install "
        "opencv-python-headless (or apt-get install libgl1)"]
    assert missing_module_error(ImportError("cannot import name 'x' from 'dronseg_edge.y'", name="dronseg_edge.y")) is None


def test_an_opencv_built_for_numpy_1_is_one_line_naming_the_fix(tmp_path):
    """JetPack's OpenCV under a numpy 2 that pip brought: its C init raises an ImportError with no name and no
    Python frame of cv2; the import statement it came out of names the module."""
    infer = _run_with_broken_cv2("infer", tmp_path / "m.onnx", tmp_path / "v.mp4", fault="numpy")
    assert infer.returncode == 3 and "Traceback" not in infer.stderr, infer.stderr
    assert infer.stderr.strip().splitlines() == [
        "error: OpenCV is installed but cannot be loaded (numpy.core.multiarray failed to import): this OpenCV was "
        "built against numpy 1.x: pip install 'numpy<2'"]


def test_a_matplotlib_built_for_numpy_1_stops_train_before_it_starts(synth_root, tmp_path):
    """matplotlib < 3.8.4 (the train extra's floor is 3.7) under numpy 2 cannot load: training ran every epoch, then
    ended in `reinstall it` (exit 3) at the plots; now train stops at once, naming the fix."""
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "figure.py").write_text("raise ImportError('numpy.core.multiarray failed to import')\n")
    here = str(Path(__file__).resolve().parents[2])  # this checkout's package, whatever the venv has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), here, os.environ.get("PYTHONPATH", "")])}
    shown = subprocess.run([sys.executable, "-m", "dronseg_edge", "train", "--data", synth_root, "--out", tmp_path / "run",
                            "--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--size", "96x64", "--epochs", "1",
                            "--workers", "0"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert shown.returncode == 3 and not (tmp_path / "run" / "weights").exists(), shown.stderr
    assert shown.stderr.strip().splitlines() == [
        "error: matplotlib is installed but cannot be loaded (numpy.core.multiarray failed to import): this matplotlib "
        "was built against numpy 1.x: pip install 'matplotlib>=3.8.4' (or 'numpy<2')"]


def test_a_torch_whose_shared_library_is_missing_is_one_line(tmp_path):
    """A Jetson's torch wheel without its CUDA libraries fails to import with an OSError from ctypes (not an
    ImportError): `infer model.pt` and `train` say so in one line, `checks` warns and goes on."""
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('import ctypes\nctypes.CDLL("libcudnn_absent_for_this_test.so.9")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "dronseg_edge", *map(str, args)], capture_output=True, text=True,
                              timeout=300, env=env, cwd=tmp_path)

    (tmp_path / "best.pt").write_bytes(b"not read: torch fails first")
    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((48, 64, 3), np.uint8))
    for shown in (run("infer", tmp_path / "best.pt", tmp_path / "frame.png"), run("train", "--data", tmp_path / "none")):
        assert shown.returncode == 3 and "Traceback" not in shown.stderr, shown.stderr
        line, = shown.stderr.strip().splitlines()
        assert line.startswith("error: torch is installed but cannot be loaded (libcudnn_absent_for_this_test.so.9: ")
        assert "reinstall it: pip install 'dronseg-edge[train]'" in line and "NVIDIA's torch and torchvision wheels" in line
    checks = run("checks")
    assert "Traceback" not in checks.stderr and any(
        line.startswith("WARN") and " torch " in line and "libcudnn_absent_for_this_test" in line
        for line in checks.stdout.splitlines())
    assert missing_module_error(OSError(28, "No space left on device")) is None  # not an import: stays what it is
