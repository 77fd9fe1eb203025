"""The H.264 encoder a Jetson's GStreamer offers OpenCV, for ``--codec auto`` and ``dronseg-edge checks``.

PyAV's FFmpeg has no Jetson encoder, so on a Jetson the overlay would be encoded by libx264 on the ARM
cores. JetPack's OpenCV is built with GStreamer, whose ``nvv4l2h264enc`` drives the hardware encoder
of Orin NX/AGX and Xavier (Orin Nano has none: the element is there but cannot open). So on a Jetson
``--codec auto`` writes through OpenCV's GStreamer VideoWriter: ``nvv4l2h264enc`` where it opens,
else GStreamer's ``x264enc``, else PyAV as elsewhere. Whether an encoder opens is asked of OpenCV
itself (a writer to ``fakesink`` opened and released), so what is checked is what the run will use.

This module holds the encoder's part of every pipeline (:func:`encoder_chain`) and opens OpenCV's
writer on one (:func:`open_gst_writer`); the muxers and sinks around it are the pipeline's
(``pipeline/video_writer.py``, ``pipeline/live_encoder.py``). Element and property names are checked
against ``gst-inspect-1.0`` in tests/test_gst_encoders.py.
"""

from __future__ import annotations

import functools

from dronseg_edge.machine import is_jetson

GST_ENCODERS = ("nvv4l2h264enc", "x264enc")  # best first
FILE_QUANTIZER = 23  # x264enc's constant quality for files, as libx264's crf 23 in the PyAV writer
FILE_BITS_PER_PIXEL = 0.1  # nvv4l2h264enc has no constant-quality mode: a bitrate from the frame size


def encoder_chain(encoder: str, keyframe_frames: int, bitrate_kbps: int, live: bool) -> str:
    """The pipeline text from OpenCV's BGR frames to an H.264 byte stream through ``encoder``.

    ``keyframe_frames``: frames between keyframes; ``bitrate_kbps``: the target rate (a stream's
    ``--stream-bitrate-kbps``; for a file, the hardware encoder's rate, x264enc keeps a constant quality);
    ``live``: no B-frames, zero-latency tuning and the parameter sets before every keyframe.
    """
    keyframes = max(1, int(keyframe_frames))
    if encoder == "nvv4l2h264enc":
        rate = f"bitrate={int(bitrate_kbps) * 1000} control-rate={1 if live else 0}"  # 1 constant, 0 variable
        extra = " maxperf-enable=true" if live else ""
        return ("videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! "
                f"nvv4l2h264enc {rate} iframeinterval={keyframes} idrinterval={keyframes} insert-sps-pps=true "
                f"num-B-Frames=0{extra} ! h264parse config-interval=-1")
    if encoder == "x264enc":
        rate = (f"tune=zerolatency bitrate={int(bitrate_kbps)} vbv-buf-capacity=1000" if live
                else f"pass=qual quantizer={FILE_QUANTIZER}")
        return (f"videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=veryfast {rate} "
                f"key-int-max={keyframes} bframes=0 ! h264parse config-interval=-1")
    raise ValueError(f"not a GStreamer encoder: {encoder!r} (one of {', '.join(GST_ENCODERS)})")


def open_gst_writer(pipeline: str, size: tuple[int, int], fps: float):
    """An opened ``cv2.VideoWriter`` on GStreamer ``pipeline`` for (W, H) ``size`` BGR frames; OSError
    when OpenCV cannot open it (no GStreamer, as pip's wheels; an element missing or unable to start)."""
    import cv2

    writer = cv2.VideoWriter(pipeline, cv2.CAP_GSTREAMER, 0, float(fps), tuple(size), True)
    if not writer.isOpened():
        writer.release()
        raise OSError(f"OpenCV's GStreamer cannot open: {pipeline}")
    return writer


@functools.lru_cache(maxsize=None)
def encoder_opens(encoder: str) -> bool:
    """Whether OpenCV's GStreamer backend opens a writer through ``encoder`` here (not without OpenCV)."""
    try:
        import cv2
    except ImportError:  # a Jetson's venv that does not see JetPack's OpenCV: `checks` says so on its own line
        return False
    try:
        open_gst_writer(f"appsrc ! {encoder_chain(encoder, 30, 2000, live=True)} ! fakesink", (320, 240), 30.0).release()
    except (OSError, cv2.error):
        return False
    return True


def jetson_encoder() -> str | None:
    """The GStreamer encoder ``--codec auto`` uses on this machine: on a Jetson the first of
    GST_ENCODERS that opens; None elsewhere, or where none does (then PyAV's, as on any machine)."""
    return next((name for name in GST_ENCODERS if encoder_opens(name)), None) if is_jetson() else None
