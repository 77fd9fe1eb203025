"""Errors a user can act on. The CLI prints them as one line and exits non-zero.

A message that needs more than a line names a page of the docs by URL (:func:`docs_url`): a pip user
has no docs/ folder, the wheel does not carry it.
"""

from __future__ import annotations

# The project's home. A placeholder until the project is published; pyproject.toml's [project.urls]
# use the same address (tests/test_errors.py keeps the two equal).
REPOSITORY_URL = "https://github.com/dronseg/dronseg-edge"


def docs_url(page: str, section: str = "") -> str:
    """The URL of ``docs/<page>`` (e.g. 'jetson.md'), at the heading anchor ``section`` when given."""
    return f"{REPOSITORY_URL}/blob/main/docs/{page}" + (f"#{section}" if section else "")


class DronsegError(Exception):
    """A problem with the user's input or environment; the message names the file/value and the fix.

    ``stopped``: how an ``infer`` run this error ends records it in summary.json (``disk_full``,
    ``source_lost``, ...; None: ``error``)."""

    exit_code = 2
    stopped: str | None = None

    def __init__(self, *args, stopped: str | None = None):
        super().__init__(*args)
        if stopped is not None:  # else the class's own (BackendFailure: backend_failure)
            self.stopped = stopped


class BackendUnavailable(DronsegError):
    """An optional runtime (TensorRT, ONNX Runtime, CUDA) is missing on this machine."""

    exit_code = 3


class ParityError(DronsegError):
    """An exported artifact does not match its reference model closely enough."""

    exit_code = 4


class RuntimeFailure(DronsegError):
    """A failure while running that a restart may cure: a disk full or unwritable mid-run, a stream
    lost beyond --reconnect-s, a backend failing. Its own exit code, so a supervisor (systemd's
    ``RestartPreventExitStatus=2``) can tell "restart" (5) from "fix the configuration" (2)."""

    exit_code = 5


class BackendFailure(RuntimeFailure):
    """The runtime failed while it ran the model (a lost GPU, CUDA out of memory, an ONNX Runtime or
    TensorRT error): raised by ``Backend.infer`` from the exception the runtime raised (``__cause__``),
    so a failing backend is told from a bug here by where it happened, not by module names."""

    stopped = "backend_failure"

    def __init__(self, backend: str, cause: BaseException):
        self.backend, self.cause = backend, cause
        # torch.cuda's OutOfMemoryError; ONNX Runtime's "Failed to allocate memory" or "std::bad_alloc", torch's CPU
        # "can't allocate memory"
        self.out_of_memory = isinstance(cause, MemoryError) or "OutOfMemory" in type(cause).__name__ or any(
            words in str(cause).lower() for words in ("allocate memory", "out of memory", "bad_alloc"))
        message = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")[:300]
        super().__init__(f"the {backend} backend failed ({type(cause).__name__}: {message})")


class Interrupted(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) ended an ``infer`` run after its outputs were made final:
    a KeyboardInterrupt, so a program running one stops as Ctrl-C stops it; ``summary``: the run's RunSummary."""

    def __init__(self, summary):
        super().__init__(summary.data.get("interrupted_by") or "interrupted")
        self.summary = summary
