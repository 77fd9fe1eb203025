"""benchmarks/train_throughput.py runs the real loop on real files and records what it measured."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.mark.slow
def test_quick_cpu_run_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.main(["--model", "lraspp_mobilenet_v3_large", "--size", "96x64", "--batch", "4", "--steps", "3",
                        "--warmup", "1", "--device", "cpu", "--workers", "0", "--amp", "off", "--images", "8",
                        "--out", str(tmp_path)])
    result = json.loads(path.read_text())
    assert result["images"] == 12  # 3 timed steps x batch 4; the warm-up step is not counted
    assert result["images_per_s"] > 0 and 0 <= result["data_wait_frac"] < 1
    assert result["peak_memory_gib"] is None  # CPU run: no GPU memory to report
    assert result["versions"]["torch"] and result["device"].startswith("cpu")
    assert len(result["cpu"]["load_average_start"]) == len(result["cpu"]["load_average"]) == 3  # none before
    assert result["settings"]["model"] == "lraspp_mobilenet_v3_large"


def test_a_loss_that_is_not_finite_is_written_as_strict_json(tmp_path, monkeypatch):
    """An fp16 run that overflows has a NaN or infinite loss (loss_finite: false): it was written as NaN/Infinity,
    which JSON has not (jq, JavaScript, Go and Rust refuse the file)."""
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "run", lambda args: {"device": "cpu", "date": "2026-12-07T10:00:00", "images_per_s": 1.0,
                                                      "data_wait_frac": 0.0, "peak_memory_gib": None,
                                                      "final_loss": float("nan")})
    path = module.main(["--out", str(tmp_path)])
    result = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert result["final_loss"] is None


def test_a_run_that_times_no_step_is_refused(tmp_path):
    """Before: --steps 0 trained the warm-up, then wrote {"images_per_s": 0.0} as the result, exit 0."""
    from dronseg_edge.errors import DronsegError

    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny = ["--model", "lraspp_mobilenet_v3_large", "--size", "96x64", "--images", "8", "--batch", "2", "--workers", "0",
            "--device", "cpu", "--out", str(tmp_path / "out")]
    for args in (["--steps", "0", "--warmup", "1"], ["--steps", "1", "--warmup", "-1"]):
        with pytest.raises(DronsegError, match="time 1 or more steps"):
            module.main([*tiny, *args])
    assert not list(tmp_path.iterdir())


def test_a_bad_option_is_one_line(tmp_path):
    """Before: the DronsegError of the size check came out as a traceback."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--size", "100", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == "error: --size '100' is not a size: write it as WIDTHxHEIGHT, e.g. 1280x720\n"


@pytest.mark.slow
def test_tagged_runs_of_one_day_keep_their_own_files_and_record_what_a_reader_can_use(tmp_path):
    """Before: there was no --tag, so two configurations run on one day and device wrote one file, the second
    replacing the first; settings.data named the deleted temporary folder, and versions had no numpy or OpenCV."""
    import cv2
    import numpy as np

    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny = ["--model", "lraspp_mobilenet_v3_large", "--size", "96x64", "--images", "4", "--batch", "2", "--steps", "1",
            "--warmup", "0", "--workers", "0", "--amp", "off", "--device", "cpu", "--out", str(tmp_path)]
    paths = [module.main([*tiny, "--tag", tag]) for tag in ("batch 2", "b")]
    assert [path.name.split("-", 5)[-1] for path in paths] == ["batch-2.json", "b.json"]
    assert sorted(tmp_path.iterdir()) == sorted(paths)
    result = json.loads(paths[0].read_text())
    assert result["settings"]["data"] == "synthetic, 4 images 96x64, seed 0" and result["settings"]["tag"] == "batch 2"
    assert result["versions"]["numpy"] == np.__version__ and result["versions"]["opencv"] == cv2.__version__
