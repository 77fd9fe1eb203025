"""Where results go: overlay video or images, class-index mask PNGs, colour masks, confidence PNGs, stats.jsonl.

Each sink runs in its own thread (:class:`~dronseg_edge.pipeline.sink_worker.SinkWorker`) behind a bounded queue: OpenCV and PyAV
release the GIL while encoding, so video encoding and PNG writing proceed in parallel with
inference and with each other, and memory stays flat however long the video.

A write that fails (a full disk, a folder made read-only) becomes one RuntimeFailure naming the
file, the free space and the fix (exit code 5), carried by the worker to the main thread; what was
written before stays whole: images are written under a temporary name and renamed, stats.jsonl is
cut back to its last whole line, and the video is closed playable up to its last frame.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np

from dronseg_edge.atomic import storage_failure, storage_faults
from dronseg_edge.errors import DronsegError
from dronseg_edge.pictures import colorize, fit_width, grid_row, resize_frame, stack_rows
from dronseg_edge.pipeline.overlay import OverlayPlan
from dronseg_edge.pipeline.result import LOW_CONFIDENCE_U8, Result

log = logging.getLogger(__name__)

# Level 1 without row filters: faster than OpenCV's default for class maps, which are mostly long
# runs of one value anyway (docs/facts.md#pipeline-timings).
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_FAST += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
JPEG_QUALITY = [cv2.IMWRITE_JPEG_QUALITY, 90]
JPEG_MAX_SIDE = 65500  # libjpeg's limit: a longer side cannot be encoded


class Sink(ABC):
    """Consumes Results in order; ``close()`` finalises whatever it wrote (idempotent).
    ``target``: the file or folder it writes, named in its errors; ``heavy``: stops at the free-disk
    floor (video, images), where the small outputs (stats) go on; ``lossy``: a live output (a
    stream, the preview) whose worker drops frames rather than slow the run (``queue_dropped``, counted
    by the worker's thread; ``dropped``: by the sink's own, e.g. while a receiver is down)."""

    name = "sink"
    target: Path = Path(".")
    heavy = True
    lossy = False

    def __init__(self):
        self.frames = 0
        self.write_ms = 0.0
        self.dropped = 0
        self.queue_dropped = 0

    @property
    def frames_dropped(self) -> int:
        """Frames given to this sink and not written or sent (a lossy sink's, results' and one left stuck)."""
        return self.dropped + self.queue_dropped

    def write(self, result: Result) -> None:
        start, dropped = time.perf_counter(), self.dropped
        self._write(result)
        self.write_ms += (time.perf_counter() - start) * 1e3
        self.frames += self.dropped == dropped  # not a frame the sink dropped itself (its receiver down or gone)

    @abstractmethod
    def _write(self, result: Result) -> None: ...

    def close(self) -> None:
        pass

    def outputs(self) -> dict[str, str]:
        """What was written: {kind: path} (a live output writes no file)."""
        return {}


def _imwrite(path: Path, image: np.ndarray, params: list[int]) -> None:
    """Encode an image, write it under a temporary name and rename it, so a killed run leaves no half file.

    Not ``cv2.imwrite``: it answers a full disk or a read-only folder with a bare False; Python's own
    write raises the OSError that says which (ENOSPC, EROFS, EACCES), for the one-line error.
    """
    ok, encoded = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise DronsegError(f"OpenCV cannot encode {path} ({image.dtype} {image.shape})")
    stem = os.fsdecode(os.fsencode(path.stem)[:200])  # a 255-byte name has no room for '.' and '.tmp'
    tmp = path.with_name(f".{stem}.tmp{path.suffix}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(encoded)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_failure(exc, path) from None


def open_new(path: Path, exists: str) -> int:
    """A descriptor for writing ``path``, created now; DronsegError ``exists`` when it is there already
    (a run never appends to another's file)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise DronsegError(exists) from None
    except OSError as exc:
        raise storage_failure(exc, path) from None


class MaskSink(Sink):
    """``masks/{name}.png``: single-channel uint8 class indices at the frame's size. The other
    per-frame image sinks differ in ``name`` (their folder's kind), ``suffix``, ``params`` and ``picture``."""

    name, suffix, params = "masks", ".png", PNG_FAST

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = self.target = Path(folder)
        with storage_faults(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)

    def picture(self, result: Result) -> np.ndarray:
        return result.mask

    def _write(self, result: Result) -> None:
        _imwrite(self.folder / f"{result.name}{self.suffix}", self.picture(result), self.params)

    def outputs(self) -> dict[str, str]:
        return {self.name: str(self.folder)}


class ColorMaskSink(MaskSink):
    """``color/{name}.png``: the class map in the palette's colours."""

    name = "color"

    def __init__(self, folder: Path, lut: np.ndarray):
        super().__init__(folder)
        self.lut = lut

    def picture(self, result: Result) -> np.ndarray:
        return colorize(result.mask, self.lut)


class ConfidenceSink(MaskSink):
    """``conf/{name}.png``: single-channel uint8 maximum class probability x 255 (``--save-conf``)."""

    name = "conf"

    def picture(self, result: Result) -> np.ndarray:
        return result.confidence


class OverlayImageSink(MaskSink):
    """``overlay/{name}.jpg``: for image sources, whose sizes may differ (a video cannot hold them)."""

    name, suffix, params = "overlay", ".jpg", JPEG_QUALITY

    def __init__(self, folder: Path, overlay: OverlayPlan):
        super().__init__(folder)
        self.overlay = overlay

    def picture(self, result: Result) -> np.ndarray:
        return self.overlay.image(result)

    def _write(self, result: Result) -> None:
        picture = self.picture(result)
        if max(picture.shape[:2]) <= JPEG_MAX_SIDE:
            return _imwrite(self.folder / f"{result.name}{self.suffix}", picture, self.params)
        log.warning("%s is %dx%d, longer than JPEG's %d px a side: its overlay is a PNG", result.name,
                    picture.shape[1], picture.shape[0], JPEG_MAX_SIDE)
        _imwrite(self.folder / f"{result.name}.png", picture, PNG_FAST)


class ContactSheetSink(Sink):
    """``contact_sheet.jpg``: thumbnails of the first LIMIT overlays in a grid, captioned with their
    names (``--contact-sheet``): a folder of results checked at a glance. Thumbnails are kept (240 px
    wide, at most 480 tall: ~100 kB each), the sheet written once at close, atomically."""

    name = "contact_sheet"
    THUMB_WIDTH, THUMB_HEIGHT = 240, 480  # a tall strip's thumbnail is narrower: no sheet past JPEG's limit
    PER_ROW = 6
    LIMIT = 48

    def __init__(self, path: Path, overlay: OverlayPlan):
        super().__init__()
        self.target = Path(path)
        self.overlay = overlay
        self.thumbs: list[tuple[np.ndarray, str]] = []
        self.written = False

    def _write(self, result: Result) -> None:
        if len(self.thumbs) >= self.LIMIT:
            self.dropped += 1  # not on the sheet: summary.json's frames_written counts those it holds
            return
        image = self.overlay.image(result)
        height, width = image.shape[:2]
        thumb = (fit_width(image, self.THUMB_WIDTH) if height * self.THUMB_WIDTH <= width * self.THUMB_HEIGHT else
                 resize_frame(image, max(1, round(width * self.THUMB_HEIGHT / height)), self.THUMB_HEIGHT))
        self.thumbs.append((thumb, result.name or str(result.index)))

    def close(self) -> None:
        if self.written or not self.thumbs:
            return
        height = max(t.shape[0] for t, _ in self.thumbs)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, self.THUMB_WIDTH - t.shape[1]), (0, 0)), constant_values=32)
                 for t, _ in self.thumbs]
        labels = [label for _, label in self.thumbs]
        rows = [grid_row(tiles[i:i + self.PER_ROW], labels[i:i + self.PER_ROW]) for i in range(0, len(tiles), self.PER_ROW)]
        _imwrite(self.target, stack_rows(rows), JPEG_QUALITY)
        self.written = True  # summary.json names it once it exists

    def outputs(self) -> dict[str, str]:
        return {"contact_sheet": str(self.target)} if self.written else {}


class StatsSink(Sink):
    """``stats.jsonl``: one JSON line per frame (index, timestamp in s, with ``with_file`` the image's
    absolute path as ``file``, share of each class by name; under ``--classes`` only those classes; with
    ``with_confidence`` the share of pixels whose most likely class has a probability below 0.5 as
    ``low_confidence``).

    Each line goes to the file in one unbuffered write, so an interrupted or killed run's file is
    complete up to its last frame; a write that fails part-way (a full disk) is cut back to the
    last whole line before the error is raised.
    """

    name = "stats"
    heavy = False

    def __init__(self, path: Path, with_file: bool = False, with_confidence: bool = False):
        super().__init__()
        self.path = self.target = Path(path)
        self.with_file = with_file
        self.with_confidence = with_confidence
        self._fd: int | None = open_new(self.path, f"cannot create {self.path}: it exists and a run never appends "
                                                   "to another's; choose another --out")

    def _write(self, result: Result) -> None:
        line = {"frame": result.index, "timestamp": None if result.timestamp is None else round(result.timestamp, 6),
                "name": result.name}
        if self.with_file:
            line["file"] = os.path.abspath(result.source)  # not as typed: the file sits in the run folder, not where infer ran
        line["shares"] = result.shares_by_name()
        if self.with_confidence:
            share = result.low_confidence_share(LOW_CONFIDENCE_U8)
            line["low_confidence"] = None if share is None else round(share, 6)
        write_lines(self._fd, (json.dumps(line) + "\n").encode("utf-8"))  # an OSError: SinkWorker names the file

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def outputs(self) -> dict[str, str]:
        return {"stats": str(self.path)}


def write_lines(fd: int, data: bytes) -> None:
    """Write whole lines ``data`` to ``fd``; a write that fails part-way into a file (a full disk) is cut back to
    where it began, so the file keeps whole lines only (JSON Lines readers refuse a half one), and re-raised."""
    try:
        start = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:  # a pipe: nothing to cut back
        start = None
    try:
        _write_all(fd, data)
    except OSError:
        if start is not None:
            with contextlib.suppress(OSError):  # shrinking a file needs no space
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
        raise


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written (a write may take part of it, e.g. on a nearly full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
