"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class DronsegError(Exception):
    """A problem with the user's input or environment; the message names the file/value and the fix."""

    exit_code = 2


class BackendUnavailable(DronsegError):
    """An optional runtime (TensorRT, ONNX Runtime, CUDA) is missing on this machine."""

    exit_code = 3


class ParityError(DronsegError):
    """An exported artifact does not match its reference model closely enough."""

    exit_code = 4
