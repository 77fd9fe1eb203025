"""The ``dronseg-edge`` entry point: every command registered (on cli/app.py's app), user errors as one line."""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
from typing import NoReturn

import typer

from dronseg_edge.atomic import is_storage_error, name_too_long, storage_failure
from dronseg_edge.cli import bench_cmd, checks_cmd, data_cmd, export_cmd, infer_cmd, train_cmd  # noqa: F401
from dronseg_edge.cli.app import app
from dronseg_edge.cli.extras import missing_module_error
from dronseg_edge.cli.outputs import QuietStderr, echo
from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.pipeline.interrupts import STOP_SIGNALS, handle_stop_signals


# click's base exception, found through typer's public BadParameter: typer >= 0.26 carries its own click.
CLICK_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``dronseg-edge`` and ``python -m dronseg_edge``).

    User errors, ours (DronsegError) and the command line's (a bad option value, an unknown option,
    a missing argument), are printed as one line and exit non-zero; a traceback means a bug.
    """
    for fd in (0, 1, 2):  # closed before the start (`>&-`, a daemon's): /dev/null holds the number, else the next file
        try:              # opened took it (`--results -` wrote into a lock file: exit 5, "check the disk")
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd
    if sys.stderr is None:  # progress bars and checks write to it
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    stderr, sys.stderr = sys.stderr, QuietStderr(sys.stderr)
    previous, code = _stop_like_ctrl_c(), None
    try:
        _need_temporary_folder()
        code = app(args=_bare_checks_json(sys.argv[1:] if argv is None else list(argv)), prog_name="dronseg-edge",
                   standalone_mode=False)
    except DronsegError as exc:
        _fail(exc, exc.exit_code)
    except (OSError, ImportError) as exc:
        # A full or read-only disk that a command did not turn into its own message: still one line
        # naming the path and the free space, with the runtime-failure code. A name longer than the file
        # system takes (any path argument: --out, a model, a source) is the user's to fix. An optional
        # library this install set lacks or cannot load (ImportError, or an OSError for a shared library):
        # what to do. Other OSErrors are bugs.
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
            _fail(name_too_long(exc.filename), DronsegError.exit_code)
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM) and _unreadable(exc.filename):
            _fail(f"cannot read {_unreadable(exc.filename)}: {exc.strerror}: make it readable by this user (chmod, "
                  "chown) or run as its owner", DronsegError.exit_code)
        if is_storage_error(exc):  # no file name: a write to standard output (`checks > /full/disk/checks.txt`)
            _fail(storage_failure(exc, exc.filename or "/dev/stdout", None if exc.filename else "standard output"),
                  RuntimeFailure.exit_code)
        error = missing_module_error(exc)
        if error is None:
            raise
        _fail(error, error.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130, prefix="")
    except CLICK_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command: its help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} -h`)" if ctx is not None else ""
        _fail(" ".join(exc.format_message().split()) + hint, exc.exit_code)
    finally:  # stopped by a signal, the program exits: a second one ends it at once (not as a KeyboardInterrupt in an
        # atexit hook, a traceback); called with argv (in-process), the caller's handlers are back
        stopped = argv is None and 130 in (code, getattr(sys.exc_info()[1], "code", None))
        handle_stop_signals(dict.fromkeys(previous, signal.SIG_DFL) if stopped else previous)
        sys.stderr = stderr
    if code == 130:  # typer turns Ctrl-C outside our handlers into exit code 130
        echo("interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


def _need_temporary_folder() -> None:
    """torch's import and ctypes' search for CUDA's driver write temporary files: without a writable folder for
    them (a read-only root, systemd's ProtectSystem=strict without PrivateTmp=) every command failed on it."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError as exc:
        raise DronsegError(f"{exc.strerror}: set TMPDIR to a writable folder (under systemd: PrivateTmp=yes)") from None


def _unreadable(path) -> str | None:
    """The nearest existing part of ``path`` this user may not read (a file) or list (a folder): a refused
    read of the user's input, not a refused write (exit 2, not 5)."""
    if not path:
        return None
    path = os.path.abspath(os.fsdecode(path))
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    needed = os.R_OK | os.X_OK if os.path.isdir(path) else os.R_OK
    return None if os.access(path, needed) else path


def _fail(message, code: int, prefix: str = "error: ") -> NoReturn:
    echo(f"{prefix}{message}", err=True)  # a reader gone (`2>&1 | logger`, logger killed) keeps the code: click's is 1
    sys.exit(code)


def _bare_checks_json(argv: list[str]) -> list[str]:
    """`checks --json` with no FILE, its spelling from before --json took one everywhere: JSON on standard output."""
    if argv[:1] == ["checks"] and "--json" in argv:
        at = argv.index("--json") + 1
        if at == len(argv) or (argv[at].startswith("-") and argv[at] != "-"):
            return [*argv[:at], "-", *argv[at:]]
    return argv


def _interrupt(signum, _frame) -> None:
    # A second one kills at once ("press again to force"): raised inside the cleanup the first started (the DataLoader
    # joining its workers), it printed a traceback and cut that cleanup anyway. Leftovers are named for the next run.
    handle_stop_signals({sig: signal.SIG_DFL for sig in STOP_SIGNALS if signal.getsignal(sig) is _interrupt})
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_like_ctrl_c() -> dict:
    """Ctrl-C, SIGTERM and SIGHUP (a supervisor stopping the service, a closed terminal) stop every command as
    Ctrl-C does: its cleanup runs (temporary files removed, `infer` finalises its outputs), exit 130.
    Only where the signal still has its default action, in the main thread; returns what to restore."""
    return handle_stop_signals({sig: _interrupt for sig in STOP_SIGNALS
                                if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)})
