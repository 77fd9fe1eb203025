"""``open_source``: the Source a spec names (a camera index, GStreamer pipeline, ``csi://N``, URL, folder,
glob, image or video path), with the capture options checked against what it is.

Its own module: GStreamer sources (gstreamer.py) build on sources.py's CaptureSource, and this chooses
among both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from dronseg_edge.pipeline import gstreamer
from dronseg_edge.pipeline.capture_options import CaptureOptions, is_rtsp
from dronseg_edge.pipeline.image_sources import ImageSource
from dronseg_edge.pipeline.source_base import SOURCE_HELP, Source
from dronseg_edge.pipeline.sources import STREAM_SCHEMES, CameraSource, StreamSource, VideoSource

log = logging.getLogger(__name__)


def open_source(spec, reconnect_s: float = 30.0, capture: CaptureOptions | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Source:
    """The source named by ``spec``: a Source, camera index, GStreamer pipeline, ``csi://N``, URL,
    folder, glob, image or video path. ``capture``: how FFmpeg opens video files and URLs (RTSP
    transport and latency for rtsp:// only, hardware decoding); a DronsegError where it cannot apply.
    ``max_pixels``: images above it (read from their headers) are skipped (``--max-pixels``)."""
    if isinstance(spec, Source):
        return spec
    options = capture or CaptureOptions()
    text = str(spec)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit() and not Path(spec).exists()):
        _check_capture_options(options, text, "a camera index (V4L2)")
        return CameraSource(int(spec), reconnect_s)
    if gstreamer.is_pipeline(text) and not Path(text).expanduser().exists():
        _check_capture_options(options, text, "a GStreamer pipeline, which chooses its own decoder and transport "
                                              "(rtspsrc protocols=tcp latency=N; nvv4l2decoder on a Jetson)")
        return gstreamer.GStreamerSource(text, reconnect_s)
    if text.lower().startswith("csi://"):
        _check_capture_options(options, text, "a CSI camera")
        _, pipeline = gstreamer.csi_pipeline(text)
        return gstreamer.GStreamerSource(pipeline, reconnect_s, name=text, kind="camera")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in STREAM_SCHEMES:
            raise DronsegError(f"source {text}: scheme {scheme}:// is not supported; use one of "
                               f"{', '.join(STREAM_SCHEMES)}, or csi://N")
        if scheme == "file" and not _local_file(text).exists():  # a missing file, not a stream that may come up later
            raise DronsegError(f"source {text}: no such file {_local_file(text)}: {SOURCE_HELP}")
        _check_capture_options(options, text, f"a {scheme}:// stream", ffmpeg=True)
        return StreamSource(text, reconnect_s, capture=options)
    path = Path(text).expanduser()
    if path.is_dir():
        _check_capture_options(options, text, "an image folder")
        return ImageSource.from_folder(path, max_pixels)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            _check_capture_options(options, text, "an image")
            return ImageSource([path], str(path), max_pixels)
        _check_capture_options(options, text, "a video file", ffmpeg=True)
        return VideoSource(path, capture=options)
    if any(ch in text for ch in "*?["):
        _check_capture_options(options, text, "images")
        return ImageSource.from_glob(text, max_pixels)
    raise DronsegError(f"source {text} does not exist: {SOURCE_HELP}")


def _local_file(url: str) -> Path:
    """The path of a ``file://`` URL (``file:///tmp/a%20b.mp4`` -> /tmp/a b.mp4)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    return Path(unquote(parts.path if parts.netloc in ("", "localhost") else f"//{parts.netloc}{parts.path}"))


def _check_capture_options(options: CaptureOptions, source: str, what: str, ffmpeg: bool = False) -> None:
    """RTSP flags on a source that is not rtsp:// are a mistake (an error); --hw-decode on a source
    FFmpeg does not decode (``ffmpeg``) has no effect (a warning)."""
    given = options.rtsp_options_given
    if given and not is_rtsp(source):
        verb, pronoun = ("apply", "them") if len(given) > 1 else ("applies", "it")
        raise DronsegError(f"{' and '.join(given)} {verb} to rtsp:// sources only, and {source} is {what}: "
                           f"drop {pronoun}")
    if options.hw_decode and not ffmpeg:
        log.warning("--hw-decode has no effect on %s, %s: it applies to video files and streams FFmpeg decodes",
                    source, what)
