"""Hidden working files of killed runs: which are ours, when they are stale, and their removal.

An export (or a training run) writes its files under hidden temporary names first (``.export-*``
folders, ``*.pending.onnx``, the ``.NAME.XXXXXXXX.tmp`` files of atomic.py) and renames them into
place at the end. A process killed with SIGKILL, or by the out-of-memory killer, leaves them behind.

Whose and how stale: a run *claims* its folder for as long as it works there, by holding an
exclusive ``flock`` on a lock file ``.dronseg-lock-<pid>-XXXXXXXX`` in it. The kernel drops a flock
when its process dies, however it dies, so a lock file that can be locked belongs to a dead run
(and a reused pid cannot fool it). When a run claims a folder, it removes the leftovers there that
match its patterns, but only when no other live run holds a lock on that folder: then nothing
hidden there is in use. Where ``fcntl`` is missing (Windows), no locks are taken and a leftover
counts as stale once it is older than STALE_AFTER_S.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_PREFIX = ".dronseg-lock-"
_CLAIM_PREFIX = ".dronseg-claim-"  # a lock file before it is locked and renamed (never seen unlocked)
_LOCK_NAME = re.compile(r"^\.dronseg-(lock|claim)-")
STALE_AFTER_S = 3600.0  # without flock only
_CLAIM_GRACE_S = 60.0  # a claim file is locked microseconds after it is made; younger ones count as live

# tempfile's random part of mkstemp/mkdtemp names
RANDOM = r"[a-z0-9_]{8}"


def _lock_held(path: Path) -> bool:
    """Whether a live process holds ``path``'s flock."""
    try:
        # Read-write: where flock is emulated by POSIX locks (NFS), an exclusive lock needs a writable descriptor.
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False  # gone: its owner released it
    except OSError:
        return True  # another user's lock (mkstemp makes 0600 files): cannot tell, assume alive
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True  # cannot tell (a file system without flock): assume alive, remove nothing
    finally:
        os.close(fd)  # also drops the lock just taken
    return False


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


class FolderClaim:
    """Claim ``folder`` for this process and remove stale leftovers there (see the module docstring).

    ``leftovers``: (subfolder relative to ``folder``, name pattern) pairs. ``removed`` lists what was
    removed. Use as a context manager, or call ``release()``. Claiming is best effort: a folder where
    no lock file can be made is worked in unclaimed, and nothing is removed from it.
    """

    def __init__(self, folder: os.PathLike | str, leftovers: Sequence[tuple[str, re.Pattern]]):
        self.folder = Path(folder)
        self.lock: Path | None = None
        self._fd: int | None = None
        self.removed: list[Path] = []
        if fcntl is not None:
            self._take_lock()
            if self.lock is None:
                return
        if not self._other_live_claims():
            self.removed = self._remove(leftovers)

    def _take_lock(self) -> None:
        try:
            fd, name = tempfile.mkstemp(prefix=f"{_CLAIM_PREFIX}{os.getpid()}-", dir=self.folder)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Renamed only once locked: a lock file is never seen unlocked while its owner lives.
            lock = self.folder / (LOCK_PREFIX + Path(name).name[len(_CLAIM_PREFIX):])
            os.rename(name, lock)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name)
            return
        self._fd, self.lock = fd, lock

    def _other_live_claims(self) -> bool:
        """Whether another live process claims the folder; dead claims' lock files are removed."""
        if fcntl is None:
            return False
        live = False
        for path in self._entries(self.folder):
            if not _LOCK_NAME.match(path.name) or path == self.lock:
                continue
            if _lock_held(path) or (path.name.startswith(_CLAIM_PREFIX) and _age(path) < _CLAIM_GRACE_S):
                live = True
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return live

    @staticmethod
    def _entries(folder: Path) -> list[Path]:
        try:
            return list(folder.iterdir())
        except OSError:
            return []

    def _remove(self, leftovers: Sequence[tuple[str, re.Pattern]]) -> list[Path]:
        removed = []
        cutoff = time.time() - STALE_AFTER_S
        for sub, pattern in leftovers:
            for path in self._entries(self.folder / sub):
                if not pattern.match(path.name):
                    continue
                try:
                    if fcntl is None and path.lstat().st_mtime > cutoff:
                        continue
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                except OSError:
                    continue
                removed.append(path)
        return removed

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock.unlink()  # unlinked while still locked: nobody can take it for a dead claim meanwhile
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def note(self, what: str) -> str | None:
        """'removed N leftovers of an interrupted WHAT in FOLDER: a, b' or None when nothing was removed."""
        if not self.removed:
            return None
        names = ", ".join(sorted(p.name for p in self.removed)[:4]) + (", ..." if len(self.removed) > 4 else "")
        plural = "s" if len(self.removed) != 1 else ""
        return f"removed {len(self.removed)} leftover{plural} of an interrupted {what} in {self.folder}: {names}"
