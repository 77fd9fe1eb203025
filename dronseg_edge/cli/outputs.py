"""Output paths checked before a command starts work: an unwritable ``--out`` is one line and exit
code 2 at once, not a failure after minutes of training, exporting or measuring. ``--json FILE``
(``-``: standard output) is the same for every command: :func:`json_out`."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import typer

from dronseg_edge.atomic import json_safe, storage_failure, write_json_atomic
from dronseg_edge.dataset_layout import CSV_FILES, IMAGE_DIR
from dronseg_edge.errors import DronsegError
from dronseg_edge.machine import unwritable
from dronseg_edge.media import IMAGE_SUFFIXES
from dronseg_edge.metadata import sidecar_path

STDOUT = Path("-")  # --json -: the JSON document on standard output


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # ENAMETOOLONG (Path.is_dir raises it on Python < 3.12): not a folder that exists
        return False


def _same_file(path: Path, other: Path) -> bool:
    """Whether ``path`` names ``other``: by device and inode where both exist (BEST.PT for best.pt on a case-insensitive
    disk: macOS, an exFAT SD card; a hard link), else by resolved path."""
    try:
        return os.path.samefile(path, other)
    except OSError:
        return path.resolve() == other.resolve()


def check_out_dir(path: os.PathLike | str, option: str = "--out") -> Path:
    """Refuse an output folder ``path`` that cannot be created or written (DronsegError, exit code 2)."""
    path = Path(path)
    if path == STDOUT:  # not standard output here, as for check_out_file: a folder named '-' is a surprise
        raise DronsegError(f"{option} - would write into a folder named '-': give a folder name")
    reason = _unwritable(path, path)
    if reason is None:
        return path
    if _is_dir(path):
        raise DronsegError(f"output folder {path} ({option}) is not writable ({reason}): choose another folder, "
                           "or make it writable")
    raise DronsegError(f"cannot create output folder {path} ({option}): {reason}; choose another folder")


def check_run_parent(parent: Path) -> None:
    """Without --out: refuse a working folder where the default run folder ``parent``/expN cannot be made."""
    if (reason := _unwritable(parent, parent.resolve())) is not None:
        raise DronsegError(f"cannot make a run folder in {parent.resolve()} ({reason}): give --out DIR")


def check_out_file(path: os.PathLike | str, option: str, inputs=()) -> Path:
    """Refuse an output file ``path`` that is a folder, one of the command's ``inputs`` or an input engine's
    sidecar (it would replace that file: :func:`check_not_input`), or whose folder cannot be created or written."""
    path = Path(path)
    if path == STDOUT:  # not standard output here, and a file named '-' is a surprise
        raise DronsegError(f"{option} - would write a file named '-': give a file name (only --json - prints)")
    if _is_dir(path):
        raise DronsegError(f"{option} {path} is a folder: give a file name inside it")
    check_not_input(path, option, inputs)
    folder = path.parent
    reason = _unwritable(folder, path)
    if reason is None:
        return path
    if _is_dir(folder):
        raise DronsegError(f"{option} {path}: folder {folder} is not writable ({reason}); choose another path")
    raise DronsegError(f"{option} {path}: cannot create its folder {folder} ({reason}); choose another path")


def _unwritable(folder: Path, path: Path) -> str | None:
    """Why no file can be made in ``folder`` for ``path`` (machine.unwritable), or None. A disk with no space, inode or
    quota left is raised as the failure a restart may cure (5), as the same full disk found a moment later is, not a
    wrong option (2), which a supervisor never restarts."""
    reason = unwritable(folder)[1]
    for code in (errno.ENOSPC, errno.EDQUOT):
        if reason == os.strerror(code):
            raise storage_failure(OSError(code, reason), path)
    return reason


def check_not_input(path: Path, option: str, inputs) -> None:
    """Refuse an output ``path`` that is one of the command's ``inputs`` (files, or folders read whole) or the sidecar
    an input engine is read with."""
    read = [Path(source) for source in inputs if source is not None]
    read += [sidecar_path(source) for source in read if source.suffix.lower() in (".engine", ".plan")]
    if any(_same_file(Path(path), source) for source in read):
        effect = "its files would join the ones read there" if _is_dir(Path(path)) else "would be replaced"
        raise DronsegError(f"{option} {path} is also an input of this command and {effect}: give another name")


def data_files(root: os.PathLike | str | None) -> list[Path]:
    """The CSVs of the data set at ``root`` (none without one): inputs that an output file must not replace."""
    return [] if root is None else [Path(root) / name for name in CSV_FILES]


def check_json_out(path: Path | None, inputs=(), option: str = "--json") -> None:
    """Refuse a ``--json`` (or other report ``option``) file that cannot be written or is one of ``inputs`` or a CSV of
    the data set it lies in (the one a checkpoint records is read without --data), or an existing image or model file,
    before any work (``--json -`` is standard output)."""
    if path is not None and (path != STDOUT or option != "--json"):
        check_out_file(path, option, (*inputs, *data_files(path.parent if _is_dir(path.parent / IMAGE_DIR) else None)))
        if path.is_file():  # `submit --out DATA/imgs/imgs/X.jpg` replaced a test image
            from dronseg_edge.runtime.registry import BACKENDS  # not at the CLI's start: it imports OpenCV

            if path.suffix.lower() in (*IMAGE_SUFFIXES, *BACKENDS):
                raise DronsegError(f"{option} {path} is an image or model file and would be replaced: "
                                   "give another name")


def echo(text: str, err: bool = False) -> None:
    """typer.echo for every command's own lines. A reader that has gone (`checks | head -1`, `export | head -1`) ends
    the text, not the command, which goes on to its own exit status (click's exit 1 on a closed pipe is `checks`' "a
    FAIL", and it lost infer's whole run): the rest of the text goes to /dev/null."""
    try:
        typer.echo(text, err=err)
    except BrokenPipeError:
        _to_null(2 if err else 1)


def _to_null(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


class QuietStderr:
    """sys.stderr while a command runs: what tqdm's progress bars (eval, submit, train, synth) write after the reader
    has gone (`eval ... 2>&1 | head -1`) goes to /dev/null, as :func:`echo`'s lines do; it raised BrokenPipeError,
    which click turned into exit 1 with the command's work lost."""

    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def write(self, text):
        return self._quiet(self.stream.write, text)

    def flush(self):
        return self._quiet(self.stream.flush)

    def _quiet(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            _to_null(self.stream.fileno())
            return call(*args)  # what was left in the stream's buffer goes to /dev/null too


def text_out(json_path: Path | None):
    """Where a command's text goes: standard output, or standard error while ``--json -`` takes standard output."""
    return lambda text: echo(text, err=json_path == STDOUT)


def json_out(path: Path | None, document, save=None) -> None:
    """``--json``: ``document`` printed on standard output (``-``), or written to ``path`` (by ``save(path)``
    when given, else atomically) and the file named; nothing without ``--json``."""
    if path == STDOUT:
        echo(json.dumps(json_safe(document), indent=2, default=str))
    elif path is not None:
        save(path) if save is not None else write_json_atomic(path, document)
        echo(f"wrote {path}")
