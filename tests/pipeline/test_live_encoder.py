"""The live encoder's settings, seen in the packets it sends: no B-frames, a keyframe every second with
the parameter sets before it, the bitrate cap; and the one line without PyAV."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from live_receivers import LOOPBACK, free_port, make_result

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline import live_encoder, video_writer
from dronseg_edge.pipeline.live_encoder import PyAVLiveEncoder, check_pyav_streams
from dronseg_edge.pipeline.live_targets import parse_stream_url

needs_x264 = pytest.mark.skipif(video_writer._import_av() is None or not video_writer.encoder_opens("libx264"),
                                reason="needs PyAV with libx264 (the `video` extra)")


class Recording:
    """Wraps the encoder's container: every packet muxed is kept (as bytes, with its flags) and sent on."""

    def __init__(self, container):
        self.container, self.packets = container, []

    def mux(self, packet):
        self.packets.append((packet.pts, packet.dts, packet.is_keyframe, bytes(packet)))
        self.container.mux(packet)

    def close(self):
        self.container.close()


def nal_types(data: bytes) -> list[int]:
    return [data[i + 3] & 0x1F for i in range(len(data) - 3) if data[i:i + 3] == b"\x00\x00\x01"]


@needs_x264
def test_no_b_frames_a_keyframe_a_second_with_its_parameter_sets():
    encoder = PyAVLiveEncoder(parse_stream_url(f"udp://{LOOPBACK}:{free_port()}"), (160, 96), 10.0, 300)
    recording = encoder._container = Recording(encoder._container)
    left = [encoder.send(make_result(index).frame) for index in range(35)]
    encoder.close()
    packets = recording.packets
    assert all(left) and len(packets) == 35  # zero latency: each frame's packet leaves with it
    assert all(pts == dts for pts, dts, _, _ in packets)  # no reordering: no B-frames
    keyframes = [n for n, packet in enumerate(packets) if packet[2]]
    assert keyframes[0] == 0 and max(np.diff(keyframes + [35])) <= 10  # 10 fps: one a second at least (x264 adds scene cuts)
    assert all(7 in nal_types(data) and 8 in nal_types(data) for _, _, key, data in packets if key)  # SPS, PPS
    assert [pts for pts, *_ in packets] == sorted({pts for pts, *_ in packets})  # strictly increasing
    assert encoder._stream.bit_rate == 300_000 and encoder._stream.codec_context.max_b_frames == 0


@needs_x264
def test_frames_slower_than_the_rate_still_get_a_keyframe_a_second(monkeypatch):
    # a --live model at 4 frames a second on a 30 fps camera: x264's interval (30 frames) would be 7.5 s
    clock = iter(np.arange(0, 100, 0.25))
    monkeypatch.setattr(live_encoder, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    encoder = PyAVLiveEncoder(parse_stream_url(f"udp://{LOOPBACK}:{free_port()}"), (160, 96), 30.0, 300)
    recording = encoder._container = Recording(encoder._container)
    for index in range(12):
        encoder.send(make_result(0).frame)  # one picture: no scene cut adds a keyframe
    encoder.close()
    assert [n for n, packet in enumerate(recording.packets) if packet[2]] == [0, 4, 8]


def test_without_pyav_a_stream_is_one_line_naming_the_extra(monkeypatch):
    video_writer.encoder_opens.cache_clear()
    monkeypatch.setitem(sys.modules, "av", None)
    try:
        with pytest.raises(DronsegError, match=r"--stream-out needs PyAV, which is not installed: pip install 'dronseg-edge\[video\]'"):
            check_pyav_streams()
    finally:
        video_writer.encoder_opens.cache_clear()


def test_a_pyav_without_libx264_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.setattr(live_encoder, "encoder_opens", lambda name: False)
    with pytest.raises(DronsegError, match="--stream-out needs libx264, which this PyAV's FFmpeg lacks: pip install"):
        check_pyav_streams()


def test_frames_are_sent_as_bgr_of_the_streams_size():
    assert make_result(0).frame.shape == (96, 160, 3) and make_result(0).frame.dtype == np.uint8
