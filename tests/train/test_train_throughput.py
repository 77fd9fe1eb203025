"""benchmarks/train_throughput.py runs the real loop on real files and records what it measured."""

import importlib.util
import json
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
    assert result["settings"]["model"] == "lraspp_mobilenet_v3_large"
