"""benchmarks/vs_plain_loop.py: --baseline really runs the other checkout's package; its cached clips."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.vs_plain_loop import _run, h264_clip  # noqa: E402


def test_a_baseline_checkout_runs_its_own_package_even_from_this_repositorys_root(tmp_path, monkeypatch):
    other = tmp_path / "before"
    (other / "dronseg_edge").mkdir(parents=True)
    (other / "dronseg_edge" / "__init__.py").write_text("")
    (other / "dronseg_edge" / "__main__.py").write_text("print('the baseline checkout')\n")
    monkeypatch.chdir(ROOT)  # where the benchmark is run from: `python -m` would find this checkout first
    assert os.path.isdir("dronseg_edge")
    ran = _run([sys.executable, "-m", "dronseg_edge"], other)
    assert ran["stdout"].strip() == "the baseline checkout" and ran["peak_mib"] > 0


def test_two_runs_making_the_same_cached_clip_at_once_both_get_a_whole_one(tmp_path, monkeypatch):
    """Two benchmark runs sharing one --work folder: both encoded into the one name clip.tmp.mp4, so the one
    that finished first moved the other's half-written file into place, and the other then failed
    (FileNotFoundError: clip.tmp.mp4 -> clip.mp4)."""
    av = pytest.importorskip("av")
    source = tmp_path / "source.avi"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for index in range(60):
        writer.write(np.full((48, 64, 3), 4 * index, np.uint8))
    writer.release()
    clip, from_ndarray, calls = tmp_path / "work" / "clip.mp4", av.VideoFrame.from_ndarray, []

    def another_run_meanwhile(*args, **kwargs):
        calls.append(None)
        if len(calls) == 55:  # this run's file is being written (x264 gives packets after its look-ahead)
            assert h264_clip(source, clip, 60) == clip  # the other run makes the whole clip meanwhile
        return from_ndarray(*args, **kwargs)

    monkeypatch.setattr(av, "VideoFrame", types.SimpleNamespace(from_ndarray=another_run_meanwhile))
    assert h264_clip(source, clip, 60) == clip and len(calls) == 120
    capture = cv2.VideoCapture(str(clip))
    assert sum(1 for _ in iter(lambda: capture.read()[0], False)) == 60
    assert [p.name for p in clip.parent.iterdir()] == ["clip.mp4"]
