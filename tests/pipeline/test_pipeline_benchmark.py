"""benchmarks/pipeline.py runs on the CPU with a tiny model and writes its results file."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pipeline.py"


@pytest.mark.slow
def test_quick_cpu_run_writes_results(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("pipeline_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(["--quick", "--device", "cpu", "--frames", "40", "--work", str(tmp_path / "work"),
                        "--out", str(tmp_path / "results"), "--iters", "5"])
    assert code == 0
    (path,) = (tmp_path / "results").glob("pipeline-cpu-*.json")
    doc = json.loads(path.read_text())
    assert doc["settings"]["arch"] == "lraspp_mobilenet_v3_large" and doc["settings"]["input_size"] == "160x96"
    assert doc["video"]["frames"] == 40 and doc["end_to_end"]["frames"] == 40
    assert doc["model_only"]["ms_per_frame"] > 0 and doc["end_to_end"]["fps"] > 0
    ratio = doc["targets"]["end_to_end_vs_model_only"]
    assert ratio["measured"] == pytest.approx(doc["end_to_end"]["fps"] / doc["model_only"]["fps"], rel=1e-2)
    assert "torch_model_only_ms" not in doc["targets"]  # that target is for ResNet-101 on a GPU only
    assert "end-to-end / model-only" in capsys.readouterr().out
