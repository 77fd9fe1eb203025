"""Sources that end, stall or shrink mid-run: a local HTTP stream its server ends (exit 0), one that
stalls (exit 5 once --reconnect-s is spent), a video file truncated while it is read (exit 0, the
summary says so). docs/reliability.md lists each case."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from pipeline_media import read_video, scene, write_video

from dronseg_edge.cli import main
from dronseg_edge.pipeline import RunOptions, Segmenter, open_source, run_inference
from dronseg_edge.pipeline import sources

SERVER = Path(__file__).resolve().parent / "stream_server.py"
TS_FRAMES = 30


@pytest.fixture(scope="module")
def ts_clip(tmp_path_factory) -> Path:
    """30 frames of MPEG-TS, the container of most HTTP and UDP video streams."""
    path = tmp_path_factory.mktemp("stream") / "clip.ts"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (96, 64))
    assert writer.isOpened(), "test setup: OpenCV cannot write MPEG-TS"
    for index in range(TS_FRAMES):
        writer.write(scene(index, (96, 64)))
    writer.release()
    return path


@contextlib.contextmanager
def served(path: Path, mode: str):
    """The URL of ``path`` served once by stream_server.py in ``mode`` (end or stall)."""
    server = subprocess.Popen([sys.executable, str(SERVER), str(path), mode], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        yield f"http://127.0.0.1:{port}/live.ts"
    finally:
        server.kill()
        server.wait(timeout=10)
        server.stdout.close()


@pytest.fixture
def short_timeouts(monkeypatch):
    """A 1 s read timeout instead of 5 s, so a stall is seen quickly."""
    monkeypatch.setattr(sources, "READ_TIMEOUT_MS", 1000)
    monkeypatch.setattr(sources, "OPEN_TIMEOUT_MS", 3000)


def infer_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", *map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_an_http_stream_its_server_ends_exits_0_and_says_it_ended(tiny_checkpoint, ts_clip, tmp_path, capsys,
                                                                  short_timeouts):
    out_dir = tmp_path / "run"
    with served(ts_clip, "end") as url:
        code, out, err = infer_cli(capsys, tiny_checkpoint, url, "--out", out_dir, "--device", "cpu", "--no-live",
                                   "--reconnect-s", "0.5", "--no-progress")
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (summary["source_end"], summary["stopped"], summary["error"]) == ("ended", "end", None)
    assert summary["frames"] == TS_FRAMES
    assert f"ended after {TS_FRAMES} frames" in err and "--reconnect-s" not in err and "error" not in err
    assert len(read_video(out_dir / "overlay.mp4")[0]) == summary["video_frames"] == TS_FRAMES


def test_an_http_stream_that_stalls_is_lost_with_exit_code_5(tiny_checkpoint, ts_clip, tmp_path, capsys,
                                                              short_timeouts):
    out_dir = tmp_path / "run"
    with served(ts_clip, "stall") as url:
        code, out, err = infer_cli(capsys, tiny_checkpoint, url, "--out", out_dir, "--device", "cpu", "--no-live",
                                   "--reconnect-s", "0.5", "--no-progress")
    error_lines = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 5 and len(error_lines) == 1, err
    assert "was lost (no frame within the read timeout) and could not be reopened within 0.5 s" in error_lines[0]
    assert "--reconnect-s" in error_lines[0] and "Traceback" not in err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (summary["source_end"], summary["stopped"]) == ("lost", "source_lost")
    assert 0 < summary["frames"] < TS_FRAMES  # the half it was sent
    assert len(read_video(out_dir / "overlay.mp4")[0]) == summary["video_frames"]  # finalised, plays
    assert len((out_dir / "stats.jsonl").read_text().splitlines()) == summary["frames"]


def test_a_video_truncated_while_read_ends_the_run_cleanly(tiny_checkpoint, tmp_path, caplog):
    path = write_video(tmp_path / "growing.mp4", frames=90, size=(128, 80), noise=True)
    source = open_source(path)
    frames = source.frames

    def truncated_at_frame_5(stride=1):
        for record in frames(stride):
            if record.index == 5:
                os.truncate(path, path.stat().st_size // 2)  # cut short under the open decoder
            yield record

    source.frames = truncated_at_frame_5
    with Segmenter(tiny_checkpoint, device="cpu") as segmenter:
        summary = run_inference(segmenter, source, RunOptions(out=tmp_path / "run", progress=False))
    data = summary.data
    assert (data["source_end"], data["stopped"], data["error"], data["corrupt_frames"]) == ("truncated", "end", None, 0)
    assert 5 < data["frames"] < 90
    assert f"ends at frame {data['frames']} of the 90 its header declares" in caplog.text
    assert len(read_video(tmp_path / "run" / "overlay.mp4")[0]) == data["frames"]
