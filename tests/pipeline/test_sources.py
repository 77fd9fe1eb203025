import contextlib
import itertools
import logging
import os
import shutil
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from fake_captures import CaptureRecorder
from fake_captures import FakeCapture as ScriptedCapture
from pipeline_media import (read_video, rotate_video, scene, write_clip_with_longer_audio, write_ts_with_size_change,
                            write_vfr_video, write_video)

from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.pipeline import sources
from dronseg_edge.pipeline.capture_options import CUDA_ACCELERATION, ENV_VAR, CaptureOptions, acceleration_names
from dronseg_edge.pipeline.source_spec import open_source
from dronseg_edge.pipeline.sources import (CameraSource, FrameRecord, FramesSource, ImageSource, StreamSource,
                                           VideoSource)


def test_video_source_yields_every_frame_with_index_timestamp_and_name(video_path):
    source = open_source(str(video_path))
    assert isinstance(source, VideoSource) and not source.live_default
    assert (source.fps, source.frame_count, source.size) == (30.0, 24, (128, 80))
    records = list(source.frames())
    source.close()
    expected, _, _ = read_video(video_path)
    assert [r.index for r in records] == list(range(24))
    assert [r.name for r in records][:2] == ["000000", "000001"]
    assert records[3].timestamp == pytest.approx(3 / 30)
    assert all(r.frame.dtype == np.uint8 and r.frame.shape == (80, 128, 3) for r in records)
    assert all(np.array_equal(r.frame, e) for r, e in zip(records, expected))
    assert source.corrupt == 0


def test_video_stride_keeps_source_indices(video_path):
    with open_source(video_path) as source:
        records = list(source.frames(stride=5))
    assert [r.index for r in records] == [0, 5, 10, 15, 20]
    assert records[1].timestamp == pytest.approx(5 / 30)


def test_a_strided_frames_decode_time_counts_the_frames_decoded_and_skipped_before_it(video_path, monkeypatch):
    """--stride 4 decodes every frame (grab) and segments one in 4: summary.json's stage_ms.decode gave the read of
    the segmented frame only, a quarter of what the decoder spent per segmented frame."""
    clock = iter(range(10_000))  # each read or grab takes one second
    monkeypatch.setattr(sources, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    records = list(VideoSource(video_path).frames(stride=4))
    assert [r.index for r in records] == [0, 4, 8, 12, 16, 20]
    assert [r.decode_ms for r in records] == [1000.0] + [4000.0] * 5


def test_variable_frame_rate_timestamps_come_from_the_container(tmp_path):
    pytest.importorskip("av", reason="PyAV writes the variable-rate clip (pip install 'dronseg-edge[video]')")
    expected = write_vfr_video(tmp_path / "vfr.mp4", ticks=(3000, 1500, 6000))  # 1/30, 1/60, 1/15 s
    with open_source(tmp_path / "vfr.mp4") as source:
        records = list(source.frames())
        strided = [r.timestamp for r in VideoSource(tmp_path / "vfr.mp4").frames(stride=4)]
    assert [r.timestamp for r in records] == pytest.approx(expected, abs=1e-3)  # not index / fps
    assert strided == pytest.approx(expected[::4], abs=1e-3)


def test_a_clock_that_goes_back_between_joined_recordings_goes_on_at_the_nominal_rate(tmp_path):
    pytest.importorskip("av", reason="PyAV writes the MPEG-TS parts (pip install 'dronseg-edge[video]')")
    late, early = (write_ts_with_size_change(tmp_path / f"{first}.ts", ((96, 64),), 6, 30, first=first).read_bytes()
                   for first in (3000, 0))  # 100 s, then 0 s: FFmpeg reads the second part 26.5 h on (a 33-bit wrap)
    (tmp_path / "joined.ts").write_bytes(late + early)
    for capture in (None, CaptureOptions(hw_decode=True)):  # PyAV, and OpenCV's reader
        with VideoSource(tmp_path / "joined.ts", capture) as source:
            times = [r.timestamp for r in source.frames()]
        # The nominal rate is the reader's: 30, or OpenCV 4.8's 29.58 (FFmpeg's r_frame_rate of this file, 355/12)
        assert times == pytest.approx([i / 30 for i in range(6)] + [6 / source.fps + i / 30 for i in range(6)], abs=1e-3)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg tool sets the rotation (apt-get install ffmpeg)")
def test_rotated_video_frames_come_upright(video_path, tmp_path):
    rotated = rotate_video(video_path, tmp_path / "rotated.mp4", 90)  # a 128x80 clip shown as 80x128
    with open_source(rotated) as source:
        records = list(source.frames())
    expected, _, _ = read_video(video_path)
    assert source.size == (80, 128) and len(records) == 24
    assert all(r.frame.shape == (128, 80, 3) for r in records)
    assert np.array_equal(records[3].frame, cv2.rotate(expected[3], cv2.ROTATE_90_COUNTERCLOCKWISE))  # as players show it


def test_damaged_frames_mid_video_are_skipped_and_counted(tmp_path, caplog):
    # MJPEG frames are independent JPEGs: damaging bytes in the middle breaks a few frames only.
    path = write_video(tmp_path / "clip.avi", frames=60, size=(96, 64), fourcc="MJPG")
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + len(data) // 6, 50):
        data[offset:offset + 20] = b"\xff" * 20
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"), open_source(damaged) as source:
        records = list(source.frames())
    assert 0 < source.corrupt < 60
    assert len(records) + source.corrupt == 60
    assert records[-1].index > records[0].index + len(records) - 1  # indices keep their place in time
    assert "damaged frame" in caplog.text


def test_video_that_cannot_be_opened_or_is_empty(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(DronsegError, match="cannot be opened"):
        open_source(text)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DronsegError, match="no frames"):
        open_source(empty)


def test_a_stream_whose_frames_are_over_max_pixels_is_refused_at_the_first(video_path):
    """`infer M file:///big.mp4` (or a pipe, or a URL) of 12000x12000 frames took 5.5 GB: streams had no limit."""
    frames = open_source(f"file://{video_path}", max_pixels=1000).frames()
    with pytest.raises(DronsegError) as error:
        next(frames)
    assert str(error.value) == (f"stream file://{video_path} is 128x80 (10240 pixels), above the 1000 pixels limit (damaged, "
                                "hostile, or larger than expected): raise --max-pixels if it is a genuine stream")


def test_video_with_zero_frames(tmp_path):
    path = tmp_path / "zero.mp4"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (96, 64)).release()
    with pytest.raises(DronsegError, match="no frames|cannot be opened"):
        source = open_source(path)
        list(source.frames())
    empty_avi = tmp_path / "zero.avi"  # opens, with a size in its header: its first read fails
    cv2.VideoWriter(str(empty_avi), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (96, 64)).release()
    with pytest.raises(DronsegError, match="zero.avi has no readable frames: check it plays"):
        list(open_source(empty_avi).frames())



def test_a_video_whose_frames_are_over_max_pixels_is_refused_before_they_are_read(video_path, tmp_path):
    """A 423 KB H.264 file of 12000x12000 frames took `infer` to 5.5 GB; a TS that grew to it mid-way, 4.1 GB."""
    with pytest.raises(DronsegError) as error:
        open_source(video_path, max_pixels=1000)
    assert f"video {video_path} is 128x80 (10240 pixels), above the 1000 pixels limit" in str(error.value)
    assert str(error.value).endswith("raise --max-pixels if it is a genuine video")
    feed = write_ts_with_size_change(tmp_path / "feed.ts", sizes=((96, 64), (128, 72)), frames=3)
    frames = open_source(feed, max_pixels=96 * 64).frames()
    assert [next(frames).frame.shape for _ in range(3)] == [(64, 96, 3)] * 3
    with pytest.raises(DronsegError, match=r"video .*feed.ts from frame 3 on is 128x72 \(9216 pixels\), above the 6144 pixels limit"):
        next(frames)

def test_folder_keeps_each_size_and_skips_non_images_and_broken_files(image_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        source = open_source(image_folder)
        records = list(source.frames())
    assert isinstance(source, ImageSource)
    assert [r.name for r in records] == ["a", "b", "c"]
    assert [r.frame.shape for r in records] == [(64, 96, 3), (90, 120, 3), (48, 64, 3)]  # grey -> 3 channels
    assert all(r.timestamp is None for r in records)
    assert records[1].source.endswith("b.png")
    assert source.corrupt == 1
    assert "non-image" in caplog.text and "notes.txt" in caplog.text
    assert "d.jpg" in caplog.text


def test_glob_and_single_image(image_folder):
    source = open_source(str(image_folder / "*.png"))
    assert [r.name for r in source.frames()] == ["b", "c"]
    single = open_source(image_folder / "a.jpg")
    (record,) = list(single.frames())
    assert record.name == "a" and record.index == 0


def test_folder_without_images_and_missing_paths(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(DronsegError, match="holds no images"):
        open_source(tmp_path)
    with pytest.raises(DronsegError, match="does not exist"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(DronsegError, match="matches no files"):
        open_source(str(tmp_path / "*.jpg"))
    with pytest.raises(DronsegError, match="not supported"):
        open_source("ftp://example.com/video")


def test_unreadable_single_image(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nothing")
    with pytest.raises(DronsegError, match="can be decoded"):
        list(open_source(broken).frames())


def test_same_stems_get_distinct_names(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "frame.png"), scene(0, (32, 32)))
    names = [r.name for r in open_source(str(tmp_path / "*" / "frame.png")).frames()]
    assert len(set(names)) == 2


def test_a_bool_is_not_a_camera_index():
    for spec in (True, False):  # True opened camera 1, False camera 0: a bool is an int
        with pytest.raises(DronsegError, match="source: a bool is not a source"):
            open_source(spec)


def test_camera_index_that_does_not_exist():
    with pytest.raises(RuntimeFailure, match="camera 57 cannot be opened") as error:
        open_source("57")
    assert error.value.exit_code == 5  # it may not be up yet: a supervisor retries


def test_local_file_opened_as_a_stream_is_live_and_ends_at_its_declared_length(video_path):
    source = open_source(f"file://{video_path}", reconnect_s=5)
    assert isinstance(source, StreamSource) and source.live_default and source.frame_count == 24
    started = time.monotonic()
    records = list(source.frames())
    source.close()
    assert len(records) == 24 and all(r.frame.shape == (80, 128, 3) for r in records)
    assert (source.end, source.reconnects) == ("ended", 0)  # not reopened: that would replay it
    assert time.monotonic() - started < 4  # and no wait for --reconnect-s
    assert records[-1].timestamp >= records[0].timestamp


class FakeCapture:
    """A capture that delivers ``frames`` frames and then fails, like a dropped RTSP connection.
    ``fail_after_s``: the failing read first blocks that long, as FFmpeg's read timeout does."""

    def __init__(self, frames: int, fail_after_s: float = 0.0):
        self.left, self.fail_after_s = frames, fail_after_s

    def read(self):
        if self.left <= 0:
            time.sleep(self.fail_after_s)
            return False, None
        self.left -= 1
        return True, scene(self.left, (32, 32))

    def get(self, prop):
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0  # live: no frame count

    def release(self):
        pass


def opener(*captures):
    queue = iter(captures)
    return lambda: next(queue, None)


@pytest.mark.parametrize("fourcc, count, fps", [("MJPG", 0.0, None), ("H264", 0.0, 25.0), ("MJPG", 240.0, 25.0)])
def test_a_live_mjpeg_streams_rate_is_unknown(fourcc, count, fps):
    """An HTTP camera's MJPEG (multipart) stream at 10 fps reported FFmpeg's default 25 fps, and the overlay video
    written at 25 played 2.5x fast: live MJPEG carries no rate (an MJPEG file, with a frame count, has one)."""
    capture = FakeCapture(1)
    capture.get = lambda prop: {cv2.CAP_PROP_FPS: 25.0, cv2.CAP_PROP_FRAME_COUNT: count,
                                cv2.CAP_PROP_FOURCC: float(cv2.VideoWriter.fourcc(*fourcc))}.get(prop, 0.0)
    assert StreamSource("http://cam/video.mjpg", open_capture=opener(capture)).fps == fps


def test_a_strided_streams_decode_time_counts_the_frames_read_and_skipped_before_it(monkeypatch):
    """A stream's or camera's --stride N reads (decodes) every frame: stage_ms.decode gave the segmented frame's read
    only, 1/N of what reading took per segmented frame (as a video file's did)."""
    clock = iter(range(10_000))  # each read takes one second
    monkeypatch.setattr(sources, "time", SimpleNamespace(perf_counter=lambda: float(next(clock)), monotonic=time.monotonic))
    frames = StreamSource("rtsp://camera/4", open_capture=opener(FakeCapture(13))).frames(stride=4)
    records = [next(frames) for _ in range(4)]
    assert [(r.index, r.decode_ms) for r in records] == [(0, 1000.0), (4, 4000.0), (8, 4000.0), (12, 4000.0)]


def test_stream_reconnects_with_backoff_and_then_gives_up():
    source = StreamSource("rtsp://camera/1", reconnect_s=1.0,
                          open_capture=opener(FakeCapture(3), None, FakeCapture(2)))  # connect, drop, fail, reopen
    records = []
    with pytest.raises(RuntimeFailure, match="could not be reopened within 1 s: .*--reconnect-s") as error:
        for record in source.frames():
            records.append(record)
    assert len(records) == 5
    assert (source.reconnects, source.end, error.value.exit_code) == (1, "lost", 5)
    assert "the connection closed" in str(error.value)  # RTSP carries cameras: a close is a loss too


def test_a_stream_reopened_at_another_size_counts_the_change(caplog):
    """A camera or stream that came back from a reconnect at another resolution: the outputs followed it (a new video
    file), but summary.json's size_changes said 0 and no line said why the video was split."""
    reopened = opener(ScriptedCapture(2, (32, 24)), ScriptedCapture(3, (48, 32)))  # drop, come back at 48x32
    source = StreamSource("rtsp://camera/1", open_capture=reopened)
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        records = list(itertools.islice(source.frames(), 5))
    assert [r.frame.shape[:2] for r in records] == [(24, 32)] * 2 + [(32, 48)] * 3
    assert (source.reconnects, source.size_changes, source.size) == (1, 1, (48, 32))
    assert "changes size at frame 2, from 32x24 to 48x32" in caplog.text


def test_a_stream_reopened_at_another_rate_counts_the_change(caplog):
    """A stream that came back from a reconnect at another frame rate kept its first rate: its overlay video played the
    rest too fast or too slow, and nothing counted or said it. Its frames now carry the rate they come at."""
    slower = ScriptedCapture(3)
    slower.get = lambda prop: 10.0 if prop == cv2.CAP_PROP_FPS else 0.0
    source = StreamSource("tcp://127.0.0.1:5000", open_capture=opener(ScriptedCapture(2), slower))
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        records = list(itertools.islice(source.frames(), 5))
    assert [r.fps for r in records] == [30.0] * 2 + [10.0] * 3
    assert (source.reconnects, source.rate_changes, source.size_changes, source.fps) == (1, 1, 0, 10.0)
    assert "changes rate at frame 2, from 30 to 10 fps" in caplog.text
    assert "stream tcp://127.0.0.1:5000 reopened after" in caplog.text


def test_an_http_stream_its_server_closes_ends_without_an_error(caplog):
    source = StreamSource("http://127.0.0.1/live.ts", reconnect_s=0.3, open_capture=opener(FakeCapture(4)))
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        records = list(source.frames())
    assert len(records) == 4 and source.end == "ended"
    assert "ended after 4 frames" in caplog.text and "--reconnect-s" not in caplog.text


def test_an_http_stream_that_comes_back_within_reconnect_s_goes_on():
    source = StreamSource("http://127.0.0.1/live.ts", reconnect_s=2.0,
                          open_capture=opener(FakeCapture(2), None, FakeCapture(3)))
    assert len(list(source.frames())) == 5
    assert (source.reconnects, source.end) == (1, "ended")


def test_an_http_stream_whose_reads_time_out_is_lost(monkeypatch):
    monkeypatch.setattr(sources, "READ_TIMEOUT_MS", 200)
    source = StreamSource("http://127.0.0.1/live.ts", reconnect_s=0.3,
                          open_capture=opener(FakeCapture(3, fail_after_s=0.2)))
    with pytest.raises(RuntimeFailure, match=r"was lost \(no frame within the read timeout\).*--reconnect-s"):
        list(source.frames())
    assert source.end == "lost"


class StallingFile:
    """``path`` read for real, whose reads time out (block ``stall_s``, then fail) after ``frames`` frames: an
    HTTP file (it declares its frame count) whose server stalled."""

    def __init__(self, path, frames: int | None = None, stall_s: float = 0.0):
        self.capture, self.left, self.stall_s = cv2.VideoCapture(str(path)), frames, stall_s

    def read(self):
        if self.left == 0:
            time.sleep(self.stall_s)
            return False, None
        self.left = None if self.left is None else self.left - 1
        return self.capture.read()

    def __getattr__(self, name):  # grab, get, release
        return getattr(self.capture, name)


def test_an_http_file_reopened_after_a_stall_goes_on_where_it_stopped_instead_of_replaying(video_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_TIMEOUT_MS", 200)
    source = StreamSource("http://127.0.0.1/flight.mp4", reconnect_s=2.0,
                          open_capture=opener(StallingFile(video_path, 10, stall_s=0.2), StallingFile(video_path)))
    records = list(source.frames())
    expected = StallingFile(video_path)
    assert (len(records), source.reconnects, source.end) == (24, 1, "ended")  # 34 before: 10, then all 24 again
    assert all(np.array_equal(record.frame, expected.read()[1]) for record in records)


def test_a_truncated_video_ends_where_its_data_ends(tmp_path, caplog):
    path = write_video(tmp_path / "noisy.mp4", frames=90, size=(128, 80), noise=True)
    source = open_source(path)
    frames = source.frames()
    records = [next(frames) for _ in range(5)]
    os.truncate(path, path.stat().st_size // 2)  # while it is being read
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        records += list(frames)
    source.close()
    assert 5 < len(records) < 90 and [r.index for r in records] == list(range(len(records)))
    assert (source.end, source.corrupt) == ("truncated", 0)  # missing frames, not damaged ones
    assert f"ends at frame {len(records)} of the 90" in caplog.text


@pytest.mark.parametrize("name, options", [("clip.mkv", None), ("clip.mp4", {"movflags": "frag_keyframe+empty_moov"})])
def test_a_whole_clip_whose_audio_outlasts_its_video_ends_undamaged(tmp_path, caplog, name, options):
    # No stored frame count: OpenCV estimates one from the duration, which the audio lengthens (to 75)
    pytest.importorskip("av")
    path = write_clip_with_longer_audio(tmp_path / name, frames=30, audio_s=3.0, options=options)
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"), open_source(path) as source:
        records = list(source.frames())
        assert source.frame_count > 60  # the estimate this is about
    assert (len(records), source.end, source.corrupt) == (30, "ended", 0)
    assert "damaged" not in caplog.text and "truncated" not in caplog.text


@pytest.mark.parametrize("cut", [10, 45])  # fewer frames than a run of damaged ones, and more
def test_a_clip_cut_without_reencoding_is_neither_damaged_nor_truncated(tmp_path, caplog, cut):
    # Its index keeps the frames before the cut, which its edit list hides: they were "13 damaged frames"
    # (a 2 s clip cut at 0.5 s), or for a longer cut "ends at frame N of the M its header declares"
    pytest.importorskip("av")
    path = write_clip_with_longer_audio(tmp_path / "cut.mp4", frames=60, audio_s=1.0, cut=cut)
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"), open_source(path) as source:
        records = list(source.frames())
        assert source.frame_count == 60  # what the index stores
    assert (len(records), source.end, source.corrupt) == (60 - cut, "ended", 0)
    assert "damaged" not in caplog.text and "truncated" not in caplog.text


def test_an_edit_list_cut_is_read_through_boxes_of_64_bit_size(tmp_path):
    def box(kind: bytes, body: bytes, wide: bool = False) -> bytes:  # wide: size 1, then a 64-bit size (largesize)
        size = len(body) + (16 if wide else 8)
        return (b"\0\0\0\1" + kind + size.to_bytes(8, "big") if wide else size.to_bytes(4, "big") + kind) + body

    scale_and_2s = bytes(12) + (1000).to_bytes(4, "big") + (2000).to_bytes(4, "big")  # an mvhd's or mdhd's
    for shown_ms, wide in ((2000, True), (1000, False), (1000, True)):  # a picture track showing 2 s or 1 s of its 2 s
        tkhd = bytes(20) + shown_ms.to_bytes(4, "big") + bytes(52) + (160 << 16).to_bytes(4, "big") + bytes(4)
        trak = box(b"trak", box(b"tkhd", tkhd) + box(b"mdia", box(b"mdhd", scale_and_2s)))
        moov = box(b"moov", box(b"mvhd", scale_and_2s, wide) + trak)
        (tmp_path / "v.mp4").write_bytes(box(b"ftyp", b"isom" + bytes(4)) + moov + box(b"mdat", bytes(8)))
        assert sources._stores_frame_count(tmp_path / "v.mp4") is (shown_ms == 2000), (shown_ms, wide)


def test_a_file_url_as_file_managers_write_it_is_read(video_path, tmp_path):
    # %20 for a space and a localhost host: FFmpeg's file protocol takes neither (it waited 10 s, exit 5)
    spaced = tmp_path / "flight 1!.mp4"
    shutil.copy(video_path, spaced)
    for url in (f"file://{str(spaced).replace(' ', '%20')}", f"file://localhost{spaced}"):
        with open_source(url, reconnect_s=1) as source:
            assert source.name == url and len(list(source.frames())) == 24 and source.end == "ended"



def test_a_pipe_is_a_stream_a_video_device_a_camera_and_another_device_is_named(tmp_path, monkeypatch):
    from dronseg_edge.pipeline import source_spec as chooser

    opened = []
    monkeypatch.setattr(chooser, "StreamSource",
                        lambda url, *a, name=None, **k: opened.append((url, name)) or FramesSource([]))
    monkeypatch.setattr(chooser, "CameraSource", lambda index, *a, **k: opened.append(index) or FramesSource([]))
    fifo = tmp_path / "feed.ts"
    os.mkfifo(fifo)  # what another program writes a video into: a stream that ends when it closes
    open_source(str(fifo))
    open_source("/dev/video2")  # as v4l2-ctl names a camera
    assert opened == [(f"file:{fifo}", f"file://{fifo}"), 2]
    with pytest.raises(DronsegError, match=r"/dev/null is not a regular file or folder \(a device; a camera is "):
        open_source("/dev/null")  # it said "does not exist"


def test_a_pipe_whose_writer_closes_it_ends_instead_of_waiting_for_another_writer(tmp_path, caplog):
    clip, fifo, done = write_video(tmp_path / "clip.ts", frames=12).read_bytes(), tmp_path / "feed.ts", threading.Event()
    os.mkfifo(fifo)

    def write():  # the writer sends a clip and closes the pipe
        with open(fifo, "wb") as pipe:
            pipe.write(clip)

    def unblock():  # the old code's reopen waited in open() for another writer: one that closes at once, after 2 s
        done.wait(2)
        with contextlib.suppress(OSError):  # ENXIO: no reader waits
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    threads = [threading.Thread(target=target, daemon=True) for target in (write, unblock)]
    [thread.start() for thread in threads]
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"), open_source(str(fifo), reconnect_s=1) as source:
        records = list(source.frames())
        done.set()
    [thread.join(5) for thread in threads]
    assert (len(records), source.end, source.reconnects) == (12, "ended", 0)
    assert "reopening" not in caplog.text  # it waited in open() for as long as no program wrote into the pipe


def test_a_cameras_timestamps_count_from_its_first_read_not_from_its_open(monkeypatch):
    """FrameRecord's doc said "since opening"; the CLI opens the source before the model loads, and the first frame
    is at 0 s however long that took (as a video's first frame is): the doc now says so."""
    clock = [100.0]
    monkeypatch.setattr(sources, "time", SimpleNamespace(monotonic=lambda: clock[0], perf_counter=time.perf_counter))
    source = CameraSource(0, open_capture=opener(FakeCapture(2)))
    clock[0] = 105.0  # the model loaded
    frames = source.frames()
    first = next(frames)
    clock[0] = 105.5
    assert (first.timestamp, next(frames).timestamp) == (0.0, 0.5)
    assert "since its first read" in FrameRecord.__doc__


def test_camera_reconnect_stops_promptly_when_asked():
    source = CameraSource(0, reconnect_s=60.0, open_capture=iter([FakeCapture(1)]).__next__)
    frames = source.frames()
    next(frames)
    source._open_capture = lambda: None
    source.stop()
    assert list(frames) == []  # no 60 s wait, no error


def test_frames_source_wraps_arrays_and_rejects_wrong_dtype():
    source = FramesSource([scene(i, (40, 30)) for i in range(3)], fps=10.0)
    records = list(source.frames())
    assert [r.index for r in records] == [0, 1, 2] and records[2].timestamp == pytest.approx(0.2)
    assert isinstance(records[0], FrameRecord)
    with pytest.raises(DronsegError, match="uint8 BGR"):
        list(FramesSource([np.zeros((4, 4), np.float32)]).frames())


def test_hw_decode_opens_a_video_and_records_the_acceleration_used(video_path):
    with open_source(video_path, capture=CaptureOptions(hw_decode=True)) as source:
        records = list(source.frames())
    with open_source(video_path) as software:
        expected = list(software.frames())
    assert software.hw_decode == {"requested": False, "used": "none"}
    assert source.hw_decode["requested"] and source.hw_decode["used"] in acceleration_names().values()
    assert len(records) == 24 and {r.frame.shape for r in records} == {(80, 128, 3)}
    if source.hw_decode["used"] == "none":  # pip's FFmpeg has no hardware decoder: the same software decode
        assert all(np.array_equal(r.frame, e.frame) for r, e in zip(records, expected))


def test_rtsp_transport_and_latency_reach_ffmpeg_at_every_open(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    recorder = CaptureRecorder(ScriptedCapture(2), ScriptedCapture(1, acceleration=CUDA_ACCELERATION))
    recorder.install(monkeypatch)
    options = CaptureOptions(rtsp_transport="udp", latency_ms=200, hw_decode=True)
    source = open_source("rtsp://cam/7", reconnect_s=0.3, capture=options)
    assert source.hw_decode == {"requested": True, "used": "none"}
    with pytest.raises(RuntimeFailure, match="could not be reopened"):
        list(source.frames())
    first, reopen = recorder.calls[:2]
    assert first.env == reopen.env == "rtsp_transport;udp|max_delay;200000|hw_decoders_any;cuda,vaapi.iHD"
    assert first.api == cv2.CAP_FFMPEG and first.params[-2:] == [cv2.CAP_PROP_HW_ACCELERATION,
                                                                 cv2.VIDEO_ACCELERATION_ANY]
    assert cv2.CAP_PROP_READ_TIMEOUT_MSEC in first.params[::2]  # the stream's timeouts stay
    assert source.hw_decode == {"requested": True, "used": "cuda"}  # as the reopened decoder reported
    assert ENV_VAR not in os.environ  # put back after each open


@pytest.mark.parametrize("spec, message", [
    ("video", "--rtsp-transport applies to rtsp:// sources only, and .*clip.mp4 is a video file: drop it"),
    ("http://127.0.0.1/live.ts", "--rtsp-transport applies to rtsp:// sources only, and http://127.0.0.1/live.ts "
                                 "is a http:// stream"),
    ("57", "is a camera index"),
])
def test_rtsp_options_on_other_sources_are_refused(spec, message, video_path):
    with pytest.raises(DronsegError, match=message):
        open_source(str(video_path) if spec == "video" else spec, capture=CaptureOptions(rtsp_transport="tcp"))


def test_hw_decode_on_images_is_a_warning(image_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        source = open_source(image_folder, capture=CaptureOptions(hw_decode=True))
    assert len(list(source.frames())) == 3 and source.hw_decode is None
    assert f"--hw-decode has no effect on {image_folder}, an image folder" in caplog.text


@pytest.mark.parametrize("name", ["2026-12-07T12:30:05.mp4", "~flight.mp4"])
def test_names_ffmpeg_or_a_home_folder_could_misread_are_opened_as_the_files_they_are(name, tmp_path, monkeypatch):
    # a relative name with a colon went to FFmpeg as a protocol ("cannot be opened ... damaged"); './~flight.mp4'
    # was Path.expanduser's RuntimeError (no user 'flight')
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / name, frames=3)
    source = open_source(f"./{name}", 5.0)
    try:
        assert len(list(source.frames())) == 3
    finally:
        source.close()


def test_a_source_already_read_is_refused_rather_than_read_as_empty(video_path, tmp_path):
    # a second stream() of one opened source gave 0 frames, and a second run_inference wrote an empty run
    # whose summary.json said the source had "ended"
    from testkit import FakeBackend

    from dronseg_edge.pipeline import RunOptions, Segmenter, run_inference

    source = open_source(str(video_path))
    with Segmenter(FakeBackend()) as seg:
        assert len(list(seg.stream(source, max_frames=2))) == 2
        with pytest.raises(DronsegError, match=f"video {video_path} was already read or closed"):
            next(seg.stream(source))
        with pytest.raises(DronsegError, match="open it again"):
            run_inference(seg, source, RunOptions(out=tmp_path / "run", progress=False))
    assert not (tmp_path / "run").exists()


def test_a_url_password_is_masked_wherever_the_source_is_named(monkeypatch, caplog):
    """Camera credentials stay out of logs, errors and outputs (summary.json's source, stats' file), as ffmpeg and
    VLC mask them; the URL as typed is what FFmpeg opens."""
    url, shown = "rtsp://admin:hunt@r2@cam/7", "rtsp://admin:***@cam/7"
    recorder = CaptureRecorder(ScriptedCapture(2)).install(monkeypatch)
    source, records = open_source(url, reconnect_s=0.3), []
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"), pytest.raises(RuntimeFailure) as lost:
        for record in source.frames():
            records.append(record)
    assert recorder.calls[0].target == url
    assert source.name == shown and [r.source for r in records] == [shown] * 2
    assert shown in str(lost.value) and shown in caplog.text
    errors = [str(lost.value), caplog.text]
    for spec, capture in (("http://u:hunt@r2@cam/x", None), ("gopher://u:hunt@r2@cam", None),
                          ("http://u:hunt@r2@cam/x", CaptureOptions(rtsp_transport="tcp"))):
        with pytest.raises(DronsegError) as refused:
            open_source(spec, reconnect_s=0.3, capture=capture)
        errors.append(str(refused.value))
    assert "u:***@cam" in errors[-1] and not any("hunt" in text for text in errors)


def test_an_srt_stream_that_cannot_be_opened_says_this_ffmpeg_may_lack_srt():
    """pip's OpenCV has no libsrt, and OpenCV says only that the open failed: the message names the likely cause."""
    for url, hint in (("srt://cam:9000", True), ("rtsp://cam/1", False)):
        with pytest.raises(RuntimeFailure, match="check the URL, credentials and network") as error:
            StreamSource(url, open_capture=lambda: None)
        assert ("may lack srt:// (pip's opencv-python 5.1 has no libsrt)" in str(error.value)) is hint
        assert error.value.exit_code == 5  # it may still be the network


def test_a_camera_this_user_may_not_open_is_a_usage_error(monkeypatch, tmp_path):
    """/dev/video0 owned by root:video, the user not in the group: exit 5 "no such device, or busy", which a supervisor
    retried forever. Now the permission is named, exit 2, as for any input this user may not read."""
    from dronseg_edge.pipeline import sources

    device = tmp_path / "video{}"
    (tmp_path / "video57").touch()  # a stand-in for the node: root may open any file, so access is refused below
    monkeypatch.setattr(sources, "CAMERA_DEVICE", str(device))
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not str(path).startswith(str(tmp_path))
                        and access(path, mode, **kw))
    with pytest.raises(DronsegError, match=f"camera 57 cannot be opened: {tmp_path}/video57: Permission denied: add "
                                           "this user to its group") as error:
        open_source("57")
    assert error.value.exit_code == 2
    with pytest.raises(RuntimeFailure, match="no such device, or busy"):  # no node: it may come up later (5)
        open_source("58")
