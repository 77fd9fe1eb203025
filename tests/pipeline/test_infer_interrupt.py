"""Ctrl-C during `dronseg-edge infer`: the outputs written so far must be complete and playable."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pipeline_media import write_video

from dronseg_edge.pipeline.source_base import FramesSource

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sigint_leaves_a_playable_video_and_complete_masks_and_stats(tiny_checkpoint, tmp_path):
    video = write_video(tmp_path / "long.mp4", frames=900, size=(96, 64))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "dronseg_edge", "infer", str(tiny_checkpoint), str(video), "--out", str(out),
         "--device", "cpu", "--save-masks", "--no-progress"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            masks = out / "masks"
            if masks.is_dir() and len(list(masks.iterdir())) >= 10:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be interrupted"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert "Results saved to" in stdout
    summary = json.loads((out / "summary.json").read_text())
    frames = summary["frames"]
    assert summary["interrupted"] and 10 <= frames < 900
    assert (summary["stopped"], summary["interrupted_by"]) == ("interrupted", "SIGINT")
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4", "stats.jsonl", "summary.json"]
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    decoded = 0
    while capture.read()[0]:
        decoded += 1
    assert decoded == frames == summary["video_frames"]  # finalised: every frame of the summary plays
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["frame"] for s in stats] == list(range(frames))
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == [f"{i:06d}.png" for i in range(frames)]  # no temporary or half-written file
    assert all(cv2.imread(str(out / "masks" / name), cv2.IMREAD_UNCHANGED) is not None for name in masks[-2:])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_right_after_the_run_folder_is_made_still_writes_its_summary(signum, tiny_checkpoint, video_path,
                                                                              tmp_path, monkeypatch):
    # it came while the sink threads started (before the loop's guard): exit 130 left masks/ and an empty
    # stats.jsonl without summary.json, and the same command again was refused ("already holds files").
    # The signal then reaches the caller as a KeyboardInterrupt (it returned: a loop over videos went on to the next)
    from dronseg_edge.pipeline import RunOptions, Segmenter, run, run_inference

    real, before = run.DiskFloor, signal.getsignal(signum)
    monkeypatch.setattr(run, "DiskFloor", lambda *a: (os.kill(os.getpid(), signum), real(*a))[1])
    with Segmenter(tiny_checkpoint, device="cpu") as segmenter, pytest.raises(KeyboardInterrupt) as stop:
        run_inference(segmenter, video_path, RunOptions(out=tmp_path / "run", save_masks=True, progress=False))
    summary = stop.value.summary  # errors.Interrupted
    data = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary.data == data and (data["stopped"], data["frames"], data["interrupted"]) == ("interrupted", 0, True)
    assert data["interrupted_by"] == signal.Signals(signum).name
    assert signal.getsignal(signum) == before  # the handler before the run is back


def test_a_signal_the_process_ignores_stays_ignored_during_a_run(tmp_path):
    # `nohup dronseg-edge infer ...` ignores SIGHUP, but the run put its own handler in: the terminal
    # closing stopped the run (exit 130 after 1677 of 9000 frames)
    from testkit import FakeBackend

    from dronseg_edge.pipeline import RunOptions, Segmenter, run_inference

    def frames():
        for i in range(6):
            if i == 3:
                os.kill(os.getpid(), signal.SIGHUP)
            yield np.zeros((6, 8, 3), np.uint8)

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with Segmenter(FakeBackend()) as segmenter:
            data = run_inference(segmenter, FramesSource(frames()), RunOptions(out=tmp_path / "run", progress=False)).data
        assert (data["frames"], data["interrupted"]) == (6, False)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_stop_signal_is_raised_at_once_or_when_the_critical_block_ends():
    from dronseg_edge.pipeline.interrupts import InterruptGuard

    done = []
    for critical, guard in ((False, InterruptGuard()), (True, InterruptGuard())):  # in a frame's writes: those first
        with pytest.raises(KeyboardInterrupt), guard.held(), guard:
            with guard.critical() if critical else contextlib.nullcontext():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append(critical)
        assert guard.signal_name == "SIGTERM"
    assert done == [True]


def test_a_second_stop_signal_while_the_outputs_are_finished_only_says_so(capsys):
    from dronseg_edge.pipeline.interrupts import interrupts_deferred

    with interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
    assert capsys.readouterr().err == "finishing the outputs, one moment...\n"
