"""A full disk or an unwritable folder while `infer` writes: every writer made to fail at its N-th
write (ENOSPC, EACCES, EROFS), then a real 8 MB tmpfs filling up where the machine lets us mount
one. Each time: one error line naming the file, the free space and the fix, exit code 5, the video
closed playable up to its last frame, stats.jsonl whole lines only, and summary.json saying why
(or the error line saying it could not be written). docs/reliability.md lists each case."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
from pathlib import Path

import cv2
import pytest
from pipeline_media import read_video, write_video

from dronseg_edge.atomic import storage_failure
from dronseg_edge.cli import main
from dronseg_edge.errors import RuntimeFailure
from dronseg_edge.pipeline import RunOptions, Segmenter, disk_space, run, run_inference, sinks, video_writer

HAVE_AV = video_writer._import_av() is not None
ERRORS = {"ENOSPC": (errno.ENOSPC, "No space left on device", "disk_full"),
          "EACCES": (errno.EACCES, "Permission denied", "unwritable"),
          "EROFS": (errno.EROFS, "Read-only file system", "unwritable")}


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint):
    with Segmenter(tiny_checkpoint, device="cpu") as seg:
        yield seg


def os_error(name: str, path) -> OSError:
    number, text, _ = ERRORS[name]
    return OSError(number, text, str(path))


def read_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def assert_outputs_whole(out: Path, summary: dict) -> None:
    """What the run left is complete: the video plays every frame the summary counts, every stats
    line is whole JSON, every mask decodes, no temporary file is left under any name."""
    if (out / "overlay.mp4").exists():
        assert len(read_video(out / "overlay.mp4")[0]) == summary["video_frames"]
    if (out / "stats.jsonl").exists():
        lines = (out / "stats.jsonl").read_text().splitlines()
        assert [json.loads(line)["frame"] for line in lines] == list(range(len(lines)))
        assert len(lines) == summary["frames_written"]["stats"]
    for folder in ("masks", "color", "overlay"):
        for path in (out / folder).glob("*") if (out / folder).is_dir() else ():
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None, path
    assert not [p for p in out.rglob(".*") if p.is_file()], "temporary files left behind"


def fail_files_under(monkeypatch, folder: str, error: str, at: int) -> None:
    """Make the ``at``-th image file written under ``folder``/ fail with ``error`` (sinks use plain open())."""
    calls = []

    def failing_open(path, *args, **kwargs):
        if Path(path).parent.name == folder:
            calls.append(path)
            if len(calls) >= at:
                raise os_error(error, path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(sinks, "open", failing_open, raising=False)


@pytest.mark.parametrize("folder, error, source", [("masks", "ENOSPC", "video"), ("color", "EACCES", "video"),
                                                   ("overlay", "EROFS", "images")])
def test_an_image_write_that_fails_stops_the_run_with_the_outputs_whole(segmenter, video_path, image_folder, tmp_path,
                                                                        monkeypatch, folder, error, source):
    fail_files_under(monkeypatch, folder, error, at=3 if source == "video" else 2)
    out = tmp_path / "run"
    _, text, stopped = ERRORS[error]
    with pytest.raises(RuntimeFailure, match=rf"cannot write {out}/{folder}/\S+: {text} \([\d.]+ \w+ free\): \w+"):
        run_inference(segmenter, video_path if source == "video" else image_folder,
                      RunOptions(out=out, save_masks=True, save_color=True, progress=False))
    summary = read_summary(out)
    assert summary["stopped"] == stopped and text in summary["error"]
    assert summary["frames_written"][folder] == (2 if source == "video" else 1)
    assert_outputs_whole(out, summary)


@pytest.mark.parametrize("writer", ["PyAVWriter", "OpenCVWriter"])
def test_a_video_write_that_fails_leaves_a_playable_video(segmenter, video_path, tmp_path, monkeypatch, writer):
    if writer == "PyAVWriter" and not HAVE_AV:
        pytest.skip("PyAV is not installed (pip install 'dronseg-edge[video]')")
    cls = getattr(video_writer, writer)
    real_write, calls = cls._write, []

    def write(self, frame):
        calls.append(1)
        if len(calls) == 6:
            raise os_error("ENOSPC", self.path)
        return real_write(self, frame)

    monkeypatch.setattr(cls, "_write", write)
    out = tmp_path / "run"
    with pytest.raises(RuntimeFailure, match=rf"cannot write {out}/overlay.mp4: No space left on device"):
        run_inference(segmenter, video_path, RunOptions(out=out, codec="auto" if writer == "PyAVWriter" else "mp4v",
                                                        progress=False))
    summary = read_summary(out)
    assert summary["stopped"] == "disk_full" and summary["video_frames"] == 5
    assert_outputs_whole(out, summary)


def test_the_video_stops_while_it_can_still_be_finished(segmenter, video_path, tmp_path, monkeypatch):
    """The writer's own check: with too little room for a frame plus the index it stops before FFmpeg
    hits the full disk (after which FFmpeg could not write the index at all)."""
    writes = []
    real_write = video_writer.VideoWriter.write

    def counting_write(self, frame):
        writes.append(1)
        return real_write(self, frame)

    real_free = disk_space.free_bytes
    monkeypatch.setattr(video_writer.VideoWriter, "write", counting_write)
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 50_000 if len(writes) >= 8 else real_free(path))
    out = tmp_path / "run"
    with pytest.raises(RuntimeFailure, match=r"overlay.mp4: No space left on device for another frame and the index \("):
        run_inference(segmenter, video_path, RunOptions(out=out, min_free_mb=0, progress=False))
    summary = read_summary(out)
    assert summary["video_frames"] == 7 and summary["stopped"] == "disk_full"
    assert_outputs_whole(out, summary)


def test_a_stats_line_cut_by_a_full_disk_is_removed(segmenter, video_path, tmp_path, monkeypatch):
    real_write_all, lines = sinks._write_all, []

    def write_all(fd, data):
        lines.append(1)
        if len(lines) == 4:
            os.write(fd, data[: len(data) // 2])  # the disk fills half-way through the line
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(sinks, "_write_all", write_all)
    out = tmp_path / "run"
    with pytest.raises(RuntimeFailure, match=rf"cannot write {out}/stats.jsonl: No space left on device"):
        run_inference(segmenter, video_path, RunOptions(out=out, progress=False))
    summary = read_summary(out)
    assert summary["frames_written"]["stats"] == 3
    assert_outputs_whole(out, summary)  # three whole lines, not three and a half


def test_the_error_line_says_when_summary_json_cannot_be_written_either(tiny_checkpoint, video_path, tmp_path,
                                                                        monkeypatch, capsys):
    fail_files_under(monkeypatch, "masks", "ENOSPC", at=2)

    def no_summary(path, data):
        raise storage_failure(OSError(errno.ENOSPC, "No space left on device"), path)

    monkeypatch.setattr(run, "write_json_atomic", no_summary)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", str(tiny_checkpoint), str(video_path), "--out", str(out), "--device", "cpu", "--save-masks",
              "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert exit_info.value.code == 5 and len(errors) == 1 and "Traceback" not in err
    assert f"cannot write {out}/masks/000001.png: No space left on device" in errors[0]
    assert f"summary.json could not be written either: cannot write {out}/summary.json" in errors[0]
    assert not (out / "summary.json").exists()


def test_below_the_disk_floor_video_and_masks_stop_and_stats_go_on(segmenter, video_path, tmp_path, monkeypatch,
                                                                   caplog):
    checks = []
    real_free = disk_space.free_bytes

    def free_bytes(path):
        if threading.current_thread() is threading.main_thread():  # the run's floor checks, once a frame here
            checks.append(1)
            if len(checks) > 6:
                return 400_000_000
        return real_free(path)

    monkeypatch.setattr(disk_space, "CHECK_EVERY_S", 0.0)
    monkeypatch.setattr(disk_space, "free_bytes", free_bytes)
    out = tmp_path / "run"
    summary = run_inference(segmenter, video_path, RunOptions(out=out, save_masks=True, progress=False)).data
    assert summary["error"] is None and summary["stopped"] == "end"  # the run itself goes on: exit code 0
    assert summary["video_stopped"].startswith(f"disk floor: 400.0 MB free on {out}, below --min-free-mb 500 MB")
    written = summary["frames_written"]
    assert written["stats"] == summary["frames"] == 24 and 0 < written["video"] == written["masks"] < 24
    assert summary["video_frames"] == written["video"]
    assert_outputs_whole(out, summary)
    assert "stats.jsonl continues" in caplog.text and "closed and complete" in caplog.text


def test_below_the_disk_floor_from_the_start_the_video_is_said_not_written(segmenter, video_path, tmp_path,
                                                                          monkeypatch, caplog):
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 400_000_000)
    out = tmp_path / "run"
    summary = run_inference(segmenter, video_path, RunOptions(out=out, progress=False)).data
    assert summary["frames_written"]["video"] == 0 and not list(out.glob("*.mp4"))
    assert "after 0 frames, not written" in caplog.text and "closed and complete" not in caplog.text


# -- a real small file system ------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs mounted for the test (needs root and permission to mount, as in CI); skipped otherwise."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Take all but ``leave`` bytes of ``disk`` with a ballast file."""
    ballast = os.open(disk / "ballast", os.O_WRONLY | os.O_CREAT)
    os.posix_fallocate(ballast, 0, disk_space.free_bytes(disk) - leave)
    os.close(ballast)


def infer_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", *map(str, args)])
    return exit_info.value.code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def grainy_video(tmp_path_factory) -> Path:
    """Grainy frames: their overlays and colour masks take real room on the disk."""
    return write_video(tmp_path_factory.mktemp("grain") / "grain.mp4", frames=150, size=(128, 80), noise=True)


def test_a_real_disk_filling_up_stops_the_video_while_it_still_plays(tiny_checkpoint, grainy_video, small_disk, capsys):
    fill(small_disk, leave=1_400_000)
    out = small_disk / "run"
    code, err = infer_cli(capsys, tiny_checkpoint, grainy_video, "--out", out, "--device", "cpu", "--save-masks",
                          "--save-color", "--min-free", "0", "--no-progress")
    line = one_error_line(err)
    assert code == 5
    assert f"cannot write {out}/overlay.mp4: No space left on device for another frame and the index (1." in line
    assert line.endswith("MB free): free some space or choose another output folder")
    summary = read_summary(out)
    assert summary["stopped"] == "disk_full" and 0 < summary["video_frames"] < 150
    assert_outputs_whole(out, summary)


def test_a_real_full_disk_still_gets_its_summary_from_the_reserve(tiny_checkpoint, grainy_video, small_disk, capsys):
    fill(small_disk, leave=300_000)
    out = small_disk / "run"
    code, err = infer_cli(capsys, tiny_checkpoint, grainy_video, "--out", out, "--device", "cpu", "--no-save-video",
                          "--save-masks", "--save-color", "--min-free", "0", "--no-progress")
    line = one_error_line(err)
    assert code == 5 and "No space left on device (0 B free)" in line  # the disk really was full...
    summary = read_summary(out)  # ...and summary.json was written all the same, into the reserve's room
    assert summary["stopped"] == "disk_full" and "No space left on device" in summary["error"]
    assert_outputs_whole(out, summary)
