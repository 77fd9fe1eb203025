import json

import numpy as np
import torch

from dronseg_edge.atomic import write_json_atomic
from dronseg_edge.bench.report import (SCHEMA, build_document, fmt_ms, latency_table, markdown_document,
                                       render_table, settings_line, warning_lines)
from dronseg_edge.bench.run import BenchResult, bench_model
from dronseg_edge.bench.stats import summarize
from dronseg_edge.bench.system import system_info
from dronseg_edge.bench.timing import Measurement, TimingSettings


def fake_result(samples, name="m.onnx", h2d=None):
    stats = summarize(samples)
    m = Measurement(latency=stats, compute=stats, h2d=h2d, d2h=h2d, host_wall=stats, timer="perf_counter",
                    warmup_iters=2, warmup_s=0.1, measure_s=0.2, include_transfers=False)
    return BenchResult(model=f"/x/{name}", backend="onnxruntime", provider="CPUExecutionProvider",
                       arch="lraspp_mobilenet_v3_large", precision="fp32", head="logits", input_size=(96, 64),
                       batch=1, cuda_graph=None, file_mb=13.1, measurement=m)


def test_fmt_ms_keeps_three_significant_digits():
    assert [fmt_ms(v) for v in (0.0712, 7.834, 54.21, 7512.4, None)] == ["0.071", "7.83", "54.2", "7512", "-"]


def test_text_table_aligns_columns():
    text = render_table(["name", "ms"], [["a", "1.5"], ["long-name", "12.25"]]).splitlines()
    assert text[0].split() == ["name", "ms"] and set(text[1].replace(" ", "")) == {"-"}
    assert len({len(line) for line in text}) == 1  # every line padded to the same width
    assert text[2].endswith("  1.5") and text[3].startswith("long-name")


def test_markdown_table_right_aligns_numbers_and_escapes_pipes():
    md = render_table(["name", "ms"], [["a|b", "1.5"]], markdown=True).splitlines()
    assert md == ["| name | ms |", "|---|---:|", "| a\\|b | 1.5 |"]


def test_latency_table_has_every_statistic():
    r = fake_result([1.0, 2.0, 3.0, 4.0, 10.0])
    header, _, row = latency_table([r]).splitlines()
    for column in ("min", "mean", "median", "p90", "p95", "p99", "max", "cv %", "fps"):
        assert column in header
    cells = row.split()
    assert cells[0] == "m.onnx" and "7.60" in cells and "9.76" in cells and "250" in cells  # p90, p99, fps


def test_noisy_run_warns_and_steady_run_does_not():
    noisy = warning_lines([fake_result([1.0, 1.0, 1.0, 10.0])])
    assert len(noisy) == 1 and noisy[0].startswith("warning: m.onnx") and "warm up longer" in noisy[0]
    assert warning_lines([fake_result([5.0, 5.01, 4.99, 5.0])]) == []


def test_noise_warning_gives_the_tables_decimal():
    """A cv of 10.1 % read "varies by 10% (cv > 10%)", a warning that contradicts itself."""
    result = fake_result([9.1, 10.9, 9.1, 10.9])
    cv = 100 * result.measurement.latency.cv
    assert 10.05 < cv < 10.5
    assert f"varies by {cv:.1f}% (cv > 10%)" in warning_lines([result])[0]


def test_json_document_schema(tmp_path, tiny_checkpoint):
    settings = TimingSettings(warmup_iters=1, iters=3)
    result = bench_model(tiny_checkpoint, torch.device("cpu"), settings, batch=np.int64(1))  # JSON had "batch": "1"
    assert type(result.batch) is int
    run_settings = {"device": "cpu", "size": None, "batch": 1, "precision": None, "cuda_graph": None,
                    "timing": settings.to_dict(), "timer": "perf_counter"}
    path = write_json_atomic(tmp_path / "out" / "bench.json", build_document(system_info(torch.device("cpu")), run_settings, [result]))
    doc = json.loads(path.read_text())
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temporary file left behind
    assert doc["schema"] == SCHEMA and doc["kind"] == "bench"
    assert isinstance(doc["date"], str) and doc["date"][4] == "-" and "T" in doc["date"]
    assert doc["system"]["device"]["type"] == "cpu"
    versions = doc["system"]["versions"]
    for key in ("python", "torch", "cuda", "cudnn", "onnxruntime", "onnxruntime_providers", "tensorrt", "dronseg_edge"):
        assert key in versions
    assert versions["torch"] == str(torch.__version__)
    assert doc["settings"]["timing"]["iters"] == 3 and doc["settings"]["timing"]["include_transfers"] is False
    (entry,) = doc["results"]
    for key, kind in (("model", str), ("backend", str), ("provider", str), ("arch", str), ("precision", str),
                      ("input_size", str), ("batch", int), ("file_mb", float), ("timer", str),
                      ("warmup_iters", int), ("latency_ms", dict), ("stages_ms", dict), ("host_wall_ms", dict),
                      ("output_shape", list)):
        assert isinstance(entry[key], kind), key
    latency = entry["latency_ms"]
    for key in ("count", "min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "std_ms", "cv",
                "throughput_fps"):
        assert isinstance(latency[key], (int, float)), key
    assert latency["count"] == 3 and latency["min_ms"] <= latency["median_ms"] <= latency["max_ms"]
    assert entry["stages_ms"]["h2d"] is None and entry["stages_ms"]["compute"]["count"] == 3


def test_settings_line_and_markdown_page():
    settings = {"device": "cuda:0", "size": "1280x720", "batch": 4, "cuda_graph": True, "timer": "cuda-events",
                "timing": TimingSettings(warmup_s=2, iters=50, include_transfers=True).to_dict()}
    line = settings_line(settings)
    assert "size 1280x720" in line and "batch 4" in line and "warm-up 2 s" in line and "50 iterations" in line
    assert "transfers included" in line and "cuda graph on" in line
    for asked, said in ((0, "1 warm-up iteration,"), (1, "1 warm-up iteration,"), (5, "5 warm-up iterations,")):
        # one untimed call always runs (it allocates the outputs): --warmup-iters 0 still makes one
        assert said in settings_line({**settings, "timing": TimingSettings(warmup_iters=asked).to_dict()})
    page = markdown_document(["device: X"], settings, "| a |")
    assert page.startswith("## Latency") and "- device: X" in page and "| a |" in page
