"""Live streams through OpenCV's GStreamer VideoWriter: a Jetson's hardware encoder (gst_encoders.py).

The encoder's part of each pipeline is :func:`~dronseg_edge.gst_encoders.encoder_chain`; this module
adds what is around it: ``appsrc`` (OpenCV's frames) in front, ``mpegtsmux ! udpsink`` behind it for
udp://, ``rtph264pay ! udpsink`` for rtp:// (files: ``video_writer.OpenCVWriter``). RTSP publishing
stays with PyAV (pipeline/live_encoder.py): OpenCV's GStreamer writer reports no error from its sink,
so a server that went away would go unnoticed and never be reconnected; over UDP nothing is lost by
that, as UDP reports nothing either.
"""

from __future__ import annotations

import numpy as np

from dronseg_edge.gst_encoders import encoder_chain, open_gst_writer
from dronseg_edge.pipeline.live_encoder import KEYFRAME_S, LiveEncoder
from dronseg_edge.pipeline.live_targets import RTP_PAYLOAD_TYPE, StreamTarget

# live_targets allows no spaces or quotes in a host, so it can stand in the pipeline's text as it is
UDP_SINK = "udpsink host={host} port={port} sync=false async=false"


def stream_pipeline(target: StreamTarget, encoder: str, fps: float, bitrate_kbps: int) -> str:
    """The pipeline that sends OpenCV's frames to a udp:// (MPEG-TS) or rtp:// ``target`` (rtsp:// goes through PyAV)."""
    chain = encoder_chain(encoder, round(fps * KEYFRAME_S), bitrate_kbps, live=True)
    mux = ("mpegtsmux alignment=7" if target.kind == "udp" else
           f"rtph264pay config-interval=-1 pt={RTP_PAYLOAD_TYPE} mtu=1200")
    return f"appsrc is-live=true ! {chain} ! {mux} ! {UDP_SINK.format(host=target.host, port=target.port)}"


class GStreamerLiveEncoder(LiveEncoder):
    """A udp:// or rtp:// stream encoded by a GStreamer encoder; ``send`` is True once GStreamer has the frame."""

    def __init__(self, target: StreamTarget, size: tuple[int, int], fps: float, bitrate_kbps: int, encoder: str):
        self.encoder = encoder
        self.pipeline = stream_pipeline(target, encoder, fps, bitrate_kbps)
        self._writer = open_gst_writer(self.pipeline, size, fps)

    def send(self, frame_bgr: np.ndarray) -> bool:
        self._writer.write(np.ascontiguousarray(frame_bgr))
        return True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
