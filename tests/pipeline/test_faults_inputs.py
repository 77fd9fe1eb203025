"""Untrusted images and recordings through `dronseg-edge infer` (issue 19; docs/reliability.md, "Untrusted
images and recordings"): decompression bombs in a folder, a recording whose frame size changes, a
recursive glob through symlink loops, a 0.2 fps time-lapse. (A SIGKILL mid-recording:
test_faults_kill.py; data sets for train and eval: tests/train/test_faults_train_inputs.py.)"""

from __future__ import annotations

import json
import os

import cv2
import pytest
from pipeline_media import read_video, scene, write_ts_with_size_change, write_video
from testkit import run_cli, write_png_bomb

from dronseg_edge.pipeline import video_writer

needs_av = pytest.mark.skipif(video_writer._import_av() is None,
                              reason="PyAV is not installed (pip install 'dronseg-edge[video]')")


def infer(capsys, checkpoint, source, out, *extra) -> tuple[int, str, dict | None]:
    code, err = run_cli(capsys, "infer", checkpoint, source, "--out", out, "--device", "cpu", "--no-progress", *extra)
    summary = out / "summary.json"
    return code, err, json.loads(summary.read_text()) if summary.exists() else None


def test_a_bomb_in_a_folder_is_skipped_and_counted_and_the_run_ends_well(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), scene(0, (96, 64)))
    write_png_bomb(folder / "b.png", 40000, 40000)  # issue 19: a cv2 traceback, and summary.json said "end"
    write_png_bomb(folder / "c.jpg", 12000, 12000)  # a PNG under a .jpg name: the header decides
    cv2.imwrite(str(folder / "d.png"), scene(3, (64, 48)))
    code, err, summary = infer(capsys, tiny_checkpoint, folder, tmp_path / "run")
    assert code == 0 and "Traceback" not in err, err
    assert (summary["stopped"], summary["error"], summary["frames"]) == ("end", None, 2)
    assert (summary["oversized_images"], summary["corrupt_frames"], summary["max_pixels"]) == (2, 0, 1 << 26)
    assert sorted(p.name for p in (tmp_path / "run" / "masks").iterdir()) == ["a.png", "d.png"]
    warnings = [line for line in err.splitlines() if "above the 67.1 MP limit" in line]
    assert len(warnings) == 2 and all(line.startswith("warning: image ") for line in warnings), err


def test_a_folder_of_nothing_but_bombs_is_one_line_and_a_consistent_summary(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png_bomb(folder / "b.png", 12000, 12000)
    code, err, summary = infer(capsys, tiny_checkpoint, folder, tmp_path / "run")
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].endswith("can be decoded (1 above --max-pixels): replace them")  # 144 MP: above the most it takes
    assert summary["stopped"] == "error" and summary["error"] == lines[0][len("error: "):]  # never "end" with exit 2


def test_max_pixels_is_an_option_of_infer(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "small.png"), scene(0, (48, 32)))
    cv2.imwrite(str(folder / "large.png"), scene(1, (96, 64)))
    code, err, summary = infer(capsys, tiny_checkpoint, folder, tmp_path / "run", "--max-pixels", "2000")
    assert code == 0 and (summary["frames"], summary["oversized_images"], summary["max_pixels"]) == (1, 1, 2000), err
    code, err, _ = infer(capsys, tiny_checkpoint, folder, tmp_path / "bad", "--max-pixels", "0")
    assert code == 2 and "--max-pixels" in err and not (tmp_path / "bad").exists()


@needs_av
def test_a_recording_whose_frame_size_changes_is_followed(tiny_checkpoint, tmp_path, capsys):
    """Issue 19: every frame came out at the first size, the second half squashed, without a word."""
    feed = write_ts_with_size_change(tmp_path / "feed.ts", sizes=((96, 64), (128, 72)), frames=6)
    out = tmp_path / "run"
    code, err, summary = infer(capsys, tiny_checkpoint, feed, out, "--save-masks")
    assert code == 0, err
    assert (summary["size_changes"], summary["frame_size"], summary["frames"]) == (1, "mixed", 12)
    assert [(s["file"], s["frames"], s["size"]) for s in summary["video_segments"]] == [
        ("overlay.mp4", 6, "96x64"), ("overlay_00001.mp4", 6, "128x72")]
    assert summary["outputs"]["video"] == ["overlay.mp4", "overlay_00001.mp4"]
    assert [read_video(out / name)[2] for name in ("overlay.mp4", "overlay_00001.mp4")] == [(96, 64), (128, 72)]
    masks = sorted((out / "masks").iterdir())
    assert [cv2.imread(str(m), cv2.IMREAD_UNCHANGED).shape for m in masks] == [(64, 96)] * 6 + [(72, 128)] * 6
    assert "changes size at frame 6, from 96x64 to 128x72: the outputs follow it" in err


def test_a_recursive_glob_through_symlink_loops_reads_each_image_once(tiny_checkpoint, tmp_path, capsys):
    root = tmp_path / "images"
    (root / "day2").mkdir(parents=True)
    cv2.imwrite(str(root / "a.jpg"), scene(0, (96, 64)))
    cv2.imwrite(str(root / "day2" / "b.jpg"), scene(5, (96, 64)))
    os.symlink(".", root / "selfdir")  # issue 19: the same image 41 times
    os.symlink("..", root / "day2" / "up")
    code, err, summary = infer(capsys, tiny_checkpoint, f"{root}/**/*.jpg", tmp_path / "run")
    assert code == 0, err
    assert summary["frames"] == 2 and sorted(p.name for p in (tmp_path / "run" / "masks").iterdir()) == ["a.png", "b.png"]


def test_a_slow_time_lapse_keeps_its_timing(tiny_checkpoint, tmp_path, capsys):
    """Issue 19: a 0.2 fps video was written at 30 fps with a warning: 15 s became 0.1 s."""
    slow = write_video(tmp_path / "slow.mp4", frames=4, size=(96, 64), fps=0.2)
    out = tmp_path / "run"
    code, err, summary = infer(capsys, tiny_checkpoint, slow, out)
    assert code == 0 and "no frame rate" not in err, err
    assert summary["source_fps"] == pytest.approx(0.2)
    frames, fps, _ = read_video(out / "overlay.mp4")
    assert len(frames) == 4 and fps == pytest.approx(0.2)  # 20 s of video, as the source
