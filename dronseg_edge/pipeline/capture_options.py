"""How video files and streams are opened through OpenCV's FFmpeg backend: RTSP transport and
latency, hardware decoding, and which acceleration the decoder ended up using.

OpenCV takes FFmpeg's demuxer options from one environment variable, ``OPENCV_FFMPEG_CAPTURE_OPTIONS``
(``key;value`` pairs joined by ``|``), read when a capture opens; :func:`open_ffmpeg` sets it for that
open only. Options a user already set there are kept; ours come after them and win on the same key.

- ``--rtsp-transport tcp|udp``: FFmpeg's ``rtsp_transport``. Without it, OpenCV asks for
  ``rtsp_flags=prefer_tcp`` (TCP first), which this module keeps whenever it sets the variable.
- ``--latency-ms N``: FFmpeg's ``max_delay`` (microseconds): how long the RTSP demuxer holds packets
  arriving over UDP to put them back in order (0 turns reordering off; over TCP nothing is held).
- ``--hw-decode``: ``CAP_PROP_HW_ACCELERATION = VIDEO_ACCELERATION_ANY`` with ``hw_decoders_any``
  (:data:`HW_DECODERS`): OpenCV's ANY alone tries VAAPI only on Linux, never NVDEC.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

from dronseg_edge.option_fields import one_of, option, whole

ENV_VAR = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
RTSP_TRANSPORTS = ("tcp", "udp")
RTSP_SCHEMES = ("rtsp", "rtsps")
# Tried in this order, then software. "cuda" is NVDEC through FFmpeg's CUDA device; "vaapi.iHD" is
# OpenCV's own default for ANY on Linux (VAAPI, on a driver whose name holds "iHD").
HW_DECODERS = "cuda,vaapi.iHD"
# What CAP_PROP_HW_ACCELERATION reads after the open. OpenCV has no constant for CUDA: its FFmpeg
# backend reports FFmpeg's CUDA device as 1 << 11.
CUDA_ACCELERATION = 1 << 11
_env_lock = threading.Lock()


def acceleration_names() -> dict[int, str]:
    """CAP_PROP_HW_ACCELERATION values -> names: OpenCV's VIDEO_ACCELERATION_* in lower case, and cuda
    (imports OpenCV: the CLI reads CaptureOptions without it)."""
    import cv2

    prefix = "VIDEO_ACCELERATION_"
    names = {int(getattr(cv2, name)): name[len(prefix):].lower() for name in dir(cv2) if name.startswith(prefix)}
    return {**names, CUDA_ACCELERATION: "cuda"}


@dataclass(frozen=True)
class CaptureOptions:
    """How FFmpeg opens a source; checked when made. ``rtsp_transport`` and ``latency_ms`` apply to
    rtsp:// sources only, ``hw_decode`` to video files and streams (``open_source`` says so otherwise)."""

    rtsp_transport: str | None = option(None, "rtsp:// sources: tcp or udp.",
                                        default_text="TCP first, as OpenCV asks FFmpeg")
    latency_ms: int | None = option(None, "rtsp:// sources over UDP: milliseconds FFmpeg holds packets to reorder "
                                          "them (its max_delay; 0 = none). In a GStreamer pipeline: rtspsrc latency=N.",
                                    default_text="100")
    hw_decode: bool = option(False, "Decode video files and URLs on the GPU's decoder through OpenCV's FFmpeg (NVDEC, "
                                    "else VAAPI; software where this FFmpeg has neither: pip's has neither). "
                                    "summary.json records which was used.")

    def __post_init__(self) -> None:
        if self.rtsp_transport is not None:
            one_of(self.rtsp_transport, "--rtsp-transport", RTSP_TRANSPORTS, ": tcp gets through firewalls and loses "
                   "nothing, udp has less delay on a clean network")
        if self.latency_ms is not None:
            whole(self.latency_ms, "--latency-ms", 0, " (milliseconds; 0: no reordering)", most=60_000)

    @property
    def rtsp_options_given(self) -> list[str]:
        """The RTSP-only flags that were given, by their command-line names."""
        return [flag for flag, value in (("--rtsp-transport", self.rtsp_transport), ("--latency-ms", self.latency_ms))
                if value is not None]

    def ffmpeg_options(self, url: str, existing: str | None) -> str | None:
        """The value ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` takes while ``url`` opens, or None to leave it alone.

        ``existing``: what the user has set there (kept, ours appended; theirs ``hw_decoders_any`` wins).
        """
        rtsp = is_rtsp(url)
        ours = [f"rtsp_transport;{self.rtsp_transport}"] if rtsp and self.rtsp_transport else []
        ours += [f"max_delay;{self.latency_ms * 1000}"] if rtsp and self.latency_ms is not None else []
        hw = self.hw_decode and "hw_decoders_any" not in _keys(existing)  # the user's own choice wins
        ours += [f"hw_decoders_any;{HW_DECODERS}"] if hw else []
        if not ours:
            return None
        # Setting the variable at all drops OpenCV's own RTSP default: keep it.
        kept = [existing] if existing else ["rtsp_flags;prefer_tcp"] if rtsp and not self.rtsp_transport else []
        return "|".join(kept + ours)


def _keys(options: str | None) -> set[str]:
    return {pair.split(";", 1)[0].strip() for pair in (options or "").split("|") if pair.strip()}


def is_rtsp(url: str) -> bool:
    return url.split("://", 1)[0].lower() in RTSP_SCHEMES if "://" in url else False


def open_ffmpeg(target: str, options: CaptureOptions, params: list[int] | tuple = ()):
    """``cv2.VideoCapture(target, CAP_FFMPEG, params + hardware decoding)``, opened or not (the caller
    checks), with ``options``' settings in the environment for the open only: one such open at a time,
    from any thread, and what was there is put back, also when the open fails."""
    import cv2

    all_params = [*params, *([cv2.CAP_PROP_HW_ACCELERATION, cv2.VIDEO_ACCELERATION_ANY] if options.hw_decode else [])]
    env = options.ffmpeg_options(target, os.environ.get(ENV_VAR))
    if env is None:
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, all_params)
    with _env_lock:
        before = os.environ.get(ENV_VAR)
        os.environ[ENV_VAR] = env
        try:
            return cv2.VideoCapture(target, cv2.CAP_FFMPEG, all_params)
        finally:
            if before is None:
                del os.environ[ENV_VAR]
            else:
                os.environ[ENV_VAR] = before


def acceleration_used(capture) -> str:
    """The decoder's acceleration as OpenCV reports it after the open: none, cuda, vaapi, d3d11, mfx, drm."""
    import cv2

    value = capture.get(cv2.CAP_PROP_HW_ACCELERATION)
    return acceleration_names().get(int(value), f"unknown ({int(value)})") if math.isfinite(value) else "none"


def hw_decode_record(options: CaptureOptions, capture) -> dict:
    """summary.json's ``hw_decode``: whether it was asked for, and the acceleration the decoder uses."""
    return {"requested": options.hw_decode, "used": acceleration_used(capture)}
