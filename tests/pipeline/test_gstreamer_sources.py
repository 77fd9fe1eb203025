"""GStreamer pipelines and CSI cameras as sources.

pip's OpenCV has no GStreamer, so most of these run against a recording stand-in for
cv2.VideoCapture (fake_captures.py): what matters here is the pipeline text and backend OpenCV gets,
and how the source behaves when the pipeline stops. The real open runs only where this OpenCV has
GStreamer (JetPack's, or a source build).
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess

import cv2
import pytest
from fake_captures import CaptureRecorder, FakeCapture, frame_shapes

from dronseg_edge.errors import BackendUnavailable, DronsegError, RuntimeFailure
from dronseg_edge.pipeline import gstreamer, open_source
from dronseg_edge.pipeline.capture_options import CaptureOptions
from dronseg_edge.pipeline.gstreamer import FILE_APPSINK, LIVE_APPSINK, GStreamerSource, csi_pipeline, with_appsink

TEST_PIPELINE = "videotestsrc is-live=true ! videoconvert ! video/x-raw,format=BGR,width=32,height=24"
FILE_PIPELINE = ("filesrc location=/data/flight.mp4 ! qtdemux ! h264parse ! nvv4l2decoder ! nvvidconv ! "
                 "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR")


@pytest.fixture
def fake_gstreamer(monkeypatch):
    """This OpenCV 'has' GStreamer, and its GStreamer captures are recorded (FFmpeg ones open for real)."""
    monkeypatch.setattr(gstreamer, "has_gstreamer", lambda: True)
    recorder = CaptureRecorder()
    return recorder.install(monkeypatch, only_api=cv2.CAP_GSTREAMER)


@pytest.mark.parametrize("spec, sensor, caps", [
    ("csi://0", 0, "width=1920,height=1080,framerate=30/1"),
    ("csi://1?width=1280&height=720&fps=60", 1, "width=1280,height=720,framerate=60/1"),
    ("CSI://2?fps=15", 2, "width=1920,height=1080,framerate=15/1"),
])
def test_csi_builds_the_nvargus_pipeline(spec, sensor, caps):
    assert csi_pipeline(spec) == (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),{caps} ! nvvidconv ! "
                        "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
                        "appsink drop=true max-buffers=1")


@pytest.mark.parametrize("spec, message", [
    ("csi://", "csi://N with N its sensor id"),
    ("csi://front", "csi://N with N its sensor id"),
    ("csi://0/extra", "csi://N with N its sensor id"),
    ("csi://0?width=0", "width=0 must be a whole number above 0"),
    ("csi://0?fps=29.97", "fps=29.97 must be a whole number"),
    ("csi://0?flip=2", "unknown option 'flip'; csi:// takes width, height, fps"),
])
def test_bad_csi_specs_name_the_fix(spec, message):
    with pytest.raises(DronsegError, match=message):
        open_source(spec)


@pytest.mark.parametrize("pipeline, expected", [
    (TEST_PIPELINE, f"{TEST_PIPELINE} ! {LIVE_APPSINK}"),
    (f"  {TEST_PIPELINE} ! ", f"{TEST_PIPELINE} ! {LIVE_APPSINK}"),  # a dangling '!' is not an element
    (FILE_PIPELINE, f"{FILE_PIPELINE} ! {FILE_APPSINK}"),  # a file: every frame, as fast as it decodes
    ('uridecodebin uri="file:///data/a.mp4" ! videoconvert',
     f'uridecodebin uri="file:///data/a.mp4" ! videoconvert ! {FILE_APPSINK}'),
    (f"{TEST_PIPELINE} ! appsink name=frames max-buffers=4", f"{TEST_PIPELINE} ! appsink name=frames max-buffers=4"),
])
def test_an_appsink_is_appended_only_where_the_pipeline_has_none(pipeline, expected):
    assert with_appsink(pipeline) == expected


@pytest.mark.parametrize("text, pipeline", [
    (TEST_PIPELINE, True), ("videotestsrc!appsink", True), ("rtspsrc location=rtsp://cam/1 ! decodebin", True),
    ("http://host/clip!1.ts", False), ("rtsp://cam/live", False), ("/videos/flight.mp4", False),
])
def test_what_counts_as_a_pipeline(text, pipeline):
    assert gstreamer.is_pipeline(text) is pipeline


def test_without_gstreamer_a_pipeline_is_one_error_naming_the_fix(monkeypatch):
    """A missing optional runtime: exit code 3 (it was 2, a usage error), as for TensorRT or PyAV."""
    monkeypatch.setattr(gstreamer, "has_gstreamer", lambda: False)
    recorder = CaptureRecorder().install(monkeypatch)
    for spec in (TEST_PIPELINE, "csi://0"):
        with pytest.raises(BackendUnavailable, match="has no GStreamer: on a Jetson use JetPack's OpenCV .* https://\\S+/docs/jetson.md#cameras-and-streams"):
            open_source(spec)
    assert recorder.calls == []  # refused before anything was opened


def test_this_opencvs_answer_matches_what_it_can_open():
    """The real check, against the real backend: a GStreamer pipeline opens exactly where it is said to."""
    if not gstreamer.has_gstreamer():
        with pytest.raises(DronsegError, match="has no GStreamer"):
            open_source(TEST_PIPELINE)
        which = " ".join(gstreamer.pip_opencv() or ("OpenCV", cv2.__version__))
        pytest.skip(f"this OpenCV ({which}) has no GStreamer: the real open is not possible here, the fakes in "
                    "this file stand in for it")
    with open_source(TEST_PIPELINE, reconnect_s=1) as source:
        frames = source.frames()
        records = [next(frames) for _ in range(3)]
    assert frame_shapes(records) == {(24, 32, 3)}


def test_a_pipeline_opens_through_the_gstreamer_backend_and_reopens_the_same_pipeline(fake_gstreamer):
    fake_gstreamer.script = [FakeCapture(2), FakeCapture(3)]  # a camera that drops once, then for good
    source = open_source(TEST_PIPELINE, reconnect_s=0.5)
    assert isinstance(source, GStreamerSource) and source.kind == "stream" and source.live_default
    records = []
    with pytest.raises(RuntimeFailure, match="could not be reopened within 0.5 s"):
        for record in source.frames():
            records.append(record)
    assert len(records) == 5 and frame_shapes(records) == {(24, 32, 3)}
    assert (source.reconnects, source.end, source.hw_decode) == (1, "lost", None)
    opened = {(call.target, call.api) for call in fake_gstreamer.calls}
    assert opened == {(f"{TEST_PIPELINE} ! {LIVE_APPSINK}", cv2.CAP_GSTREAMER)}
    assert len(fake_gstreamer.calls) >= 3  # the first open, the reopen, and at least one failed try


def test_a_csi_camera_is_a_live_camera(fake_gstreamer):
    fake_gstreamer.script = [FakeCapture(2, size=(64, 48))]
    with open_source("csi://1?width=64&height=48&fps=15") as source:
        records = [next(source.frames())]
    assert (source.kind, source.name, source.live_default) == ("camera", "csi://1?width=64&height=48&fps=15", True)
    assert frame_shapes(records) == {(48, 64, 3)}
    (call,) = fake_gstreamer.calls
    assert (call.target, call.api) == (csi_pipeline("csi://1?width=64&height=48&fps=15"), cv2.CAP_GSTREAMER)


def test_a_file_pipeline_is_read_whole_and_ends_without_reopening(fake_gstreamer, caplog):
    fake_gstreamer.script = [FakeCapture(4), FakeCapture(4)]
    source = open_source(FILE_PIPELINE, reconnect_s=30)
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        records = list(source.frames())
    assert len(records) == 4 and (source.end, source.reconnects, source.live_default) == ("ended", 0, False)
    assert len(fake_gstreamer.calls) == 1  # reopening would replay the file
    assert "the end of its file" in caplog.text


def test_a_pipeline_that_does_not_open_is_a_runtime_failure_naming_gst_launch(fake_gstreamer):
    with pytest.raises(RuntimeFailure, match="cannot be opened: run it with `gst-launch-1.0") as error:
        open_source(TEST_PIPELINE)
    assert error.value.exit_code == 5  # a camera that is not up yet: a supervisor retries
    with pytest.raises(RuntimeFailure, match="CSI camera csi://0 cannot be opened: .*nvargus-daemon"):
        open_source("csi://0")


def test_the_gst_launch_command_a_csi_camera_suggests_runs_in_a_shell(fake_gstreamer):
    """bash stops at the bare '(' of video/x-raw(memory:NVMM): the caps are quoted, as in NVIDIA's examples."""
    with pytest.raises(RuntimeFailure) as error:
        open_source("csi://0")
    command = re.search(r"try `(gst-launch-1.0 .*)`", str(error.value)).group(1)
    assert shlex.split(command)[4] == "video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1"
    assert subprocess.run(["bash", "-n", "-c", command], capture_output=True).returncode == 0


def test_ffmpeg_options_on_a_pipeline(fake_gstreamer, caplog):
    with pytest.raises(DronsegError, match="--rtsp-transport and --latency-ms apply to rtsp:// sources only, .*"
                                           r"\(rtspsrc protocols=tcp latency=N"):
        open_source(f"rtspsrc location=rtsp://cam/1 ! decodebin ! {TEST_PIPELINE.split(' ! ', 1)[1]}",
                    capture=CaptureOptions(rtsp_transport="tcp", latency_ms=100))
    fake_gstreamer.script = [FakeCapture(1)]
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        open_source(TEST_PIPELINE, capture=CaptureOptions(hw_decode=True)).close()
    assert "--hw-decode has no effect on" in caplog.text and "nvv4l2decoder" in caplog.text


@pytest.mark.parametrize("login, shown", [("location=rtsp://admin:hunter2@cam/1", "location=rtsp://admin:***@cam/1"),
                                           ("location=rtsp://cam/1 user-id=admin user-pw=hunter2",
                                            "location=rtsp://cam/1 user-id=admin user-pw=***")])
def test_a_pipeline_names_its_rtsp_location_with_the_password_masked(fake_gstreamer, login, shown):
    fake_gstreamer.script.append(FakeCapture(1))
    pipeline = f"rtspsrc {login} ! decodebin ! videoconvert ! video/x-raw,format=BGR"
    with open_source(pipeline) as source:
        assert fake_gstreamer.calls[0].target.startswith(pipeline)  # GStreamer gets the password
        assert f"{shown} ! decodebin" in source.name and "hunter2" not in source.name
