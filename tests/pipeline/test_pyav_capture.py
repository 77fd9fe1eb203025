"""MPEG-TS files through PyAV: a change of frame size mid-way is followed, warned about and counted
(OpenCV's reader scales every frame back to the first size and cannot show the change)."""

import importlib.util
import logging
import subprocess
import sys

import cv2
import pytest
from pipeline_media import write_ts_with_size_change, write_video

from dronseg_edge.pipeline.capture_options import CaptureOptions
from dronseg_edge.pipeline.pyav_capture import PyAVCapture
from dronseg_edge.pipeline.source_spec import open_source
from dronseg_edge.pipeline.sources import VideoSource

pytestmark = pytest.mark.skipif(importlib.util.find_spec("av") is None,
                                reason="PyAV is not installed (pip install 'dronseg-edge[video]')")


@pytest.fixture(scope="module")
def changing_ts(tmp_path_factory):
    return write_ts_with_size_change(tmp_path_factory.mktemp("ts") / "feed.ts")


def test_a_ts_whose_size_changes_is_followed_frame_by_frame(changing_ts, caplog):
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        source = open_source(changing_ts)
        records = list(source.frames())
    assert isinstance(source, VideoSource) and isinstance(source.capture, PyAVCapture)
    assert [r.frame.shape[:2] for r in records] == [(64, 96)] * 6 + [(72, 128)] * 6  # nothing squashed
    assert [r.index for r in records] == list(range(12)) and source.end == "ended"
    assert [round(r.timestamp, 3) for r in records] == [round(i / 30, 3) for i in range(12)]  # timing runs on
    assert (source.size_changes, source.size, source.corrupt, source.fps) == (1, (128, 72), 0, 30.0)
    assert "changes size at frame 6, from 96x64 to 128x72: the outputs follow it" in caplog.text


def test_with_stride_the_change_is_seen_at_the_next_frame_kept(changing_ts, caplog):
    source = open_source(changing_ts)
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        assert [(r.index, r.frame.shape[1]) for r in source.frames(stride=4)] == [(0, 96), (4, 96), (8, 128)]
    assert source.size_changes == 1
    # frames 5 to 7 were skipped: it changed at 6, which the warning said was frame 8
    assert "changes size by frame 8, from 96x64 to 128x72" in caplog.text


def test_other_videos_and_hardware_decoding_stay_with_opencv(changing_ts, video_path):
    assert not isinstance(open_source(video_path).capture, PyAVCapture)  # MP4: OpenCV applies its rotation
    hw = VideoSource(changing_ts, capture=CaptureOptions(hw_decode=True))
    assert not isinstance(hw.capture, PyAVCapture)  # --hw-decode goes through OpenCV's FFmpeg
    assert PyAVCapture.open_if_suited(video_path) is None


def test_without_pyav_opencv_reads_the_ts_at_its_first_size(changing_ts, monkeypatch):
    """The limit this module exists for, shown: OpenCV scales the second half to 96x64 and cannot tell."""
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    source = open_source(changing_ts)
    shapes = {r.frame.shape[:2] for r in source.frames()}
    assert isinstance(source.capture, cv2.VideoCapture) and shapes == {(64, 96)} and source.size_changes == 0


def test_damaged_and_missing_files_are_left_to_opencv_and_its_messages(tmp_path):
    assert PyAVCapture.open_if_suited(tmp_path / "missing.ts") is None
    broken = tmp_path / "broken.ts"
    broken.write_bytes(b"\x47" + b"\x00" * 500)
    assert PyAVCapture.open_if_suited(broken) is None
    write_video(tmp_path / "clip.avi", frames=2, fourcc="MJPG")
    assert PyAVCapture.open_if_suited(tmp_path / "clip.avi") is None


def test_a_ts_after_stray_bytes_still_goes_to_pyav(changing_ts, tmp_path):
    """The sync-byte sniff looks within the first packet, as FFmpeg's probe resynchronises past junk."""
    shifted = tmp_path / "shifted.ts"
    shifted.write_bytes(b"\x00junk" + changing_ts.read_bytes())
    capture = PyAVCapture.open_if_suited(shifted)
    assert isinstance(capture, PyAVCapture)
    capture.release()


def test_an_m2ts_goes_to_pyav_and_its_size_change_is_followed(tmp_path):
    """192-byte packets (a 4-byte timestamp, then the 188-byte TS packet): the sniff finds their sync bytes."""
    m2ts = write_ts_with_size_change(tmp_path / "camera.m2ts", m2ts=True)
    assert m2ts.read_bytes()[4] == 0x47 and m2ts.read_bytes()[196] == 0x47
    source = open_source(m2ts)
    shapes = [r.frame.shape[:2] for r in source.frames()]
    assert isinstance(source.capture, PyAVCapture) and shapes == [(64, 96)] * 6 + [(72, 128)] * 6


def test_an_mp4_is_read_without_importing_pyav(video_path):
    """PyAV costs ~24 MiB and 50 ms to import: a file without MPEG-TS sync bytes never loads it."""
    code = ("import sys; from dronseg_edge.pipeline.source_spec import open_source; "
            f"source = open_source({str(video_path)!r}); next(source.frames()); print('av' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["False"]
