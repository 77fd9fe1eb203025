"""benchmarks/pipeline.py: its options, checked before anything runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.pipeline import parse_args  # noqa: E402

from dronseg_edge.errors import DronsegError  # noqa: E402


def test_no_frames_or_no_repeats_are_refused():
    """Before, with --vs-plain-loop: --frames 0 was a FileNotFoundError traceback, --repeats 0 a StatisticsError
    traceback after the untimed runs."""
    for args in (["--frames", "0"], ["--repeats", "0"], ["--quick", "--frames", "-1"]):
        with pytest.raises(DronsegError, match="take 1 or more"):
            parse_args(["--vs-plain-loop", *args])
    assert parse_args(["--vs-plain-loop", "--quick"]).repeats == 1


def test_the_vs_plain_loop_markdown_names_the_machine_and_the_versions(tmp_path, monkeypatch):
    """Before: the .md beside the JSON said only "device: cpu": no CPU model, load average or versions."""
    import types

    import cv2
    import numpy as np

    import vs_plain_loop  # as pipeline.py imports it

    from benchmarks.pipeline import run_vs_plain_loop
    from dronseg_edge import metadata

    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    side = {"seconds": 1.0, "peak_mib": 100.0}
    measured = {"medians": {key: side for key in ("plain", "infer", "plain_1", "infer_1")},
                "stage_ms_per_frame": {"plain": None, "infer": None}, "throughput_ratio": 1.0, "peak_memory_ratio": 1.0,
                "one_frame_extra_s": 0.0, "baseline": None, "met": {"throughput": False}}
    monkeypatch.setattr(vs_plain_loop, "h264_clip", lambda source, path, frames: source)
    monkeypatch.setattr(vs_plain_loop, "compare", lambda *args: dict(measured))
    monkeypatch.setattr(metadata, "read_onnx_info", lambda path: types.SimpleNamespace(arch="a", input_size=(64, 48)))
    run_vs_plain_loop(parse_args(["--vs-plain-loop", "--model", "m.onnx", "--video", str(clip), "--out", str(tmp_path),
                                  "--work", str(tmp_path / "work"), "--tag", "t"]))
    text = next(tmp_path.glob("vs-plain-loop-cpu-*-t.md")).read_text()
    assert "cpu: " in text and "load average" in text and f"opencv {cv2.__version__}" in text
    assert "torch uses" not in text  # this process's torch threads (2 on 2 cores): neither side runs torch


def _run_with_fakes(tmp_path, monkeypatch, backend) -> tuple[dict, int]:
    """pipeline.run on a fake Segmenter of ``backend`` with os.cpu_count 2 over torch's threads; (doc, torch's threads
    before the run)."""
    import os
    import types

    import numpy as np
    import torch

    from benchmarks import pipeline

    frame = np.zeros((48, 64, 3), np.uint8)
    timed = types.SimpleNamespace(compute=types.SimpleNamespace(median_ms=10.0), to_dict=lambda: {"latency_ms": {}})
    summary = types.SimpleNamespace(data={"fps": 90.0, **dict.fromkeys(
        ("frames", "wall_s", "stage_ms", "write_ms", "video_codec"))}, speed_line=lambda: "")

    class FakeSegmenter:
        def __init__(self, *args, **kwargs):
            self.info = types.SimpleNamespace(arch="a", input_size=(64, 48), precision="fp32")
            self.backend = backend

        def describe(self):
            return "fake"

        def predict(self, image):
            pass

        def close(self):
            pass

    monkeypatch.setattr(pipeline, "sane_checkpoint", lambda *args: tmp_path / "m.pt")
    monkeypatch.setattr(pipeline, "synthetic_video", lambda *args: tmp_path / "v.mp4")
    monkeypatch.setattr(pipeline, "video_facts", lambda path: (frame, {"path": str(path), "codec": "MJPG", "size": "64x48",
                                                                       "frames": 1, "fps": 30.0}))
    monkeypatch.setattr(pipeline, "Segmenter", FakeSegmenter)
    monkeypatch.setattr(pipeline, "preprocess_host", lambda frames, info: None)
    monkeypatch.setattr(pipeline, "measure", lambda backend, batch, timing: timed)
    monkeypatch.setattr(pipeline, "run_inference", lambda segmenter, video, options: summary)
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: before + 2)  # the benchmark sets torch to before + 1 threads
    try:
        return pipeline.run(parse_args(["--quick", "--work", str(tmp_path)])), before
    finally:
        torch.set_num_threads(before)


def test_the_system_line_names_the_torch_threads_both_runs_use(tmp_path, monkeypatch, capsys):
    """Before: the system line (and the JSON's system.cpu.torch_threads) was taken before the benchmark set torch to
    one core fewer, so a 2-core machine printed "torch uses 2 threads" where model-only and end-to-end ran on 1."""
    import types

    doc, before = _run_with_fakes(tmp_path, monkeypatch, types.SimpleNamespace(name="torch", provider=None))
    assert doc["settings"]["torch_threads"] == before + 1 == doc["system"]["cpu"]["torch_threads"]
    assert f"torch uses {before + 1} threads" in capsys.readouterr().out


def test_an_onnx_model_records_onnx_runtime_threads_not_torch_threads(tmp_path, monkeypatch, capsys):
    """Before: with an ONNX --model the system line said "torch uses N threads" and settings.torch_threads recorded N,
    though ONNX Runtime ran the model on its own pool (its default, one per core)."""
    import types

    backend = types.SimpleNamespace(name="onnxruntime", provider="CPUExecutionProvider", threads=None)
    doc, _ = _run_with_fakes(tmp_path, monkeypatch, backend)
    assert doc["settings"]["torch_threads"] is None is doc["system"]["cpu"]["torch_threads"]
    assert doc["settings"]["onnxruntime_intra_op"] == "onnxruntime default (one per core)"
    out = capsys.readouterr().out
    assert "torch uses" not in out and "intra-op threads: onnxruntime default (one per core)" in out
