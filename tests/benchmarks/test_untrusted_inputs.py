"""benchmarks/untrusted_inputs.py: what its results record about the machine."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks import untrusted_inputs  # noqa: E402

from dronseg_edge import machine  # noqa: E402


def test_the_record_names_an_arm_board_and_an_onnx_runtime_installed_under_another_name(tmp_path, monkeypatch):
    """Before: the script's own copies of the package's helpers read only an x86 "model name" (a Jetson was recorded
    as "aarch64" or "") and onnxruntime's version from the "onnxruntime" distribution only (None where onnxruntime-gpu
    was installed, though every infer case ran on it)."""
    import onnxruntime

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nHardware\t: NVIDIA Jetson AGX Orin\n")
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    real_version = importlib.metadata.version

    def version(name):  # as where onnxruntime-gpu provides the onnxruntime module
        if name == "onnxruntime":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    (tmp_path / "bomb.png").write_bytes(b"png")
    monkeypatch.setattr(untrusted_inputs, "make_inputs", lambda work, side: dict.fromkeys(
        ("model", "bomb", "folder", "big", "data", "large"), tmp_path / "bomb.png"))
    monkeypatch.setattr(untrusted_inputs, "measure", lambda cmd: {"peak_mib": 1.0, "exit_code": 0, "seconds": 0.0,
                                                                  "stderr": None})
    record = untrusted_inputs.run(untrusted_inputs.parse_args(["--quick", "--work", str(tmp_path / "work")]))
    assert record["cpu"]["model"] == "NVIDIA Jetson AGX Orin"
    assert record["versions"]["onnxruntime"] == onnxruntime.__version__
    assert record["versions"]["pillow"] == real_version("pillow") and len(record["cpu"]["load_average"]) == 3
