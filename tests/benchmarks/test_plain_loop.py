"""benchmarks/plain_loop.py: the yardstick of --vs-plain-loop counts only a run that read frames."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from testkit import onnx_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "plain_loop.py"


def loop(*args: Path | str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def identity_onnx(tmp_path) -> Path:
    """A stand-in model: its (1, 3, 16, 32) input comes back as three classes' logits."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 32])])
    path = tmp_path / "model.onnx"
    onnx.save(onnx_model(graph), str(path))
    return path


def test_a_clip_it_reads_is_timed(identity_onnx, tmp_path):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for index in range(5):
        writer.write(np.full((48, 64, 3), 40 * index, np.uint8))
    writer.release()
    done = loop(identity_onnx, clip, tmp_path / "out.mp4")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["frames"] == 5 and (tmp_path / "out.mp4").stat().st_size > 0


def test_a_run_that_reads_no_frame_fails_in_one_line(identity_onnx, tmp_path):
    """Before: exit 0 and {"frames": 0, "seconds": 0.05}, a failed run reported as the fastest one."""
    not_a_video = tmp_path / "clip.mp4"
    not_a_video.write_text("not a video")
    for clip in (not_a_video, tmp_path / "missing.mp4"):
        done = loop(identity_onnx, clip, tmp_path / "out.mp4")
        assert done.returncode != 0 and done.stdout == "" and "Traceback" not in done.stderr
        assert done.stderr.splitlines()[-1].startswith(f"error: {clip}: no frame")  # after FFmpeg's own log line


def test_bad_arguments_give_one_line(tmp_path):
    """Before: a TypeError traceback (no arguments), ONNX Runtime's NoSuchFile traceback (no model)."""
    for args in ((), (tmp_path / "missing.onnx", tmp_path / "clip.mp4", tmp_path / "out.mp4")):
        done = loop(*args)
        assert done.returncode != 0 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
