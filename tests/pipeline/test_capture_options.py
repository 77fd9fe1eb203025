"""FFmpeg capture options: the OPENCV_FFMPEG_CAPTURE_OPTIONS value, its lifetime, hardware decoding."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from fake_captures import CaptureRecorder, FakeCapture

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.capture_options import (CUDA_ACCELERATION, ENV_VAR, HW_DECODERS, CaptureOptions,
                                                   acceleration_used, hw_decode_record, open_ffmpeg)


@pytest.mark.parametrize("options, url, existing, expected", [
    (CaptureOptions(), "rtsp://cam/1", None, None),  # nothing asked: OpenCV's own defaults stand
    (CaptureOptions(rtsp_transport="tcp"), "rtsp://cam/1", None, "rtsp_transport;tcp"),
    (CaptureOptions(rtsp_transport="udp", latency_ms=50), "RTSPS://cam/1", None, "rtsp_transport;udp|max_delay;50000"),
    # setting the variable drops OpenCV's TCP-first default, so it is kept when no transport is given
    (CaptureOptions(latency_ms=0), "rtsp://cam/1", None, "rtsp_flags;prefer_tcp|max_delay;0"),
    (CaptureOptions(hw_decode=True), "/videos/a.mp4", None, f"hw_decoders_any;{HW_DECODERS}"),
    (CaptureOptions(hw_decode=True), "http://host/a.ts", None, f"hw_decoders_any;{HW_DECODERS}"),
    # the user's own options stay, ours come after (FFmpeg keeps the last of a key) ...
    (CaptureOptions(rtsp_transport="tcp"), "rtsp://cam/1", "stimeout;5000000|rtsp_transport;udp",
     "stimeout;5000000|rtsp_transport;udp|rtsp_transport;tcp"),
    # ... and their hw_decoders_any wins over ours
    (CaptureOptions(hw_decode=True), "/a.mp4", "hw_decoders_any;vaapi", None),
    (CaptureOptions(hw_decode=True, latency_ms=20), "rtsp://c", "hw_decoders_any;vaapi",
     "hw_decoders_any;vaapi|max_delay;20000"),
])
def test_ffmpeg_options_for_the_open(options, url, existing, expected):
    assert options.ffmpeg_options(url, existing) == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"rtsp_transport": "quic"}, "--rtsp-transport 'quic' is not one of tcp, udp"),
    ({"latency_ms": -1}, "--latency-ms -1 must be a whole number"),
    ({"latency_ms": 600_000}, "--latency-ms 600000 must be"),
    ({"latency_ms": True}, "--latency-ms True must be a whole number"),  # was taken as 1 ms
])
def test_bad_options_name_the_flag(kwargs, message):
    with pytest.raises(DronsegError, match=message):
        CaptureOptions(**kwargs)
    # numpy's whole numbers are whole numbers (np.int64(20) was refused as not one)
    assert CaptureOptions(latency_ms=np.int64(20)).ffmpeg_options("rtsp://c", None).endswith("|max_delay;20000")


@pytest.mark.parametrize("before", [None, "stimeout;5000000"])
def test_the_variable_is_set_for_the_open_only_and_then_restored(before, monkeypatch):
    if before is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, before)
    recorder = CaptureRecorder(FakeCapture()).install(monkeypatch)
    open_ffmpeg("rtsp://cam/1", CaptureOptions(rtsp_transport="udp"), [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10_000])
    (call,) = recorder.calls
    assert call.env == "|".join(filter(None, [before, "rtsp_transport;udp"]))
    assert (call.api, call.params) == (cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10_000])
    assert os.environ.get(ENV_VAR) == before


def test_the_variable_is_restored_when_the_open_raises(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)

    def broken(*args):
        assert os.environ[ENV_VAR] == "rtsp_transport;tcp"
        raise cv2.error("backend exploded")

    monkeypatch.setattr(cv2, "VideoCapture", broken)
    with pytest.raises(cv2.error):
        open_ffmpeg("rtsp://cam/1", CaptureOptions(rtsp_transport="tcp"))
    assert ENV_VAR not in os.environ


def test_hw_decode_asks_opencv_for_any_acceleration_after_the_callers_params(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    recorder = CaptureRecorder(FakeCapture(), FakeCapture()).install(monkeypatch)
    open_ffmpeg("/a.mp4", CaptureOptions(hw_decode=True), [cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000])
    open_ffmpeg("/a.mp4", CaptureOptions())
    with_hw, without = recorder.calls
    assert with_hw.params == [cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000,
                              cv2.CAP_PROP_HW_ACCELERATION, cv2.VIDEO_ACCELERATION_ANY]
    assert with_hw.env == f"hw_decoders_any;{HW_DECODERS}"
    assert (without.params, without.env) == ([], None)  # software decoding opens as it always did


@pytest.mark.parametrize("reported, name", [
    (0.0, "none"), (float(cv2.VIDEO_ACCELERATION_VAAPI), "vaapi"), (float(CUDA_ACCELERATION), "cuda"),
    (float(cv2.VIDEO_ACCELERATION_D3D11), "d3d11"), (99.0, "unknown (99)"), (float("nan"), "none"),
])
def test_the_acceleration_opencv_reports_is_named(reported, name):
    capture = FakeCapture(acceleration=reported)
    assert acceleration_used(capture) == name
    assert hw_decode_record(CaptureOptions(hw_decode=True), capture) == {"requested": True, "used": name}
