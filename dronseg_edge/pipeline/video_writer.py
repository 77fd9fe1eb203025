"""Writing the overlay video: H.264 in MP4 that plays everywhere, through PyAV where it is installed.

``--codec auto`` tries NVIDIA's ``h264_nvenc`` (GPU, near-free), then ``libx264`` (CPU, preset
veryfast), then OpenCV's ``mp4v`` (MPEG-4 Part 2: browsers and many players cannot play it, but every
OpenCV wheel writes it); on a Jetson a GStreamer encoder comes first (``nvv4l2h264enc``, the
hardware's, else ``x264enc``: :mod:`dronseg_edge.gst_encoders`, :class:`OpenCVWriter`). The
registry's OpenCV wheels cannot write H.264 at all (docs/facts.md#pipeline-timings), hence PyAV,
whose wheels carry FFmpeg with libx264 and NVENC. :class:`PyAVOutput` is the one owner of PyAV's
encoder set-up and close, for this file and the live streams (pipeline/live_encoder.py).

H.264 files are yuv420p (the only pixel format every decoder plays) in *fragmented* MP4: an empty
index at the front, then fragments (each its own small index and its frames) of at most a second
of video. A process killed mid-run (SIGKILL, the out-of-memory killer, a drone's battery running
out) leaves a file that plays up to its last written fragment; a plain MP4, which writes its index
at the end, does not play at all. No plain (faststart) copy is made at the end: that rewrites the
whole file, doubling the disk it needs when the disk may be nearly full. OpenCV's ``mp4v`` writer
cannot write fragments (it passes no options to the MP4 muxer): its file plays only once closed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from dronseg_edge import gst_encoders
from dronseg_edge.errors import DronsegError
from dronseg_edge.option_fields import one_of
from dronseg_edge.gst_encoders import FILE_BITS_PER_PIXEL, GST_ENCODERS, encoder_chain, open_gst_writer
from dronseg_edge.media import native_name
from dronseg_edge.pipeline.disk_space import FINISH_BYTES, INDEX_BYTES_PER_FRAME, ensure_room

log = logging.getLogger(__name__)

# --codec -> the encoders tried, best first: each is opened in turn and the first that opens is used.
# On a Jetson, auto and h264 try its GStreamer encoder first (gst_encoders.jetson_encoder).
ENCODERS = {"auto": ("h264_nvenc", "libx264", "mp4v"), "h264": ("h264_nvenc", "libx264"),
            **{name: (name,) for name in ("h264_nvenc", "libx264", "mp4v")}, "hevc": ("hevc_nvenc", "libx265"),
            **{name: (name,) for name in GST_ENCODERS}}
VIDEO_CODECS = tuple(ENCODERS)
# Constant quality rather than a bitrate: the overlay's flat colour regions cost little, the
# source's texture a lot, and a fixed bitrate would be wrong for one of the two.
ENCODER_OPTIONS = {
    "libx264": {"preset": "veryfast", "crf": "23"},
    "libx265": {"preset": "veryfast", "crf": "26", "x265-params": "log-level=error"},
    "h264_nvenc": {"preset": "p4", "rc": "vbr", "cq": "23"},
    "hevc_nvenc": {"preset": "p4", "rc": "vbr", "cq": "26"},
}
INSTALL_H264 = "pip install 'dronseg-edge[video]'"
FRAGMENT_S = 1.0  # a fragment every this many seconds of video at most: what a kill loses, plus the encoder's delay
# A moov without samples first, then a fragment at each keyframe and after FRAGMENT_S at the latest
# (frag_duration, in microseconds: a keyframe every second instead would cost bitrate, 1.6x at two
# seconds on a textured 720p test clip). delay_moov: the moov waits for the first fragment, so it can
# hold the edit list that starts the video at 0 despite the B-frames' delay (without it the first
# frame shows 2 frame durations late: 10 s at 0.2 fps); default_base_moof: offsets relative to each
# fragment, as browsers' Media Source Extensions want; flush_packets: hand each finished fragment
# to the system at once (FFmpeg otherwise holds up to 32 KiB in its buffer, where a kill loses it).
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof",
                  "frag_duration": str(int(FRAGMENT_S * 1e6)), "flush_packets": "1"}


def _import_av():
    """PyAV, or None where it is not installed (it is the optional `video` extra)."""
    try:
        import av
    except ImportError:
        return None
    return av


@functools.lru_cache(maxsize=None)
def encoder_opens(name: str) -> bool:
    """Whether PyAV's FFmpeg can open encoder ``name`` here (NVENC needs an NVIDIA GPU and driver).

    Opened once per process on a small frame; about a millisecond when it fails.
    """
    if _import_av() is None:
        return False
    try:  # opened as a run opens it (x265's banner stays quiet with its options); FFmpeg's null muxer writes nothing
        PyAVOutput(os.devnull, "null", name, (256, 144), 30.0, ENCODER_OPTIONS.get(name, {})).close()
    except Exception:  # UnknownCodecError, or an FFmpegError from avcodec_open2: no such device
        return False
    return True


def encoders_for(codec: str) -> list[str]:
    """The encoders ``--codec codec`` can use on this machine, best first.

    Raises DronsegError for an unknown choice, or an explicit one that cannot work here, so a run
    fails before it starts instead of at its first frame.
    """
    one_of(codec, "--codec", VIDEO_CODECS, ": pick one (auto chooses the best here)")
    wanted = ENCODERS[codec]
    if codec in GST_ENCODERS:
        if not gst_encoders.encoder_opens(codec):
            raise DronsegError(f"--codec {codec}: OpenCV's GStreamer cannot open {codec} here (it needs an OpenCV "
                               "built with GStreamer, as JetPack's, and the element installed): use --codec auto")
        return [codec]
    jetson = gst_encoders.jetson_encoder() if codec in ("auto", "h264") else None
    if "mp4v" not in wanted and jetson is None and _import_av() is None:
        raise DronsegError(f"--codec {codec} needs PyAV, which is not installed: {INSTALL_H264}, "
                           "or use --codec mp4v")
    usable = ([jetson] if jetson else []) + [name for name in wanted if name == "mp4v" or encoder_opens(name)]
    if not usable:
        hint = "use --codec libx264 (CPU) or auto" if codec.endswith("nvenc") else "use --codec auto"
        raise DronsegError(f"--codec {codec}: no {' or '.join(wanted)} encoder opens on this machine "
                           f"(NVENC needs an NVIDIA GPU and driver): {hint}")
    return usable


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """yuv420p needs even sides: ``size`` rounded down to them (at least 2x2)."""
    return max(2, size[0] - size[0] % 2), max(2, size[1] - size[1] % 2)


class PyAVOutput:
    """One yuv420p video stream that PyAV's FFmpeg encodes into ``url`` (a file or a network address) in
    container ``format``: the one owner of PyAV's set-up and end, for the overlay video and the live
    streams. ``stream_attrs`` are set on the stream (``codec_tag``, ``bit_rate``)."""

    def __init__(self, url: str, format: str, encoder: str, size: tuple[int, int], fps: float, options: dict,
                 container_options: dict | None = None, **stream_attrs):
        av = _import_av()
        self._frame_from = av.VideoFrame.from_ndarray
        # 29.97 fps sources report 29.97002997...: keep their exact 30000/1001 rate (and 0.2 fps its 1/5).
        self.rate = Fraction(fps).limit_denominator(1001)
        self._container = av.open(url, "w", format=format, options=dict(container_options or {}))
        try:
            self._stream = self._container.add_stream(encoder, rate=self.rate, options=dict(options))
            self._stream.width, self._stream.height = size
            self._stream.pix_fmt = "yuv420p"
            for name, value in stream_attrs.items():
                setattr(self._stream, name, value)
            self._container.start_encoding()  # opens the encoder (and connects) now: a refusal fails here, not mid-run
        except BaseException:
            with contextlib.suppress(Exception):
                self._container.close()
            raise
        self._closed = False

    def _encode(self, frame_bgr: np.ndarray | None, pts: int | None = None, key: bool = False) -> list:
        """Encode one (H, W, 3) uint8 BGR frame (None: flush the delayed ones; ``key``: as a keyframe)
        and mux its packets; returns them."""
        frame = None
        if frame_bgr is not None:
            frame = self._frame_from(np.ascontiguousarray(frame_bgr), format="bgr24")
            frame.pts = pts
            if key:  # PictureType is an av.enum in PyAV 12 and an IntEnum from 13 on: .I names it in both
                frame.pict_type = _import_av().video.frame.PictureType.I
        packets = self._stream.encode(frame)
        for packet in packets:
            self._container.mux(packet)
        return packets

    def close(self) -> None:
        """Flush the encoder's delayed frames (B-frames, lookahead), then close the container (for a
        fragmented MP4: a last fragment and the random-access index, mfra). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._encode(None)
        finally:
            self._container.close()  # even after a failed flush: what was muxed so far stays playable


class VideoWriter:
    """An open video file of BGR uint8 frames of one (W, H) ``size``: ``write`` each frame, ``close``
    finalises it (idempotent; OSError when its end or index cannot be written), after which it plays
    up to the last frame written."""

    fragmented = False  # plays up to its last fragment while written (so it may be written under its final name)

    def __init__(self, path: Path, codec: str):
        self.path, self.codec = Path(path), codec  # the encoder actually used, as recorded in summary.json
        self.frames = 0

    def write(self, frame_bgr: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 BGR frame of ``size``.

        OSError(ENOSPC) before writing when the frame (at most its raw size) and the finished index
        would not fit; the file can then still be closed, playable up to the frame before.
        """
        ensure_room(self.path, frame_bgr.nbytes + FINISH_BYTES + INDEX_BYTES_PER_FRAME * self._index_entries())
        self._write(frame_bgr)
        self.frames += 1

    def _index_entries(self) -> int:
        """Index entries still to be written, this frame's included: all of them (mp4v writes its index at the end)."""
        return self.frames + 1


class PyAVWriter(PyAVOutput, VideoWriter):
    """H.264/H.265 in fragmented MP4 through PyAV (a fragment a second at most: playable up to the last
    one written however the process ends); frames are converted to yuv420p by the encoder's scaler.

    yuv420p stores colour at half resolution, so both sides must be even: an odd frame loses its
    last column and/or row (cropped, not resized, so every pixel stays where the masks have it).
    """

    fragmented = True

    def __init__(self, path: Path, size: tuple[int, int], fps: float, encoder: str):
        VideoWriter.__init__(self, path, encoder)
        self.video_size = even_size(size)
        if min(size) < 2:
            raise DronsegError(f"frames of {size[0]}x{size[1]} are too small for a video; use --no-save-video")
        # Apple players refuse H.265 in MP4 under the default hev1 tag.
        tag = {"codec_tag": "hvc1"} if encoder in ("libx265", "hevc_nvenc") else {}
        PyAVOutput.__init__(self, native_name(path), "mp4", encoder, self.video_size, fps, ENCODER_OPTIONS.get(encoder, {}),
                            FRAGMENTED_MP4, **tag)
        if self.video_size != size:
            cut = " and ".join(side for side, odd in (("last column", size[0] % 2), ("last row", size[1] % 2)) if odd)
            log.warning("frames are %dx%d and yuv420p video needs even sides: the video is %dx%d (%s cropped)",
                        *size, *self.video_size, cut)

    def _index_entries(self) -> int:
        """A fragment writes its own index with it: what is left at the end is the current fragment's (a second
        of frames at most) and one entry per fragment in the closing random-access index."""
        per_fragment = max(1, round(float(self.rate) * FRAGMENT_S))
        return per_fragment + self.frames // per_fragment + 1

    def _write(self, frame_bgr: np.ndarray) -> None:
        try:
            self._encode(frame_bgr[:self.video_size[1], :self.video_size[0]])
        except OSError:
            raise  # av.error.OSError: the disk, not the encoder (the sink names the path and the free space)
        except _import_av().FFmpegError as exc:
            raise DronsegError(f"encoding {self.path} with {self.codec} failed: {exc}; "
                               "try --codec mp4v or --no-save-video") from None


class OpenCVWriter(VideoWriter):
    """A file through OpenCV's VideoWriter: MPEG-4 Part 2 (``mp4v``, the fallback without PyAV), or
    H.264 in fragmented MP4 through its GStreamer backend (``nvv4l2h264enc``, a Jetson's hardware
    encoder, or ``x264enc``: ``appsrc ! encoder ! mp4mux ! filesink``).

    OpenCV's writer tells nothing but whether it opened, not whether a fragment reached the disk, so
    the file keeps its working name until finished (``fragmented = False``).
    """

    def __init__(self, path: Path, size: tuple[int, int], fps: float, encoder: str):
        super().__init__(path, encoder)
        if encoder != "mp4v":
            self.pipeline = gst_file_pipeline(path, encoder, size, fps)
            self._writer = open_gst_writer(self.pipeline, size, fps)
            return
        self._writer = cv2.VideoWriter(native_name(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self._writer.isOpened():
            raise OSError(f"OpenCV cannot open an mp4v writer for {path}")

    def _write(self, frame_bgr: np.ndarray) -> None:
        self._writer.write(np.ascontiguousarray(frame_bgr))  # never raises: a failed write is only a log line

    def close(self) -> None:
        """Release the writer (GStreamer: end of stream, mp4mux finishes the file); then check mp4v's
        index was written: OpenCV reports no write error at all."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        # An MP4 without its index (moov, written at the end) does not open, whichever backend wrote it.
        if self.codec == "mp4v" and self.frames and not cv2.VideoCapture(native_name(self.path)).isOpened():
            raise OSError(errno.EIO, "the video's index could not be written (OpenCV's writer reports no "
                                     "error: the disk was probably full)", str(self.path))


def gst_file_pipeline(path: Path, encoder: str, size: tuple[int, int], fps: float) -> str:
    """The GStreamer pipeline that writes a fragmented MP4 at ``path`` from OpenCV's (W, H) ``size`` frames."""
    text = str(path)
    if '"' in text or "\\" in text:
        raise DronsegError(f"cannot name {path} in a GStreamer pipeline (a quote or backslash in it): "
                           "choose another --out, or --codec libx264")
    kbps = max(500, round(size[0] * size[1] * fps * FILE_BITS_PER_PIXEL / 1000))
    chain = encoder_chain(encoder, round(fps * FRAGMENT_S), kbps, live=False)
    return f'appsrc ! {chain} ! mp4mux fragment-duration={int(FRAGMENT_S * 1000)} ! filesink location="{text}"'


def open_video_writer(path: Path, size: tuple[int, int], fps: float, codec: str = "auto") -> VideoWriter:
    """Open ``path`` for (W, H) ``size`` frames at ``fps`` with the first encoder of ``--codec codec``
    that opens at this size.

    An encoder can pass the small probe and still refuse a size (NVENC has a maximum), so each is
    tried for real. DronsegError when none opens.
    """
    failures = []
    for encoder in encoders_for(codec):
        try:
            writer = (OpenCVWriter if encoder in ("mp4v", *GST_ENCODERS) else PyAVWriter)(path, size, fps, encoder)
        except DronsegError:
            raise
        except Exception as exc:  # FFmpegError, OSError: try the next encoder
            failures.append(f"{encoder}: {exc}")
            with contextlib.suppress(OSError):
                Path(path).unlink()
            log.info("encoder %s does not open for %dx%d (%s)", encoder, *size, exc)
            continue
        if encoder == "mp4v" and codec != "mp4v":
            fix = (f"PyAV is not installed; for H.264: {INSTALL_H264}" if _import_av() is None else
                   "this PyAV's FFmpeg has no H.264 encoder; for H.264: pip install --force-reinstall av "
                   "(PyPI's wheels carry libx264)")
            log.warning("the overlay video is MPEG-4 Part 2 (mp4v), which browsers and many players "
                        "cannot play: %s", fix)
        return writer
    raise DronsegError(f"cannot write video {path} ({size[0]}x{size[1]}; {'; '.join(failures)}): "
                       "the folder is not writable or the encoder refuses this size; try --no-save-video")
