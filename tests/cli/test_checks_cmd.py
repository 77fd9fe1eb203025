"""`dronseg-edge checks` through the real entry point (main)."""

from __future__ import annotations

import json
import platform
import sys

import pytest

from dronseg_edge.checks import STATUSES, Check, torch_checks
from dronseg_edge.cli import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_one_line_per_check_with_a_status_and_a_summary(capsys):
    code, out, err = run_cli(capsys, "checks")
    lines = out.strip().splitlines()
    assert "Traceback" not in out + err
    *checks, summary = lines
    assert summary.startswith("checks: ") and summary.endswith(" FAIL")
    assert all(line.split()[0] in STATUSES for line in checks), out
    names = [line.split()[1] for line in checks]
    for expected in ("dronseg-edge", "python", "os", "cpu", "ram", "disk", "torch", "onnxruntime", "ort", "tensorrt",
                     "opencv", "dep", "backends"):
        assert expected in names, out
    assert code == (1 if any(line.startswith("FAIL") for line in checks) else 0)


def test_json_is_a_list_of_name_status_detail_with_versions_as_fields(capsys):
    import numpy
    import onnxruntime

    code, out, _err = run_cli(capsys, "checks", "--json")
    results = json.loads(out)
    assert isinstance(results, list) and len(results) >= 8
    assert all({"name", "status", "detail"} <= set(item) and item["status"] in STATUSES for item in results)
    by_name = {item["name"]: item for item in results}
    assert by_name["onnxruntime"]["version"] == onnxruntime.__version__
    assert by_name["python"]["version"] == platform.python_version()
    assert by_name["ram"]["total_gib"] > 0 and isinstance(by_name["cpu"]["logical_cores"], int)
    if "dep numpy" in by_name:  # needs an installed dronseg-edge (its metadata holds the ranges)
        assert by_name["dep numpy"]["installed"] == numpy.__version__ and by_name["dep numpy"]["satisfied"] is True
    assert "onnxruntime" in by_name["backends"]["backends"]
    assert code == (1 if any(item["status"] == "FAIL" for item in results) else 0)


def test_a_machine_where_nothing_can_run_a_model_exits_1(capsys, monkeypatch):
    """No ONNX Runtime, no TensorRT, no torch: each is only a WARN, the verdict line is the FAIL."""
    for module in ("onnxruntime", "tensorrt", "torch"):
        monkeypatch.setitem(sys.modules, module, None)
    code, out, err = run_cli(capsys, "checks")
    lines = out.splitlines()
    assert code == 1 and "Traceback" not in err
    verdict = next(line for line in lines if line.split()[1] == "backends")
    assert verdict.startswith("FAIL") and "nothing here can run a model" in verdict and "dronseg-edge[ort]" in verdict


def test_a_failing_check_exits_non_zero(capsys, monkeypatch):
    def broken_torch():
        yield Check("gpu0", "FAIL", "a test kernel failed: CUDA error: no kernel image is available")

    monkeypatch.setattr(torch_checks, "torch_checks", broken_torch)
    code, out, err = run_cli(capsys, "checks")
    assert code == 1, err
    assert any(line.startswith("FAIL") and "gpu0" in line and "no kernel image" in line for line in out.splitlines())
    assert "1 FAIL" in out.splitlines()[-1]


def test_a_missing_module_is_a_warn_line_not_a_traceback(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, out, err = run_cli(capsys, "checks", "--json")
    by_name = {item["name"]: item for item in json.loads(out)}
    assert by_name["onnxruntime"]["status"] == "WARN" and by_name["onnxruntime"]["detail"].startswith("not installed")
    assert by_name["tensorrt"]["status"] == "WARN" and "--system-site-packages" in by_name["tensorrt"]["detail"]
    assert "Traceback" not in err


def test_a_crashing_check_is_a_warn_line(capsys, monkeypatch):
    def crashing():
        raise ZeroDivisionError("division by zero")
        yield  # a generator, like the real groups

    monkeypatch.setattr(torch_checks, "torch_checks", crashing)
    code, out, err = run_cli(capsys, "checks", "--json")
    by_name = {item["name"]: item for item in json.loads(out)}
    assert by_name["torch"]["status"] == "WARN" and "ZeroDivisionError" in by_name["torch"]["detail"]
    assert "Traceback" not in err
