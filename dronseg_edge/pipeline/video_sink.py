"""The overlay video sink (:class:`VideoSink`): the source's timeline, the files and their names;
the encoding itself is :mod:`~dronseg_edge.pipeline.video_writer`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import numpy as np

from dronseg_edge.atomic import storage_failure
from dronseg_edge.errors import RuntimeFailure
from dronseg_edge.pipeline.overlay import OverlayPlan
from dronseg_edge.pipeline.result import Result
from dronseg_edge.pipeline.sinks import Sink
from dronseg_edge.pipeline.video_writer import VideoWriter, encoders_for, even_size, open_video_writer
from dronseg_edge.sizes import format_size

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
MAX_FILL_S = 10.0  # longest gap filled with the previous overlay; a longer one is cut short
# A fragmented file's new fragments are flushed to the disk (fsync) at most this often, so a power cut
# loses about this much more than a kill does; an fsync on an eMMC or SD card takes tens of ms.
SYNC_EVERY_S = 1.0


class VideoSink(Sink):
    """The overlay video (mp4, the input's fps and size), written to ``.NAME.partial.mp4``. A
    fragmented MP4 (PyAV) plays up to its last fragment while it is written, so it takes its final
    name once its first fragment (a second of video) is on disk: a run killed mid-way leaves
    ``overlay.mp4`` playable up to its last second. OpenCV's mp4v file plays only once closed: it is
    renamed by ``close()``.
    ``codec``: a ``--codec`` choice (:data:`~dronseg_edge.pipeline.video_writer.VIDEO_CODECS`);
    ``auto`` is H.264 where PyAV is installed, else mp4v.

    Frames that were not segmented (--stride, frames dropped in --live mode, damaged frames) are
    filled with the previous overlay, so the video keeps the source's timeline and plays at its
    speed. ``by_time`` (video files, whose frames carry the container's times; live sources without a rate, such as
    an HTTP camera's MJPEG, by the clock at each frame's arrival): the times place each
    frame, as ffmpeg's ``-fps_mode cfr`` does, so a variable-rate file (phones, some drones) keeps its
    timeline at the rate its header gives: a frame is repeated where the next comes late, left out
    where it comes before its place; elsewhere the frames' indices place them.

    A frame of another size or rate (a stream reopened at another resolution or frame rate, ``Result.fps``) starts a
    new file, as one video holds one size and plays at one rate: ``NAME.mp4``, then ``NAME_00001.mp4``, ...
    (``segments`` lists them, each with where it starts in the source's timeline).

    ``segment_s`` (``--segment-s``): the video is cut into ``NAME_00000.mp4``, ``NAME_00001.mp4``, ...
    of that many seconds of the video's timeline each, every one finished and renamed as soon as it
    is full, so a recording killed or powered off mid-way loses its current segment only.
    """

    name = "video"

    def __init__(self, path: Path, fps: float | None, overlay: OverlayPlan, codec: str = "auto",
                 segment_s: float | None = None, by_time: bool = False):
        super().__init__()
        self.path = self.target = Path(path)
        if fps is None:
            log.warning("the source reports no frame rate; the overlay video is written at %g fps", DEFAULT_FPS)
        self.fps = fps or DEFAULT_FPS
        encoders_for(codec)  # an explicit --codec this machine cannot write fails now, not at the first frame
        self.overlay, self.requested_codec, self.by_time = overlay, codec, by_time
        self.segment_s = segment_s
        self.segments: list[dict] = []  # finished files: {"file": name, "frames": n, "start_s": seconds}
        self.size: tuple[int, int] | None = None
        self.codec: str | None = None  # the encoder writing the video (libx264, h264_nvenc, mp4v, ...)
        self._writer: VideoWriter | None = None  # its path: the file's working name, then its final one
        self._header_bytes = 0  # the current file's size before its first frame (a fragmented MP4's empty index)
        self._synced_bytes, self._synced_at = 0, -SYNC_EVERY_S  # its size at its last fsync, and when (monotonic s)
        self._closed, self.video_frames = False, 0
        self._unwritten = 0  # frames of the timeline in no file (at the video's rate): the gap before a new file
        self._last: tuple[int, np.ndarray, float | None] | None = None  # the last frame's index, overlay and time
        self._origin: tuple[float, int] | None = None  # a frame's time and place in the video that later ones follow
        self.end_index: int | None = None  # the source's frame count, once read to its end: close() fills up to it
        self.end_time: float | None = None  # and its last frame's time

    @property
    def segment_frames(self) -> int | None:
        return max(1, round(self.segment_s * self.fps)) if self.segment_s else None

    def _final_path(self, number: int) -> Path:
        if self.segment_frames is None and number == 0:
            return self.path
        return self.path.with_name(f"{self.path.stem}_{number:05d}{self.path.suffix}")

    def _write(self, result: Result) -> None:
        image = self.overlay.image(result)
        size, rate = (image.shape[1], image.shape[0]), result.fps or self.fps
        if self.size is not None and (size, rate) != (self.size, self.fps):
            if self._writer is not None:
                self._finish_file()
            # No filling the new size's file with the old size's overlay; it starts where this frame belongs
            self._unwritten += max(self._copies(result.index, result.timestamp), 0) if self._last is not None else 0
            self._last = None
            log.warning("frame %d is %dx%d at %g fps, the video %dx%d at %g fps: the overlay video goes on in a new "
                        "file, %s", result.index, *size, rate, *self.size, self.fps,
                        self._final_path(len(self.segments)).name)
            # the timeline so far, in frames at the new rate: where the next files start (_finish_file)
            self._unwritten = (self.video_frames + self._unwritten) * rate / self.fps - self.video_frames
        self.size, self.fps = size, rate
        copies = self._copies(result.index, result.timestamp) if self._last is not None else 0
        if self._last is None:
            self._origin = None if result.timestamp is None else (result.timestamp, self.video_frames)
        for _ in range(copies):
            self._emit(self._last[1])
        if copies >= 0:  # else its place in the video is taken: left out, as ffmpeg's -fps_mode cfr does
            self._emit(image)
        self._last = (result.index, image, result.timestamp)

    def _copies(self, index: int, now: float | None) -> int:
        """How often the last overlay fills in before frame ``index`` at time ``now`` (-1: it comes before its place,
        which the last frame holds): as the frames' times say where they have them (a variable-rate
        source's frames are not evenly spaced: its video keeps their times from the first frame on,
        ``_origin``), else as their indices do; at most MAX_FILL_S seconds."""
        cap, (last_index, _, last_time) = int(self.fps * MAX_FILL_S), self._last
        if self.by_time and now is not None and self._origin is not None and last_time is not None and now > last_time:
            start, frames = self._origin
            copies = frames + round((now - start) * self.fps) - self.video_frames
            if copies <= cap:
                return max(copies, -1)
            copies = cap
        else:
            copies = max(min(index - last_index - 1, cap), 0)
        self._origin = None if now is None else (now, self.video_frames + copies)  # times go on from here
        return copies

    def _emit(self, image: np.ndarray) -> None:
        """One frame of the video's timeline, into the current file (opened, or finished when full)."""
        if self._writer is None:
            final = self._final_path(len(self.segments))
            self._writer = open_video_writer(final.with_name(f".{final.stem}.partial{final.suffix}"), self.size, self.fps,
                                             self.requested_codec)
            self.codec = self._writer.codec
            self._header_bytes, self._synced_bytes, self._synced_at = _size(self._writer.path), 0, -SYNC_EVERY_S
        self._writer.write(image)
        self.video_frames += 1
        if self._writer.fragmented:
            self._keep_fragments()
        if self.segment_frames is not None and self._writer.frames >= self.segment_frames:
            self._finish_file()

    def _keep_fragments(self) -> None:
        """A fragmented file's complete fragments survive a kill once written, and a power cut once on
        the disk itself: the file takes its final name with its first fragment (from then on it
        plays), and what it holds is flushed to the disk (fsync) at most once a second."""
        size = _size(self._writer.path)
        if size <= self._header_bytes:
            return  # no complete fragment yet
        if self._writer.path.name.startswith("."):
            final = self._final_path(len(self.segments))
            # The open file's descriptor follows it on POSIX; where the system refuses (Windows keeps open
            # files in place) it stays put and is renamed when finished. Then the new name itself is synced
            # (some file systems cannot sync a folder).
            with contextlib.suppress(OSError):
                os.replace(self._writer.path, final)
                self._writer.path = final
                _fsync(final.parent)
        elif size == self._synced_bytes or time.monotonic() - self._synced_at < SYNC_EVERY_S:
            return
        _fsync(self._writer.path)
        self._synced_bytes, self._synced_at = size, time.monotonic()

    def _finish_file(self) -> None:
        """Close the current file and rename it to its final name; an empty one is removed."""
        writer, tmp = self._writer, self._writer.path
        self._writer = None
        final = self._final_path(len(self.segments))
        try:
            writer.close()
        except Exception as exc:  # FFmpegError, OSError: the end or the index could not be written
            raise self._unfinished(exc, writer, tmp, final) from None
        if writer.frames == 0:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        if tmp != final:
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise storage_failure(exc, final) from None
        start = self.video_frames + self._unwritten - writer.frames  # in frames of the source's timeline
        self._add_segment(final, writer.frames, round(start / self.fps, 3))

    def _add_segment(self, final: Path, frames: int | None, start_s: float | None) -> None:
        # the file's own size: yuv420p crops an odd side (video_writer.even_size)
        self.segments.append({"file": final.name, "frames": frames, "start_s": start_s, "size": format_size(even_size(self.size))})

    def _unfinished(self, exc: Exception, writer: VideoWriter, tmp: Path, final: Path) -> RuntimeFailure:
        """The error for a file whose end could not be written: a fragmented one is kept (it plays up
        to its last fragment), an mp4v one is removed (without its index it does not play at all)."""
        if writer.fragmented and tmp == final and writer.frames:
            fate = "could not be finished: it plays up to its last complete second"
            self._add_segment(final, None, None)
        else:
            fate = "could not be finished and is lost"
            with contextlib.suppress(OSError):
                tmp.unlink()
        cause = storage_failure(exc, final) if isinstance(exc, OSError) else None
        return RuntimeFailure(f"{cause} (video {final.name} {fate})" if cause else
                              f"cannot finish video {final}: {exc} ({fate}); free some space or choose another --out",
                              stopped=cause.stopped if cause else "write_failed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.end_index is not None and self._last is not None and self.end_index - 1 > self._last[0]:
            for _ in range(self._copies(self.end_index - 1, self.end_time) + 1):  # to the last frame's place, with it
                self._emit(self._last[1])
        if self._writer is not None:
            self._finish_file()

    def outputs(self) -> dict:
        files = [str(self.path.with_name(segment["file"])) for segment in self.segments]
        return {"video": files if self.segment_frames is not None or len(files) > 1 else files[0]} if files else {}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
