"""Hidden working files of killed runs: which are provably ours, when they are stale, and their removal.

An export (or a training run) writes its files under hidden working names first (``.export.*``
folders, ``*.pending.onnx``, the ``.NAME.*.tmp`` files of atomic.py) and renames them into place at
the end. A process killed with SIGKILL, or by the out-of-memory killer, leaves them behind.

Ours: every working name carries this package's tag and the writing process's claim token,
``dronseg-<token>`` (``working_tag``, ``working_prefix``; the token is 8 random hex digits made once
per process, shared with its forked children). A name without the tag, or with a token no dead
claim of that folder carries, is never touched: other programs' hidden files (``.export-projectx``,
``.settings.json.abcd1234.tmp``) look like ours but are not.

Whose and how stale: a run *claims* the folder it works in, for as long as it works there, by
holding an exclusive ``flock`` on a lock file ``.dronseg-lock-<token>-<pid>-XXXXXXXX`` in it. The
kernel drops a flock when its process dies, however it dies, so a lock file that can be locked
belongs to a dead run (a reused pid cannot fool it: the token is random). When a run claims a
folder, it removes the working files there (and in the subfolders its patterns name) that match its
patterns *and* carry the token of a dead claim's lock file; the dead lock file goes with the last of
them. Live runs' files are safe even while a dead run's are removed. A run that must work alone in its
folder (a training run, infer into a given --out) is refused while another live run claims it. Where ``fcntl`` is missing
(Windows), lock files are not locked: a claim counts as dead, and a leftover as stale, once older
than STALE_AFTER_S.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from dronseg_edge.errors import DronsegError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

TAG = "dronseg"
# This process's claim token. Module-level, so a forked child (which also inherits the lock's file
# descriptor, and with it the flock) writes under the same token; a spawned one makes its own.
TOKEN = secrets.token_hex(4)
# The tag and token inside a working name, as a pattern: every leftover pattern must contain it.
TAGGED = rf"{TAG}-(?P<token>[0-9a-f]{{8}})"
LOCK_PREFIX = f".{TAG}-lock-"
_CLAIM_PREFIX = f".{TAG}-claim-"  # a lock file before it is locked and renamed (never seen unlocked)
_LOCK_NAME = re.compile(rf"^\.{TAG}-(lock|claim)-(?:(?P<token>[0-9a-f]{{8}})-)?(?P<pid>\d*)")
STALE_AFTER_S = 3600.0  # without flock only
_CLAIM_GRACE_S = 60.0  # a claim file is locked microseconds after it is made; younger ones count as live

# tempfile's random part of mkstemp/mkdtemp names
RANDOM = r"[a-z0-9_]{8}"


def working_tag() -> str:
    """``dronseg-<token>``: what every hidden working name of this process carries."""
    return f"{TAG}-{TOKEN}"


def working_prefix(name: str) -> str:
    """``.NAME.dronseg-<token>.``: the prefix of a working file or folder for NAME (mkstemp/mkdtemp add
    the random part), e.g. ``.best.pt.dronseg-1a2b3c4d.k2j4h5g6.tmp``, ``.export.dronseg-1a2b3c4d.x7y8z9w0``.
    A NAME over 200 bytes loses its start: a working name (up to 55 bytes more) fits in 255 and ends as NAME does."""
    while len(os.fsencode(name)) > 200:
        name = name[1:]
    return f".{name}.{working_tag()}."


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
    except OSError:
        return True  # held (BlockingIOError), or cannot tell (a file system without flock): assume alive
    finally:
        os.close(fd)  # also drops the lock just taken
    return False


def _owner_alive(pid: str) -> bool:
    """Whether the process a lock file names runs (POSIX; elsewhere, or without a pid, assumed)."""
    if fcntl is None or not pid:
        return True  # Windows: os.kill would terminate it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's, or cannot tell
    return True


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


class FolderClaim(contextlib.AbstractContextManager):
    """Claim ``folder`` for this process and remove dead runs' leftovers there (see the module docstring).

    ``leftovers``: (subfolder relative to ``folder``, name pattern) pairs; every pattern has the
    ``token`` group of TAGGED, so only names made by a dronseg-edge run that claimed this folder and
    died can match. ``removed`` lists what was removed. Use as a context manager, or call
    ``release()``. Claiming is best effort: a folder where no lock file can be made is worked in
    unclaimed, and nothing is removed from it. ``alone``: the fix to name in the DronsegError raised,
    with nothing removed, when another live process claims the folder too (``others``: their pids).
    """

    def __init__(self, folder: os.PathLike | str, leftovers: Sequence[tuple[str, re.Pattern]], alone: str | None = None):
        for _, pattern in leftovers:
            if "token" not in pattern.groupindex:
                raise ValueError(f"leftover pattern {pattern.pattern!r} has no token group: it could match other programs' files")
        self.folder = Path(folder)
        self.lock: Path | None = None
        self._fd: int | None = None
        self.removed: list[Path] = []
        self.others: list[str] = []
        self._take_lock()
        if self.lock is not None:
            dead = self._dead_claims()
            if alone is not None and self.others:
                self.release()
                raise DronsegError(f"{self.folder} is in use by another dronseg-edge process (pid {', '.join(self.others)}): {alone}")
            self.removed = self._remove(leftovers, dead)

    def _take_lock(self) -> None:
        prefix = _CLAIM_PREFIX if fcntl is not None else LOCK_PREFIX
        try:
            fd, name = tempfile.mkstemp(prefix=f"{prefix}{TOKEN}-{os.getpid()}-", dir=self.folder)
        except OSError:
            return
        if fcntl is None:  # nothing to lock: the file's age tells a dead claim (module docstring)
            self._fd, self.lock = fd, Path(name)
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

    def _dead_claims(self) -> dict[str, list[Path]]:
        """The lock files of dead claims on the folder, by token. A dead one without a token (a claim of
        an older version of this package) vouches for nothing and is removed at once."""
        dead: dict[str, list[Path]] = {}
        for path in _entries(self.folder):
            match = _LOCK_NAME.match(path.name)
            if not match or path == self.lock or match.group("token") == TOKEN:
                continue  # not a lock file, or one of this (live) process
            if (_age(path) < STALE_AFTER_S if fcntl is None else
                    _lock_held(path) or (path.name.startswith(_CLAIM_PREFIX) and _age(path) < _CLAIM_GRACE_S)):
                if _owner_alive(match.group("pid")):  # (a killed run's forked loader workers hold its flock a while)
                    self.others.append(match.group("pid") or "?")
                continue  # alive
            if match.group("token"):
                dead.setdefault(match.group("token"), []).append(path)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return dead

    def _remove(self, leftovers: Sequence[tuple[str, re.Pattern]], dead: dict[str, list[Path]]) -> list[Path]:
        """Remove what matches a pattern and carries a dead claim's token; then each dead lock file that
        no longer vouches for anything left in the folders searched."""
        removed = []
        cutoff = time.time() - STALE_AFTER_S
        folders = {self.folder / sub for sub, _ in leftovers} | {self.folder}
        for sub, pattern in leftovers:
            for path in _entries(self.folder / sub):
                match = pattern.match(path.name)
                if not match or match.group("token") not in dead:
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
        remaining = " ".join(p.name for folder in folders for p in _entries(folder) if not _LOCK_NAME.match(p.name))
        for token, locks in dead.items():
            if f"{TAG}-{token}" in remaining:
                continue  # a file of that run is still here (another command's pattern, or not removable yet)
            for lock in locks:
                with contextlib.suppress(OSError):
                    lock.unlink()
        return removed

    def release(self) -> None:
        if self._fd is None:
            return
        if fcntl is None:
            os.close(self._fd)  # Windows removes no open file
        with contextlib.suppress(OSError):
            self.lock.unlink()  # unlinked while still locked: nobody can take it for a dead claim meanwhile
        if fcntl is not None:
            os.close(self._fd)
        self._fd = None

    def __exit__(self, *exc) -> None:
        self.release()

    def note(self, what: str) -> str | None:
        """'removed N leftovers of an interrupted WHAT in FOLDER: a, b' or None when nothing was removed."""
        if not self.removed:
            return None
        names = ", ".join(sorted(p.name for p in self.removed)[:4]) + (", ..." if len(self.removed) > 4 else "")
        plural = "s" if len(self.removed) != 1 else ""
        return f"removed {len(self.removed)} leftover{plural} of an interrupted {what} in {self.folder}: {names}"
