"""`infer` killed or stopped at a point: nothing partial under a final name (the overlay video, a
fragmented MP4, plays up to its last fragment), summary.json whole or absent, and the next run
succeeds. SIGKILL in a subprocess (nothing of the run's can run after it); SIGTERM and SIGHUP in this
process, where the run's own handlers catch them. (Ctrl-C in a subprocess: test_infer_interrupt.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from pipeline_media import decode_without_errors, fragment_frames, read_video, write_video

from dronseg_edge import atomic
from dronseg_edge.cli import main
from dronseg_edge.pipeline import RunOptions, Segmenter, run_inference, video_writer

needs_av = pytest.mark.skipif(video_writer._import_av() is None,
                              reason="PyAV is not installed (pip install 'dronseg-edge[video]'): mp4v cannot be fragmented")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", frames=900, size=(96, 64))


def start_infer(checkpoint: Path, video: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dronseg_edge", "infer", str(checkpoint), str(video), "--out",
                             str(out), "--device", "cpu", "--save-masks", "--no-progress", *extra],
                            cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(process: subprocess.Popen, ready, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before it could be stopped: {process.communicate()[1]}"
    assert ready(), "the run did not get far enough in time"


def masks_written(out: Path) -> int:
    masks = out / "masks"
    return len([p for p in masks.iterdir() if not p.name.startswith(".")]) if masks.is_dir() else 0


def assert_final_files_whole(out: Path) -> None:
    """Every file under a final (not hidden) name is complete: masks decode, segments play in full,
    stats.jsonl holds whole JSON lines only."""
    for mask in (out / "masks").iterdir():
        if not mask.name.startswith("."):
            assert cv2.imread(str(mask), cv2.IMREAD_UNCHANGED) is not None, mask
    lines = (out / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(len(lines)))


@pytest.mark.slow
def test_sigkill_leaves_whole_files_and_finished_segments_and_a_rerun_succeeds(tiny_checkpoint, long_video,
                                                                               tmp_path, capsys):
    out = tmp_path / "run"
    process = start_infer(tiny_checkpoint, long_video, out, "--segment-s", "0.2")  # 6 frames a segment at 30 fps
    try:
        wait_until(process, lambda: len(list(out.glob("overlay_*.mp4"))) >= 2 and masks_written(out) >= 12)
        process.kill()  # SIGKILL: no handler runs, nothing is finalised
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (out / "summary.json").exists()  # absent, never half-written
    segments = sorted(out.glob("overlay_*.mp4"))
    assert [p.name for p in segments[:2]] == ["overlay_00000.mp4", "overlay_00001.mp4"]
    for segment in segments[:-1]:  # each finished segment is a whole, playable file
        frames, fps, _ = read_video(segment)
        assert (len(frames), fps) == (6, 30.0), segment
    # The one being written when the kill came: a fragmented MP4 plays up to its last fragment; mp4v
    # (no PyAV) stays under its hidden name until finished, and a kill loses it.
    if video_writer._import_av() is not None:
        assert len(decode_without_errors(segments[-1])) == fragment_frames(segments[-1]) <= 6
    assert_final_files_whole(out)
    leftovers = [p.name for p in out.rglob(".*")]
    assert all(".partial." in name or ".tmp." in name for name in leftovers), leftovers  # hidden names only

    again = tmp_path / "again"
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", str(tiny_checkpoint), str(long_video), "--out", str(again), "--device", "cpu",
              "--max-frames", "6", "--segment-s", "0.1", "--no-progress"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    summary = json.loads((again / "summary.json").read_text())
    assert summary["stopped"] == "max_frames" and [s["file"] for s in summary["video_segments"]] == [
        "overlay_00000.mp4", "overlay_00001.mp4"]


@pytest.mark.slow
@needs_av
def test_sigkill_leaves_an_overlay_video_that_plays_up_to_its_last_fragment(tiny_checkpoint, long_video, tmp_path):
    """A drone's battery running out mid-recording, without --segment-s: the video is kept, not lost."""
    out = tmp_path / "run"
    video = out / "overlay.mp4"
    process = start_infer(tiny_checkpoint, long_video, out)
    try:
        wait_until(process, lambda: video.exists() and fragment_frames(video) >= 60)  # two fragments of a second
        process.kill()  # SIGKILL: the encoder's last frames and the fragment being filled are lost, no more
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (out / "summary.json").exists()
    in_fragments = fragment_frames(video)
    times = decode_without_errors(video)  # ffmpeg -v error (where installed) and PyAV: not a word of error
    assert len(times) == in_fragments >= 60 and masks_written(out) >= in_fragments
    assert times == pytest.approx([index / 30 for index in range(len(times))])  # the source's timeline, from 0
    assert len(read_video(video)[0]) == in_fragments  # OpenCV plays it too
    assert_final_files_whole(out)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_finalise_the_outputs_like_ctrl_c(tiny_checkpoint, long_video, tmp_path, capsys, signame):
    """In this process (the handlers are the run's, installed while it runs): what systemd or docker stop
    send, and what a closing terminal sends."""
    out = tmp_path / "run"

    def signal_once_running():
        deadline = time.monotonic() + 60
        while masks_written(out) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        if masks_written(out) >= 5:  # the run's handler is in place: it is segmenting frames
            os.kill(os.getpid(), getattr(signal, signame))

    sender = threading.Thread(target=signal_once_running, daemon=True)
    sender.start()
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", str(tiny_checkpoint), str(long_video), "--out", str(out), "--device", "cpu", "--save-masks",
              "--no-progress"])
    sender.join()
    err = capsys.readouterr().err
    assert exit_info.value.code == 130 and "Traceback" not in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["stopped"], summary["interrupted_by"], summary["interrupted"]) == ("interrupted", signame, True)
    assert 5 <= summary["frames"] < 900
    assert len(read_video(out / "overlay.mp4")[0]) == summary["video_frames"] == summary["frames"]
    assert_final_files_whole(out)
    assert not [p for p in out.rglob(".*")]  # finalised: no temporary file left


def test_summary_json_is_whole_or_absent_if_the_run_dies_while_writing_it(tiny_checkpoint, video_path, tmp_path,
                                                                          monkeypatch):
    real_replace = atomic.os.replace

    def die_before_the_rename(src, dst):
        if Path(dst).name == "summary.json":
            Path(src).write_text('{"frames": 2')  # as far as a killed process got: the temporary file, half done
            raise SystemExit(137)
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", die_before_the_rename)
    out = tmp_path / "run"
    with Segmenter(tiny_checkpoint, device="cpu") as segmenter, pytest.raises(SystemExit):
        run_inference(segmenter, video_path, RunOptions(out=out, max_frames=2, progress=False))
    assert not (out / "summary.json").exists()  # the final name never holds a half-written file
    assert (out / "overlay.mp4").exists() and not [p for p in out.iterdir() if p.name.startswith(".summary")]
