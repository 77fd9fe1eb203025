"""Disk space during a run: a full disk is the usual way a recording on an edge device ends (a
Jetson's eMMC, an SD card). Three guards, cheapest first: the ``--min-free-mb`` floor
(:class:`DiskFloor`), the room a video keeps to be finished (:func:`ensure_room`) and the reserve
that lets a run on a full disk still finalise its outputs (:class:`SpaceReserve`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from pathlib import Path

from dronseg_edge.atomic import free_bytes

log = logging.getLogger(__name__)

MB = 1_000_000
CHECK_EVERY_S = 1.0  # DiskFloor: statvfs is cheap, but once a second is plenty at any frame rate
RESERVE_BYTES = 4 << 20  # room to finish the video's index (about 16 bytes a frame) and write summary.json
INDEX_BYTES_PER_FRAME = 32  # an MP4 index entry is 12-16 bytes (a fragment's own index, or mp4v's at the end)
FINISH_BYTES = 1 << 20  # plus the trailer, the encoder's delayed frames and the I/O buffer


def ensure_room(path: os.PathLike | str, needed: int) -> None:
    """Raise OSError(ENOSPC) naming ``path`` when fewer than ``needed`` bytes are free for it.

    Checked before each video frame: FFmpeg never recovers from a failed write (its I/O context
    refuses every later write, the index included), so the video stops *before* the disk is full,
    while it can still be finished. Disk quotas are invisible to statvfs: under a quota the write
    itself fails (EDQUOT) instead.
    """
    free = free_bytes(path)
    if free is not None and free < needed:
        raise OSError(errno.ENOSPC, "No space left on device for another frame and the index", str(path))


class DiskFloor:
    """``--min-free-mb``: ``crossed()`` returns a one-line reason once the free space of ``folder`` is below
    ``min_free_mb`` MB (0 disables), checked at most every ``every_s`` seconds. Below it the video and
    the per-frame images stop cleanly (files closed and playable) while stats.jsonl continues."""

    def __init__(self, folder: Path, min_free_mb: float, every_s: float | None = None):
        self.folder, self.min_free_mb = Path(folder), float(min_free_mb)
        self.every_s = CHECK_EVERY_S if every_s is None else every_s  # read when made: a test sets it to 0
        self._next = 0.0

    def crossed(self) -> str | None:
        now = time.monotonic()
        if self.min_free_mb <= 0 or now < self._next:
            return None
        self._next = now + self.every_s
        free = free_bytes(self.folder)
        if free is None or free >= self.min_free_mb * MB:
            return None
        return f"disk floor: {free / MB:.1f} MB free on {self.folder}, below --min-free-mb {self.min_free_mb:g} MB"


class SpaceReserve(contextlib.AbstractContextManager):
    """Hold up to ``size`` bytes (never more than an eighth of the free space) in ``folder`` until
    :meth:`release`. The file is unlinked at once and held open, so it has no name and a killed run
    frees it with its descriptors. Best effort: where it cannot be made, there is no reserve."""

    def __init__(self, folder: Path, size: int = RESERVE_BYTES):
        self.fd: int | None = None
        self.size = 0
        free = free_bytes(folder) or 0
        size = min(size, free // 8)
        if size <= 0 or not hasattr(os, "posix_fallocate"):
            return
        path, fd = Path(folder) / f".dronseg-reserve-{os.getpid()}", None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.unlink(path)
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            log.info("no disk reserve in %s: %s", folder, exc)
            return
        self.fd, self.size = fd, size

    def release(self) -> None:
        """Give the space back (idempotent)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def __exit__(self, *exc) -> None:
        self.release()
