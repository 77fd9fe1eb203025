"""Still images as a source: one file, a folder, or a glob (``**`` for any depth).

Each image keeps its own size. Its size is read from the header first (:mod:`dronseg_edge.media`):
an image over ``max_pixels`` (``--max-pixels``) is skipped and counted before OpenCV decodes
anything, as a damaged file is, so a decompression bomb in a folder costs a header read.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import logging
import os
import stat
import time
import unicodedata
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from dronseg_edge.errors import DronsegError
from dronseg_edge.media import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageTooLarge, ImageUnreadable, check_max_pixels,
                                checked_image_size, decode_bgr, upright_size)
from dronseg_edge.pipeline.source_base import SOURCE_HELP, FrameRecord, Source

log = logging.getLogger(__name__)


class ImageSource(Source):
    """Still images; files that cannot be read (``corrupt``) and images over ``max_pixels``
    (``oversized``) are skipped and counted."""

    kind = "images"

    def __init__(self, paths: list[Path], name: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(name)
        if not paths:
            raise DronsegError(f"{name} holds no images ({', '.join(IMAGE_SUFFIXES)}): {SOURCE_HELP}")
        self.paths = list(paths)
        self.max_pixels = check_max_pixels(max_pixels)
        self.frame_count = len(self.paths)
        self.names = _output_names(self.paths)
        self.liftable = False  # whether a skipped image would pass a higher --max-pixels

    @functools.cached_property
    def size(self) -> tuple[int, int] | None:
        """The first image's (W, H) as it is read (from its header, upright), for the checks before the run folder;
        None when its header cannot be read (it is skipped and counted then)."""
        with contextlib.suppress(DronsegError):
            return upright_size(self.paths[0], self.max_pixels)
        return None

    @classmethod
    def from_folder(cls, folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> "ImageSource":
        # a link whose target is gone is listed, to be skipped and counted as unreadable, not left out unsaid
        files = sorted(p for p in folder.iterdir() if (p.is_file() or not p.exists()) and not p.name.startswith("."))
        return cls(_keep_images(files, str(folder)), str(folder), max_pixels)

    @classmethod
    def from_glob(cls, pattern: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> "ImageSource":
        files = glob_files(pattern)
        if not files:
            raise DronsegError(f"source {pattern!r} matches no files: {SOURCE_HELP}")
        return cls(_keep_images(files, pattern), pattern, max_pixels)

    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        yielded = 0
        for index in range(0, len(self.paths), stride):
            if self._stop.is_set():
                return
            start, path = time.perf_counter(), self.paths[index]
            if (frame := self._read(path)) is not None:
                yielded += 1
                yield FrameRecord(index, None, frame, str(path), self.names[index], (time.perf_counter() - start) * 1e3)
        if yielded == 0 and not self._stop.is_set():
            skipped = [f"{count} {what}" for count, what in ((self.corrupt, "damaged or not images"),
                                                             (self.oversized, "above --max-pixels")) if count]
            read = f"{len(range(0, len(self.paths), stride))} image(s)" + (f" --stride {stride} reads" * (stride > 1))
            raise DronsegError(f"none of the {read} in {self.name} can be decoded ({', '.join(skipped)}): "
                               "replace them" + (", or raise --max-pixels for genuine large images" if self.liftable else ""))
        self.end = "ended"

    def _read(self, path: Path) -> np.ndarray | None:
        """(H, W, 3) uint8 BGR, EXIF-rotated, decoded only once its header showed it within
        ``max_pixels``; None (counted) if skipped."""
        try:
            checked_image_size(path, self.max_pixels, skipped=True)
            frame = decode_bgr(path)
        except ImageTooLarge as exc:
            self.oversized += 1
            self.liftable = self.liftable or exc.liftable
            log.warning("%s", exc)
            return None
        # cv2.error: OpenCV's own refusals (its pixel ceiling, a header its decoder rejects)
        except (ImageUnreadable, OSError, cv2.error):
            frame = None
        if frame is None:
            self.corrupt += 1
            why = "truncated or not an image" if path.exists() else "a link to a file that does not exist"
            log.warning("image %s cannot be decoded (%s); skipped", path, why)
        return frame


def glob_files(pattern: str) -> list[Path]:
    """The files ``pattern`` matches, sorted, each file once (``**``: any depth, through directory symlinks).

    ``glob.glob`` follows symlinks under ``**`` without remembering where it has been: a link back to
    a parent (``selfdir -> .``) lists the same images once per level until the path gets too long (41
    times), and two such links make it walk 2^40 paths. Here each directory (by device and inode) is
    walked once, and each file listed once, under its first name in sorted order.
    """
    paths = _glob_recursive(pattern) if "**" in Path(pattern).parts else glob.glob(pattern)
    files: dict[tuple[int, int], Path] = {}  # (device, inode) -> the first name
    for path in sorted({Path(p) for p in paths}):
        with contextlib.suppress(OSError):  # a dangling link: listed, to be skipped and counted as unreadable
            info = os.stat(path) if path.exists() else os.lstat(path)
            if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                files.setdefault((info.st_dev, info.st_ino), path)
    return list(files.values())


def _output_names(paths: list[Path]) -> list[str]:
    """Each image's name for its outputs (masks/NAME.png): its stem; a stem two images share gets the
    image's index appended (the stem cut to leave room in a 255-byte name), and an underscore more while that too
    is another image's name. Names are compared as a case-insensitive disk (macOS, exFAT) does: a/X.jpg and
    b/x.jpg would share masks/x.png there."""
    stems = collections.Counter(_folded(p.stem) for p in paths)
    taken, names = set(stems), []
    for index, path in enumerate(paths):
        name = path.stem
        if stems[_folded(name)] > 1:
            while len(os.fsencode(name)) > 236:
                name = name[:-1]
            name = f"{name}_{index:06d}"
            while _folded(name) in taken:
                name += "_"
            taken.add(_folded(name))
        names.append(name)
    return names


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def _glob_recursive(pattern: str) -> list[str]:
    """``pattern`` with a ``**`` component: the part before it globbed, every directory below walked
    once (following symlinks; hidden ones left out, as glob does), the part after it globbed in each."""
    parts = Path(pattern).parts
    cut = parts.index("**")
    tail = parts[cut + 1:] or ("*",)
    found: list[str] = []
    for start in glob.glob(str(Path(*parts[:cut]))) if cut else ["."]:
        visited: set[tuple[int, int]] = set()
        pending = [start]  # depth first, in sorted order; no recursion (os.walk's, before Python 3.12, failed 1000 deep)
        while pending:
            folder = pending.pop()
            try:
                info = os.stat(folder)
                with os.scandir(folder) as entries:
                    subfolders = [entry.name for entry in entries if entry.is_dir()]
            except OSError:  # gone, unreadable, or a name too long: skipped, as os.walk does
                continue
            if (info.st_dev, info.st_ino) in visited:
                continue
            visited.add((info.st_dev, info.st_ino))
            # Hidden folders left out, as glob does, and earlier runs' (their summary.json, or a killed run's
            # stats.jsonl): their overlay images are not the user's to segment again
            subfolders = sorted(name for name in subfolders if not name.startswith(".") and not any(
                os.path.isfile(os.path.join(folder, name, run_file)) for run_file in ("summary.json", "stats.jsonl")))
            inner = os.path.join(glob.escape(folder), *tail)
            found += _glob_recursive(inner) if "**" in tail else glob.glob(inner)
            pending += [os.path.join(folder, name) for name in reversed(subfolders)]
    return found


def _keep_images(files: list[Path], where: str) -> list[Path]:
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning("skipped %d non-image file(s) in %s (e.g. %s)", len(others), where, others[0].name)
    return images

