"""Writes that matter go to a temporary file first and are renamed into place; a write that fails for
the storage's sake is one line.

An interrupted run therefore never leaves a half-written checkpoint, engine or report under its
final name (os.replace is atomic on POSIX and Windows within one file system).

Storage faults that third-party writers hide: torch.save, torch.onnx.export, onnx, OpenCV.

:func:`storage_faults` turns a plain ``OSError`` (ENOSPC, EDQUOT, EROFS, EACCES, ...) into the
one-line :class:`RuntimeFailure`, and so every write through :func:`atomic_path`. Some writers raise
something else for the same fault:

- ``torch.save`` raises ``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos
  N vs M`` (or ``PytorchStreamWriter failed writing file ...``): its C++ writer drops errno. Saving
  to an open Python file instead keeps the ``OSError`` as the error's ``__context__`` (torch 2.14),
  and where it does not, the free space left tells a full disk from a failing one.
- exporters may wrap the ``OSError`` in their own exception; it stays in the chain.

It handles these too; any other exception passes through unchanged.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.leftovers import working_prefix
from dronseg_edge.machine import nearest_existing

# A write that fails for one of these is the storage's fault, not a bug: one line, exit code 5.
# errno -> (summary.json's "stopped" for an infer run, the fix the line names: no option, as synth's ROOT and
# --json FILE are written through here too)
STORAGE_FAULTS = {
    errno.ENOSPC: ("disk_full", "free some space or choose another output folder"),
    errno.EDQUOT: ("disk_full", "free some space within your quota or choose another output folder"),
    errno.EFBIG: ("disk_full", "choose another output folder on a file system that takes larger files"),
    **dict.fromkeys((errno.EROFS, errno.EACCES, errno.EPERM), ("unwritable", "make it writable or choose another output folder")),
}
# What torch's C++ stream writer says when a write came up short.
SHORT_WRITE_MARKERS = ("PytorchStreamWriter failed writing", "inline_container.cc", "unexpected pos")
# A write that stopped short with less than this left on its file system ran out of space.
LOW_SPACE_BYTES = 64 * 1024 * 1024


def free_bytes(path: os.PathLike | str) -> int | None:
    """Bytes free to this user on the file system holding ``path`` (its nearest existing parent)."""
    try:
        try:  # a run asks of files and folders that exist (once a video frame): statvfs alone
            return shutil.disk_usage(path).free
        except (FileNotFoundError, NotADirectoryError):  # not made yet, or under a file (the file's file system)
            return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return None


def free_space(path: os.PathLike | str) -> str:
    """'12.3 MB free' for the file system holding ``path`` (its nearest existing parent)."""
    free = free_bytes(path)
    if free is None:
        return "free space unknown"
    if free < 1000:
        return f"{free} B free"
    for unit in ("kB", "MB", "GB", "TB"):
        free /= 1000
        if free < 1000 or unit == "TB":
            return f"{free:.1f} {unit} free"


def storage_failure(exc: OSError, path: os.PathLike | str, name: str | None = None) -> RuntimeFailure:
    """The one-line error for a write to ``path`` (called ``name`` where given) that failed with ``exc`` (ENOSPC,
    EROFS, EACCES, ...; EIO and the like: a failing disk or a card pulled out); its ``stopped`` says why for
    summary.json (``disk_full``, ``unwritable`` or ``write_failed``)."""
    stopped, fix = STORAGE_FAULTS.get(exc.errno, ("write_failed", "check the disk or choose another output folder"))
    return RuntimeFailure(f"cannot write {name or path}: {exc.strerror or exc} ({free_space(path)}): {fix}", stopped=stopped)


def name_too_long(path: os.PathLike | str | None) -> str:
    """The line for a path the file system refuses as too long (ENAMETOOLONG): most take 255 bytes a name."""
    text = str(path or "")
    shown = text if len(text) <= 80 else f"{text[:40]}...{text[-30:]} ({len(text)} characters)"
    return f"file name too long: {shown or 'a path'}: the file system takes at most 255 bytes per name; choose a shorter one"


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_FAULTS


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes; a context the code suppressed (``raise ... from None``) was handled: not followed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def storage_cause(exc: BaseException) -> OSError | None:
    """The storage OSError that ``exc`` is, or that its chain of causes holds; None if there is none."""
    return next((e for e in _chain(exc) if is_storage_error(e)), None)  # type: ignore[return-value]


def low_space(path: os.PathLike | str) -> bool:
    """Whether the file system holding ``path`` (its nearest existing parent) has under LOW_SPACE_BYTES free."""
    free = free_bytes(path)
    return free is not None and free < LOW_SPACE_BYTES


def short_write_failure(path: os.PathLike | str, detail: str) -> RuntimeFailure:
    """The one-line error for a write to ``path`` that stopped short without saying why (``detail``)."""
    if low_space(path):
        return storage_failure(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
    return RuntimeFailure(f"cannot write {path}: the write stopped short ({detail}; {free_space(path)}): "
                          "check the disk, or choose another output folder")


@contextlib.contextmanager
def storage_faults(path: os.PathLike | str) -> Iterator[None]:
    """Turn a storage fault raised inside the block, however a writer reports it, into the one-line
    RuntimeFailure naming ``path``; DronsegErrors and every other exception pass through."""
    try:
        yield
    except DronsegError:
        raise
    except Exception as exc:
        # A Ctrl-C (or exit) that a writer wrapped (torch.save makes it a RuntimeError) is an interruption, not a disk fault.
        interrupt = next((e for e in _chain(exc) if not isinstance(e, Exception)), None)
        if interrupt is not None:
            raise interrupt from None
        cause = storage_cause(exc)
        if cause is not None:
            raise storage_failure(cause, path) from None
        if isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in SHORT_WRITE_MARKERS):
            raise short_write_failure(path, "torch: " + " ".join(str(exc).split())[:160]) from None
        raise


def ensure_writable_dir(path: Path, what: str = "output folder") -> Path:
    """Create ``path`` (and parents) or raise a DronsegError naming it; one that exists must be writable."""
    path = _make_dir(Path(path), what)
    if not os.access(path, os.W_OK | os.X_OK):
        raise DronsegError(f"{what} {path} is not writable; choose another output folder")
    return path


def _make_dir(path: Path, what: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is the run's failure (5), not a wrong option (2)
            raise storage_failure(exc, path) from None
        raise DronsegError(f"cannot create {what} {path}: {exc.strerror or exc}; choose another output folder") from None
    return path


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it.
    ``suffix`` ends the temporary name (OpenCV picks a video's container from it).

    The temporary name is chosen before the file exists and the file is made inside the ``try``, so an
    interrupt (Ctrl-C, SIGTERM) arriving at any instant leaves no temporary file behind.
    """
    final = Path(path)
    # Made if missing, not checked for access: a folder that turned read-only or unwritable during a run
    # fails the open below with its errno, which storage_faults makes the run's failure (exit 5).
    _make_dir(final.parent, "output folder")
    tmp = final
    try:
        with storage_faults(final):
            while True:  # the name first, then the file: an interrupt between the two leaves nothing
                # the package tag and claim token in the name: only a dead run's own files are cleaned up (leftovers.py)
                tmp = final.parent / f"{working_prefix(final.name)}{secrets.token_hex(4)}.tmp{suffix}"
                with contextlib.suppress(FileExistsError):  # 0666 less the umask, as open() (never os.umask(0))
                    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                    break
            yield tmp
            os.replace(tmp, final)
    except BaseException:
        if tmp != final:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def write_text_atomic(path: os.PathLike | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv_atomic(path: os.PathLike | str, rows) -> Path:
    """Write ``rows`` (the header first) as CSV with "\\n" line ends, atomically."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def json_safe(value, nonfinite=lambda v: None):
    """Replace NaN/Inf floats by ``nonfinite(v)`` (None; ``str`` keeps 'nan'), recursively: strict JSON has no NaN.
    A numpy (or torch) scalar becomes its Python number: ``default=str`` wrote np.int64(60) as "60"."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else nonfinite(value)
    if isinstance(value, dict):
        return {k: json_safe(v, nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, nonfinite) for v in value]
    return value


def write_json_atomic(path: os.PathLike | str, data) -> Path:
    """Write ``data`` as indented strict JSON (NaN/Inf become null), atomically."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=False, default=str, allow_nan=False)
    return write_text_atomic(path, text + "\n")
