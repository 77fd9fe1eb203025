"""Storage faults that third-party writers hide: torch.save, torch.onnx.export, onnx, OpenCV.

``atomic.storage_errors`` turns a plain ``OSError`` (ENOSPC, EDQUOT, EROFS, EACCES, ...) into the
one-line :class:`RuntimeFailure`. Some writers raise something else for the same fault:

- ``torch.save`` raises ``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos
  N vs M`` (or ``PytorchStreamWriter failed writing file ...``): its C++ writer drops errno. Saving
  to an open Python file instead keeps the ``OSError`` as the error's ``__context__`` (torch 2.14),
  and where it does not, the free space left tells a full disk from a failing one.
- exporters may wrap the ``OSError`` in their own exception; it stays in the chain.

:func:`storage_faults` handles all of these; any other exception passes through unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator

from dronseg_edge.atomic import free_bytes, free_space, is_storage_error, storage_failure
from dronseg_edge.errors import DronsegError, RuntimeFailure

# What torch's C++ stream writer says when a write came up short.
SHORT_WRITE_MARKERS = ("PytorchStreamWriter failed writing", "inline_container.cc", "unexpected pos")
# A write that stopped short with less than this left on its file system ran out of space.
LOW_SPACE_BYTES = 64 * 1024 * 1024


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
                          "check the disk, or choose another --out")


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
