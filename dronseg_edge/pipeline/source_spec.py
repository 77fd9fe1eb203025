"""``open_source``: the Source a spec names (a camera index, GStreamer pipeline, ``csi://N``, URL, folder,
glob, image or video path), with the capture options checked against what it is.

Its own module: GStreamer sources (gstreamer.py) build on sources.py's CaptureSource, and this chooses
among both.
"""

from __future__ import annotations

import logging
import os
import re
from functools import partial
from pathlib import Path
from urllib.parse import unquote

from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from dronseg_edge.pipeline import gstreamer
from dronseg_edge.pipeline.capture_options import CaptureOptions, is_rtsp
from dronseg_edge.pipeline.image_sources import ImageSource
from dronseg_edge.pipeline.source_base import SOURCE_HELP, Source, shown_url, split_url
from dronseg_edge.pipeline.sources import STREAM_SCHEMES, CameraSource, StreamSource, VideoSource

log = logging.getLogger(__name__)


def open_source(spec, reconnect_s: float = 30.0, capture: CaptureOptions | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Source:
    """The source named by ``spec``: a Source, camera index, GStreamer pipeline, ``csi://N``, URL,
    folder, glob, image or video path. ``capture``: how FFmpeg opens video files and URLs (RTSP
    transport and latency for rtsp:// only, hardware decoding); a DronsegError where it cannot apply.
    ``max_pixels``: images above it (read from their headers) are skipped, video and stream frames refused (``--max-pixels``)."""
    if isinstance(spec, Source):
        return spec.unread()
    # a list of frames was OSError "File name too long"; True was camera 1 (a bool is an int)
    if isinstance(spec, bool) or not isinstance(spec, (str, int, os.PathLike)):
        raise DronsegError(f"source: a {type(spec).__name__} is not a source: {SOURCE_HELP} (frames in memory: Segmenter.stream)")
    options, text = capture or CaptureOptions(), str(spec)
    shown = shown_url(text)  # in messages and outputs: rtsp://user:***@cam/1
    path = Path(os.path.expanduser(text))  # not Path.expanduser: './~x' would look up a user 'x'
    scheme = text.split("://", 1)[0].lower() if "://" in text else None
    ffmpeg = False  # whether FFmpeg decodes it (--hw-decode applies)
    device = re.fullmatch(r"/dev/video(\d+)", text)  # a V4L2 camera by its device, as `v4l2-ctl` names it
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit() and not Path(spec).exists()) or device:
        index = int(device.group(1)) if device else int(spec)
        what, make = "a camera index (V4L2)", partial(CameraSource, index, reconnect_s)
    elif scheme == "file":  # before the pipeline test: a file's name may hold '!'
        if not _local_file(text).exists():  # a missing file, not a stream that may come up later
            raise DronsegError(f"source {text}: no such file {_local_file(text)}: {SOURCE_HELP}")
        # FFmpeg's file protocol decodes no %XX and takes no host: the path itself, the URL as the name
        what, ffmpeg = "a file:// stream", True
        make = partial(StreamSource, f"file:{_local_file(text)}", reconnect_s, capture=options, name=text)
    elif gstreamer.is_pipeline(text) and not path.exists():
        what = ("a GStreamer pipeline, which chooses its own decoder and transport "
                "(rtspsrc protocols=tcp latency=N; nvv4l2decoder on a Jetson)")
        make = partial(gstreamer.GStreamerSource, text, reconnect_s)
    elif scheme == "csi":
        what = "a CSI camera"
        make = lambda: gstreamer.GStreamerSource(  # noqa: E731
            gstreamer.csi_pipeline(text), reconnect_s, name=text, kind="camera")
    elif scheme:
        if scheme not in STREAM_SCHEMES:
            raise DronsegError(f"source {shown}: scheme {scheme}:// is not supported; use one of "
                               f"{', '.join(STREAM_SCHEMES)}, or csi://N")
        what, ffmpeg, make = f"a {scheme}:// stream", True, partial(StreamSource, text, reconnect_s, capture=options)
    elif path.is_dir():
        what, make = "an image folder", partial(ImageSource.from_folder, path, max_pixels)
    elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        what, make = "an image", partial(ImageSource, [path], str(path), max_pixels)
    elif path.is_file():
        what, ffmpeg, make = "a video file", True, partial(VideoSource, path, capture=options, max_pixels=max_pixels)
    elif any(ch in text for ch in "*?["):  # quoted for the shell, so its ~ is expanded here
        what, make = "images", partial(ImageSource.from_glob, os.path.expanduser(text), max_pixels)
    elif path.is_fifo():  # a pipe another program writes a video into: read as a stream that ends when it closes
        what, ffmpeg, make = "a pipe (FIFO)", True, partial(_pipe, path, reconnect_s, options)
    elif path.exists():
        raise DronsegError(f"source {text} is not a regular file or folder (a device; a camera is /dev/videoN or "
                           f"its index): {SOURCE_HELP}")
    else:
        raise DronsegError(f"source {text} does not exist: {SOURCE_HELP}")
    _check_capture_options(options, shown, what, ffmpeg)
    source = make()
    source.max_pixels = max_pixels  # a video file's is checked at its header (VideoSource), a stream's at each frame
    return source


def _pipe(path: Path, reconnect_s: float, options: CaptureOptions) -> Source:
    """A pipe read as a stream whose close is its end, never reopened: the open of a pipe without a writer waits
    for one with no timeout, and no read timeout reaches a pipe either (FFmpeg reads it in one blocking call)."""
    source = StreamSource(f"file:{path}", reconnect_s, capture=options, name=f"file://{path}")
    source.is_file, source.read_timeout_s = True, None
    return source


def _local_file(url: str) -> Path:
    """The path of a ``file://`` URL (``file:///tmp/a%20b.mp4`` -> /tmp/a b.mp4)."""
    parts = split_url(url, "source")
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
