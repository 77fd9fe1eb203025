import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pipeline_media import read_video, scene, write_vfr_video

from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.pipeline import RunOptions, Segmenter, run, run_inference
from dronseg_edge.pipeline.sources import FrameRecord, Source, StreamSource


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint):
    with Segmenter(tiny_checkpoint, device="cpu") as seg:
        yield seg


def read_stats(folder):
    return [json.loads(line) for line in (folder / "stats.jsonl").read_text().splitlines()]


def test_video_run_writes_matching_video_masks_stats_and_summary(segmenter, video_path, tmp_path):
    out = tmp_path / "run"
    summary = run_inference(segmenter, str(video_path), RunOptions(out=out, save_masks=True, save_color=True,
                                                                   progress=False))
    inputs, input_fps, input_size = read_video(video_path)
    frames, fps, size = read_video(out / "overlay.mp4")
    assert (len(frames), fps, size) == (len(inputs), input_fps, input_size) == (24, 30.0, (128, 80))
    masks = sorted((out / "masks").iterdir())
    assert [p.name for p in masks[:2]] == ["000000.png", "000001.png"] and len(masks) == 24
    stats = read_stats(out)
    assert [s["frame"] for s in stats] == list(range(24))
    assert stats[6]["timestamp"] == pytest.approx(6 / 30)
    for index in (0, 11, 23):
        mask = cv2.imread(str(masks[index]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, segmenter.predict(inputs[index]).mask)  # the mask of that very frame
        counts = np.bincount(mask.ravel(), minlength=12)
        assert list(stats[index]["shares"].values()) == pytest.approx(list(counts / counts.sum()), abs=1e-6)
    assert len(list((out / "color").iterdir())) == 24
    data = json.loads((out / "summary.json").read_text())
    assert data == summary.data
    assert (data["frames"], data["dropped_frames"], data["corrupt_frames"], data["interrupted"]) == (24, 0, 0, False)
    assert (data["backend"], data["input_size"], data["frame_size"], data["source_kind"]) == ("torch", "96x64", "128x80", "video")
    assert data["outputs"] == {"video": "overlay.mp4", "masks": "masks", "color": "color", "stats": "stats.jsonl"}
    assert set(data["stage_ms"]) == {"decode", "preprocess", "inference", "postprocess", "write"}
    assert data["stage_ms"]["inference"] > 0 and data["fps"] > 0
    assert summary.speed_line().startswith("Speed: decode ") and "per frame at 128x80 (24 frames," in summary.speed_line()


def test_runs_never_overwrite_each_other(segmenter, video_path, tmp_path):
    options = RunOptions(project=tmp_path / "runs", max_frames=2, progress=False)
    first = run_inference(segmenter, video_path, options)
    second = run_inference(segmenter, video_path, options)
    assert (first.out_dir.name, second.out_dir.name) == ("exp", "exp2")
    before = (first.out_dir / "summary.json").read_text()
    with pytest.raises(DronsegError, match="already holds files"):
        run_inference(segmenter, video_path, RunOptions(out=first.out_dir, progress=False))
    assert (first.out_dir / "summary.json").read_text() == before


def test_two_runs_given_the_same_new_out_at_once_never_share_it(segmenter, tiny_checkpoint, video_path, tmp_path,
                                                                 monkeypatch):
    """Run A has checked --out and not yet written; run B (another process, the same command) starts there now.
    Before, B found the folder empty and wrote into it, A then found B's stats.jsonl and, undoing its own
    start, deleted every file in the folder: B's run lost, A's refused."""
    out, other = tmp_path / "run", {}
    prepare = run._prepare_out_dir

    def then_another_run(options):
        made = prepare(options)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        other["run"] = subprocess.run([sys.executable, "-m", "dronseg_edge", "infer", str(tiny_checkpoint), str(video_path),
                                       "--out", str(out), "--device", "cpu", "--no-progress"],
                                      env=env, capture_output=True, text=True, timeout=300)
        return made

    monkeypatch.setattr(run, "_prepare_out_dir", then_another_run)
    summary = run_inference(segmenter, video_path, RunOptions(out=out, save_masks=True, progress=False))
    assert other["run"].returncode == 2, other["run"].stderr
    assert f"{out} is in use by another dronseg-edge process (pid " in other["run"].stderr
    assert summary.data["frames"] == len(read_stats(out)) == len(list((out / "masks").iterdir())) == 24
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4", "stats.jsonl", "summary.json"]  # no lock left


def test_unwritable_output_folder(segmenter, video_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DronsegError, match="cannot create output folder"):
        run_inference(segmenter, video_path, RunOptions(out=blocker / "run", progress=False))
    with pytest.raises(DronsegError, match="--out .*file is a file: pass a folder"):
        run_inference(segmenter, video_path, RunOptions(out=blocker, progress=False))


def test_folder_run_writes_overlay_images_and_masks_at_each_size(segmenter, image_folder, tmp_path):
    out = tmp_path / "run"
    summary = run_inference(segmenter, image_folder, RunOptions(out=out, progress=False))
    sizes = {p.stem: cv2.imread(str(p)).shape[:2] for p in (out / "overlay").iterdir()}
    assert sizes == {"a": (64, 96), "b": (90, 120), "c": (48, 64)}
    masks = {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape for p in (out / "masks").iterdir()}
    assert masks == sizes  # masks are on by default for images
    stats = read_stats(out)
    assert [s["file"].rsplit("/", 1)[-1] for s in stats] == ["a.jpg", "b.png", "c.png"]
    assert stats[0]["timestamp"] is None
    assert (summary.data["frame_size"], summary.data["corrupt_frames"], summary.data["frames"]) == ("mixed", 1, 3)
    assert not (out / "overlay.mp4").exists()


def test_contact_sheet_holds_a_captioned_thumbnail_per_image(segmenter, image_folder, tmp_path):
    from dronseg_edge.pipeline.sinks import ContactSheetSink

    out = tmp_path / "run"
    summary = run_inference(segmenter, image_folder, RunOptions(out=out, progress=False, save_video=False,
                                                                contact_sheet=True))
    sheet = cv2.imread(str(out / "contact_sheet.jpg"))
    width = ContactSheetSink.THUMB_WIDTH
    # three images in one row: three 240 px thumbnails side by side, captions above the tallest (120x90 -> 240x180)
    assert sheet.shape[1] == 3 * width and sheet.shape[0] == 180 + 22
    assert summary.data["outputs"]["contact_sheet"] == "contact_sheet.jpg"
    assert not (out / "overlay").exists()


def test_stride_and_max_frames(segmenter, video_path, tmp_path):
    out = tmp_path / "run"
    summary = run_inference(segmenter, video_path, RunOptions(out=out, stride=3, max_frames=5, progress=False))
    assert [s["frame"] for s in read_stats(out)] == [0, 3, 6, 9, 12] and summary.frames == 5
    frames, fps, _ = read_video(out / "overlay.mp4")
    assert len(frames) == summary.data["video_frames"] == 13 and fps == 30.0  # the source's timeline, 0..12
    assert np.abs(frames[1].astype(int) - frames[2]).mean() < 2  # a skipped frame repeats the last overlay


def test_a_run_stopped_before_the_sources_end_does_not_say_it_ended(segmenter, video_path, tmp_path):
    # the reader reads ahead: it had met the end of the 24-frame file when --max-frames 20 stopped the run
    data = run_inference(segmenter, video_path, RunOptions(out=tmp_path / "run", max_frames=20, progress=False)).data
    assert (data["stopped"], data["source_end"]) == ("max_frames", None)
    data = run_inference(segmenter, video_path, RunOptions(out=tmp_path / "all", progress=False)).data
    assert (data["stopped"], data["source_end"]) == ("end", "ended")


def test_stride_video_runs_to_the_sources_last_frame(segmenter, video_path, tmp_path):
    out = tmp_path / "run"
    summary = run_inference(segmenter, video_path, RunOptions(out=out, stride=5, progress=False))
    assert [s["frame"] for s in read_stats(out)] == [0, 5, 10, 15, 20]
    frames, _, _ = read_video(out / "overlay.mp4")
    assert len(frames) == summary.data["video_frames"] == 24  # 21..23 repeat frame 20's overlay
    assert np.abs(frames[20].astype(int) - frames[23]).mean() < 2


def test_stride_stream_that_ends_runs_to_its_last_frame(segmenter, video_path, tmp_path):
    """A finite stream (a pipe, an HTTP or file:// URL) with --stride: the overlay video ended at the last frame
    segmented (85 frames of a 90-frame clip piped in with --stride 7, where the file itself gives 90)."""
    summary = run_inference(segmenter, f"file://{video_path}", RunOptions(out=tmp_path / "run", stride=5, live=False,
                                                                          progress=False))
    assert summary.data["source_end"] == "ended" and [s["frame"] for s in read_stats(summary.out_dir)][-1] == 20
    assert summary.data["video_frames"] == len(read_video(summary.out_dir / "overlay.mp4")[0]) == 24


def test_stride_video_of_a_variable_rate_file_runs_to_the_sources_last_frames_time(segmenter, tmp_path):
    """8 frames 1/60 s apart, then 4 at 0.1 s: with --stride 4 the frames after the last one segmented were filled
    by their count (3), not their time, and the video ended 0.2 s before the source's, and before the unstrided run's."""
    pytest.importorskip("av", reason="PyAV writes the variable-rate clip (pip install 'dronseg-edge[video]')")
    write_vfr_video(tmp_path / "vfr.mp4", ticks=(1500,) * 8 + (9000,) * 4)
    every, strided = (run_inference(segmenter, tmp_path / "vfr.mp4", RunOptions(out=tmp_path / f"s{stride}", stride=stride,
                                                                                progress=False)) for stride in (1, 4))
    assert [s["frame"] for s in read_stats(strided.out_dir)] == [0, 4, 8]
    assert len(read_video(strided.out_dir / "overlay.mp4")[0]) == strided.data["video_frames"] == every.data["video_frames"]


def test_max_duration_counts_seconds_of_the_video_and_segments_split_it(segmenter, video_path, tmp_path):
    out = tmp_path / "run"
    summary = run_inference(segmenter, video_path, RunOptions(out=out, max_duration=0.5, segment_s=0.2, progress=False))
    data = summary.data
    assert (data["frames"], data["stopped"], data["max_duration"]) == (15, "max_duration", 0.5)  # 0.5 s at 30 fps
    names = ["overlay_00000.mp4", "overlay_00001.mp4", "overlay_00002.mp4"]
    assert data["outputs"]["video"] == names and [s["file"] for s in data["video_segments"]] == names
    assert [len(read_video(out / name)[0]) for name in names] == [s["frames"] for s in data["video_segments"]] == [6, 6, 3]
    assert [s["start_s"] for s in data["video_segments"]] == [0.0, 0.2, 0.4]
    assert not (out / "overlay.mp4").exists()


@pytest.mark.parametrize("limit", [0.5, 0.7])
def test_a_strided_video_stopped_by_max_duration_runs_to_the_limit(segmenter, video_path, tmp_path, limit):
    """--stride 4 --max-duration-s 0.5: the overlay video ended at frame 12 (13 frames where the unstrided run's has 15);
    at 0.7 s no frame after the limit is segmented, and it ran on to the source's end (24 frames, not 21)."""
    runs = [run_inference(segmenter, video_path, RunOptions(out=tmp_path / f"s{stride}", stride=stride, max_duration=limit,
                                                            progress=False)) for stride in (1, 4)]
    assert [len(read_video(run.out_dir / "overlay.mp4")[0]) for run in runs] == [round(limit * 30)] * 2


def test_a_stream_without_a_rate_is_placed_in_the_video_by_its_frames_times(segmenter, tmp_path):
    """A stream that reports no rate (live MJPEG) at 10 fps: its video, at 30 fps, holds each frame 0.1 s, not 1/30 s."""

    class TenFps(Source):
        kind = "stream"

        def frames(self, stride=1):
            yield from (FrameRecord(i, i / 10, scene(i, (96, 64)), self.name, f"{i:06d}") for i in range(4))

    summary = run_inference(segmenter, TenFps("http://cam/mjpg"), RunOptions(out=tmp_path / "run", live=False, progress=False))
    assert summary.data["video_frames"] == 10 and summary.data["source_fps"] is None  # 0.3 s at 30 fps, and the last


class StallingCapture:
    """Two frames, then reads that block for ``block_s`` each and fail, as a stalled stream's do."""

    def __init__(self, block_s: float):
        self.block_s, self.reads = block_s, 0

    def read(self):
        self.reads += 1
        if self.reads <= 2:
            return True, scene(self.reads, (96, 64))
        time.sleep(self.block_s)
        return False, None

    def get(self, prop):
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        pass


def test_max_duration_stops_a_stalled_live_stream_on_time(segmenter, tmp_path):
    opens = iter([StallingCapture(block_s=0.2)])
    source = StreamSource("rtsp://camera/9", reconnect_s=30.0, open_capture=lambda: next(opens, None))
    started = time.monotonic()
    summary = run_inference(segmenter, source, RunOptions(out=tmp_path / "run", max_duration=1.0, progress=False))
    assert time.monotonic() - started < 5  # not the 30 s of --reconnect-s
    assert (summary.data["stopped"], summary.data["error"]) == ("max_duration", None)
    # Live: when the second frame arrives before the first is taken, the first is dropped as stale.
    assert summary.frames + summary.data["dropped_frames"] == 2 and summary.frames >= 1


class SlowToStart(StallingCapture):
    """A stream whose first frame takes ``block_s``, then one comes every 20 ms."""

    def read(self):
        self.reads += 1
        time.sleep(self.block_s if self.reads == 1 else 0.02)
        return True, scene(self.reads % 5, (96, 64))


def test_max_duration_of_a_stream_counts_from_its_first_frame(segmenter, tmp_path):
    """The deadline's timer started with the run: a stream whose first frame took 1 s gave 0.5 s of --max-duration-s 1.5."""
    capture = SlowToStart(block_s=1.0)
    source = StreamSource("rtsp://camera/3", reconnect_s=30.0, open_capture=lambda: capture)
    summary = run_inference(segmenter, source, RunOptions(out=tmp_path / "run", max_duration=2.5, progress=False))
    times = [s["timestamp"] for s in read_stats(summary.out_dir)]  # from the start the span was at most 1.5 s
    assert summary.data["stopped"] == "max_duration" and times[-1] - times[0] > 1.6, times


def test_max_duration_ends_a_stream_whose_results_reader_stopped_reading(segmenter, tmp_path, monkeypatch):
    """--results - to a reader that stopped reading without exiting: its writes block, its queue fills, and the run
    waited for room past a stream's --max-duration-s until a signal came (37 s of --max-duration-s 8, then SIGTERM)."""
    from dronseg_edge.pipeline.results_sink import ResultsSink

    release = threading.Event()
    monkeypatch.setattr(ResultsSink, "_write", lambda self, result: release.wait())
    threading.Timer(60.0, release.set).start()  # only so that the old code's hang ends
    source = StreamSource("rtsp://camera/5", reconnect_s=30.0, open_capture=lambda: SlowToStart(block_s=0.0))
    try:
        summary = run_inference(segmenter, source, RunOptions(out=tmp_path / "run", max_duration=1.0, progress=False,
                                                              results=str(tmp_path / "r.jsonl")))
        stuck = not release.is_set()
    finally:
        release.set()
    assert stuck and summary.data["stopped"] == "max_duration" and summary.data["results"]["lines"] == 0


def test_live_mode_drops_frames_when_inference_is_slower_than_the_source(segmenter, video_path, tmp_path, monkeypatch):
    real_infer = segmenter.backend._infer

    def slow_infer(batch):
        time.sleep(0.1)  # 10 fps against a 30 fps source
        return real_infer(batch)

    monkeypatch.setattr(segmenter.backend, "_infer", slow_infer)
    out = tmp_path / "run"
    summary = run_inference(segmenter, video_path, RunOptions(out=out, live=True, progress=False))
    data = summary.data
    assert data["live"] and data["dropped_frames"] > 5
    assert data["frames"] + data["dropped_frames"] == 24
    indices = [s["frame"] for s in read_stats(out)]
    assert indices == sorted(indices) and len(indices) == data["frames"]
    frames, _, _ = read_video(out / "overlay.mp4")
    assert len(frames) == data["video_frames"] == indices[-1] - indices[0] + 1  # plays in real time


def test_a_local_file_as_a_live_stream(segmenter, video_path, tmp_path):
    summary = run_inference(segmenter, f"file://{video_path}", RunOptions(out=tmp_path / "run", max_frames=10,
                                                                         progress=False))
    data = summary.data
    assert data["source_kind"] == "stream" and data["live"] and 1 <= summary.frames <= 10
    assert summary.frames + data["dropped_frames"] == 24 or summary.frames == 10  # live: stale frames dropped
    assert (data["source_end"], data["stopped"]) == ("ended", "end") or data["stopped"] == "max_frames"
    assert data["outputs"]["video"] == "overlay.mp4"


class DroppingCapture:
    def __init__(self, frames, fps: float = 25.0):
        self.left, self.fps = frames, fps

    def read(self):
        self.left -= 1
        return (True, scene(self.left, (96, 64))) if self.left >= 0 else (False, None)

    def get(self, prop):
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0  # live: no frame count

    def release(self):
        pass


def test_a_stream_reopened_at_another_rate_goes_on_in_a_video_file_at_it(segmenter, tmp_path):
    """A TCP stream at 30 fps that came back at 10 fps: the frames after it were written at 30 fps too, so the overlay
    video played that part 3x fast (206 frames, 6.9 s of video for 10.4 s of stream), and nothing said why."""
    opens = iter([DroppingCapture(6, fps=25.0), DroppingCapture(3, fps=10.0)])
    source = StreamSource("tcp://127.0.0.1:5000", open_capture=lambda: next(opens, None))
    summary = run_inference(segmenter, source, RunOptions(out=tmp_path / "run", live=False, max_frames=9, progress=False))
    data = summary.data
    assert (data["frames"], data["reconnects"], data["rate_changes"], data["size_changes"]) == (9, 1, 1, 0)
    assert [(s["file"], s["frames"], s["start_s"]) for s in data["video_segments"]] == [
        ("overlay.mp4", 6, 0.0), ("overlay_00001.mp4", 3, 0.24)]  # frame 6 at 25 fps
    assert [read_video(summary.out_dir / s["file"])[1] for s in data["video_segments"]] == [25.0, 10.0]


def test_lost_stream_finalises_outputs_then_reports_the_error(segmenter, tmp_path):
    opens = iter([DroppingCapture(6)])
    source = StreamSource("rtsp://camera/7", reconnect_s=0.5, open_capture=lambda: next(opens, None))
    out = tmp_path / "run"
    with pytest.raises(RuntimeFailure, match="could not be reopened within 0.5 s"):
        run_inference(segmenter, source, RunOptions(out=out, live=False, progress=False))
    data = json.loads((out / "summary.json").read_text())
    assert data["frames"] == 6 and "could not be reopened" in data["error"]
    assert (data["stopped"], data["source_end"]) == ("source_lost", "lost")
    frames, _, _ = read_video(out / "overlay.mp4")
    assert len(frames) == 6 and len(read_stats(out)) == 6


def test_a_failing_write_stops_the_run_with_one_line(segmenter, video_path, tmp_path, monkeypatch):
    import dronseg_edge.pipeline.sinks as sinks

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(sinks, "open", full_disk, raising=False)  # the mask PNGs' own file writes
    out = tmp_path / "run"
    with pytest.raises(RuntimeFailure, match=r"cannot write .*000000.png: No space left on device \(.* free\)"):
        run_inference(segmenter, video_path, RunOptions(out=out, save_masks=True, progress=False))
    data = json.loads((out / "summary.json").read_text())
    assert data["error"] and data["stopped"] == "disk_full" and (out / "overlay.mp4").exists()
    assert list((out / "masks").iterdir()) == []  # no temporary file left behind


def test_a_bug_in_a_sinks_close_is_raised_after_the_summary(segmenter, video_path, tmp_path, monkeypatch):
    from dronseg_edge.pipeline.sinks import StatsSink

    monkeypatch.setattr(StatsSink, "close", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # not a run that ended well: exit 0 with a bug in summary.json
        run_inference(segmenter, video_path, RunOptions(out=tmp_path / "run", max_frames=1, progress=False))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped"] == "error"


def test_confidence_maps_and_a_class_filter_in_a_run(segmenter, video_path, tmp_path):
    out = tmp_path / "run"
    summary = run_inference(segmenter, video_path, RunOptions(out=out, save_conf=True, classes=("sky", "Road"),
                                                              save_masks=True, max_frames=3, progress=False))
    stats = read_stats(out)
    assert [p.name for p in sorted((out / "conf").iterdir())] == ["000000.png", "000001.png", "000002.png"]
    for index, line in enumerate(stats):
        conf = cv2.imread(str(out / "conf" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / "masks" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert conf.shape == mask.shape == (80, 128) and 0 < conf.min() and conf.max() <= 255
        assert line["low_confidence"] == pytest.approx((conf < 128).mean(), abs=1e-6)
        assert set(np.unique(mask)) <= {10, 11, 255} and set(line["shares"]) == {"road", "sky"}
        assert line["shares"]["sky"] == pytest.approx((mask == 11).mean(), abs=1e-6)
    data = summary.data
    assert (data["classes"], data["low_confidence_below"], data["outputs"]["conf"]) == (["road", "sky"], 0.5, "conf")
    assert data["tile"]["mode"] == "off" and data["tiled_frames"] == 0  # the default: never tiled


def test_a_class_the_model_lacks_fails_before_the_run_folder(segmenter, video_path, tmp_path):
    with pytest.raises(DronsegError, match="--classes ufo: tiny.pt has no such class; its classes are background"):
        run_inference(segmenter, video_path, RunOptions(out=tmp_path / "run", classes=("car", "ufo"), progress=False))
    assert not (tmp_path / "run").exists()


def test_a_video_of_another_size_than_a_frames_graph_fails_before_the_run_folder(video_path, tmp_path):
    # the graph refused the first frame: exit 2, with a run folder holding an empty stats.jsonl and summary.json
    from testkit import FakeBackend

    graph = FakeBackend("frames.onnx", io="frames", head="argmax", dynamic=False, batch=1, source_size=(96, 64))
    with pytest.raises(DronsegError, match=r"frames.onnx was exported for 1x64x96x3 frames, got 1x80x128x3: re-export "
                                           r"with --source-size 128x80"):
        run_inference(Segmenter(graph), video_path, RunOptions(out=tmp_path / "run", progress=False))
    assert not (tmp_path / "run").exists()


def test_images_of_another_size_than_a_frames_graph_fail_before_the_run_folder(tmp_path):
    # the first image's size (upright by its EXIF orientation, as it is read) is checked, as a video's header is
    from PIL import Image
    from testkit import FakeBackend

    graph = FakeBackend("frames.onnx", io="frames", head="argmax", dynamic=False, batch=1, source_size=(96, 64))
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.jpg"), np.zeros((80, 128, 3), np.uint8))
    for source in (tmp_path / "imgs", tmp_path / "imgs" / "a.jpg"):
        with pytest.raises(DronsegError, match=r"exported for 1x64x96x3 frames, got 1x80x128x3: re-export"):
            run_inference(Segmenter(graph), source, RunOptions(out=tmp_path / "run", progress=False))
        assert not (tmp_path / "run").exists()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64x96, read upright as 96x64: the graph's size
    Image.fromarray(np.zeros((96, 64, 3), np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    summary = run_inference(Segmenter(graph), tmp_path / "turned.jpg", RunOptions(out=tmp_path / "run", progress=False))
    assert summary.frames == 1


def test_a_tiled_run_counts_its_tiled_frames(tiny_checkpoint, video_path, tmp_path):
    with Segmenter(tiny_checkpoint, device="cpu", tile="on") as seg:
        summary = run_inference(seg, video_path, RunOptions(out=tmp_path / "run", max_frames=2, save_masks=True,
                                                            progress=False))
    assert summary.data["tiled_frames"] == 2 and summary.data["tile"]["window"] == [96, 64]
    assert cv2.imread(str(tmp_path / "run" / "masks" / "000001.png"), cv2.IMREAD_UNCHANGED).shape == (80, 128)


def test_bad_options():
    for options, message in ((dict(alpha=1.5), "--alpha"), (dict(stride=0), "--stride"), (dict(classes=()), "--classes"),
                             (dict(max_frames=0), "--max-frames"), (dict(reconnect_s=0), "--reconnect-s"),
                             (dict(max_duration=0), "--max-duration"), (dict(segment_s=-1), "--segment-s"),
                             (dict(min_free_mb=-5), "--min-free")):
        with pytest.raises(DronsegError, match=message):
            RunOptions(**options)  # checked when made: a RunOptions is always a valid one


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")
@pytest.mark.gpu
def test_gpu_video_run_matches_the_input(trained_checkpoint, video_path, tmp_path):
    with Segmenter(trained_checkpoint, device="cuda", half=True) as seg:
        summary = run_inference(seg, video_path, RunOptions(out=tmp_path / "run", save_masks=True, progress=False))
    frames, fps, size = read_video(tmp_path / "run" / "overlay.mp4")
    assert (len(frames), fps, size) == (24, 30.0, (128, 80))
    assert len(list((tmp_path / "run" / "masks").iterdir())) == len(read_stats(tmp_path / "run")) == 24
    assert "CUDA graph" in summary.data["provider"] and summary.data["device"].startswith("NVIDIA")


def test_a_list_of_frames_is_refused_as_a_source_in_one_line():
    from dronseg_edge.pipeline.source_spec import open_source
    with pytest.raises(DronsegError, match="a list is not a source.*Segmenter.stream"):  # was OSError: File name too long
        open_source([np.zeros((64, 64, 3), np.uint8)] * 40)
