"""Unpickling ``.pt`` files as data only (``torch_load``, for checkpoints and ``--weights``), and the
oldest torch that may do it, read from a version string without importing torch.

``torch_load`` refuses to load on an older torch; ``dronseg-edge checks`` says so beforehand from the
installed torch's metadata (a Jetson's NVIDIA wheel may be older), so both read the floor from here.
torch itself is imported only by ``torch_load``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from dronseg_edge.errors import DronsegError

# The oldest torch whose torch.load(weights_only=True) has no published bypass: <= 2.5.1 runs code
# (GHSA-53q9-r3pm-6pq6, CVE-2025-32434, fixed in 2.6.0), < 2.10.0 corrupts memory towards code
# execution (GHSA-63cw-57p8-fm3p, CVE-2026-24747, fixed in 2.10.0). pyproject's train/export floor.
SAFE_TORCH = (2, 10)
SAFE_TORCH_ADVISORIES = "GHSA-63cw-57p8-fm3p / CVE-2026-24747, GHSA-53q9-r3pm-6pq6 / CVE-2025-32434"


def torch_release(version: str) -> tuple[int, ...]:
    """(2, 5, 0) for '2.5.0a0+872d972e41.nv24.08' (NVIDIA's Jetson wheels) or '2.14.1+cu130'."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("a")[0].split("rc")[0])[:3])


def unsafe_torch_reason(version: str, what: str) -> str | None:
    """Why torch ``version`` must not unpickle ``what`` (one line naming the fix), or None when it may."""
    if torch_release(version)[:2] >= SAFE_TORCH:
        return None
    floor = ".".join(map(str, SAFE_TORCH))
    return (f"torch {version} cannot load {what} safely: its weights_only=True loading can be made to run code "
            f"({SAFE_TORCH_ADVISORIES}); install torch >= {floor}, or run an exported .onnx/.engine file, which "
            "needs no torch")


class UnsafeTorch(DronsegError):
    """The installed torch cannot unpickle a file safely (exit code 2: install another torch)."""


def torch_load(path: Path, what: str, missing: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; UnsafeTorch on a torch whose weights_only loading is known
    to be bypassable; one-line DronsegErrors: ``missing`` when there is no file, else ``what`` cannot be read
    followed by ``fix`` (a pickle holding code included: never torch's advice to load it unsafely)."""
    import torch

    if path.is_dir():
        raise DronsegError(f"{what} is a folder, not a file: pass the file itself (a run's is RUN/weights/best.pt)")
    if not path.is_file():
        raise DronsegError(missing)
    reason = unsafe_torch_reason(str(torch.__version__), what)
    if reason:
        raise UnsafeTorch(reason)
    if (unpacked := _unpacked_bytes(path)) > 2 * path.stat().st_size:
        raise DronsegError(f"{what} cannot be read (its records unpack to {unpacked / 1e6:.1f} MB from a "
                           f"{path.stat().st_size / 1e6:.1f} MB file: a zip bomb, or a file packed by another tool){fix}")
    try:
        with warnings.catch_warnings():
            # A foreign pickle can make torch warn (e.g. about its protocol) before failing: the error says it all.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DronsegError(f"{what} cannot be read ({_short_reason(exc)}){fix}") from None


def _unpacked_bytes(path: Path) -> int:
    """What a .pt zip's records unpack to, as its directory declares (torch reads each whole into memory,
    unpacking a compressed one: a 2 MB file of deflated zeros took 2.8 GB; torch.save stores them as
    they are); 0 for another kind of file (torch's old format reads no more than the file holds)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # a damaged directory: torch names what is wrong
        return 0


def _short_reason(exc: Exception) -> str:
    """One plain line from a torch.load error.

    weights_only refusals are paragraphs (the PyTorch 2.6 default change, advice to load with
    weights_only=False, "Please file an issue ...", add_safe_globals advice) with the cause mid-text:
    only the cause is kept, never the advice to load a file unsafely. Other errors may run on over
    several sentences.
    """
    text = str(exc)
    if "Weights only load failed" in text or "WeightsUnpickler error" in text:
        # The cause: after torch <= 2.13's "WeightsUnpickler error:" marker, else (2.14) the one line that is not advice.
        lines = [re.split(r" was not an allowed global| Please use|\. Please", line)[0].strip()
                 for line in text.replace("WeightsUnpickler error:", "\nWeightsUnpickler error:").splitlines() if line.strip()]
        marked = [line.split(":", 1)[1].strip() for line in lines if line.startswith("WeightsUnpickler error:")]
        advice = ("Weights only load failed", "weights_only", "trust", "Check the documentation", "(1)", "(2)")
        cause = marked[0] if marked else next((line for line in lines if not any(a in line for a in advice)), "")
        return f"it holds Python objects, not plain data: {cause}"[:200] if cause else "it holds Python objects, not plain data"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)  # C++ source location, no help to a user
    first = first.split(". ")[0]
    if not first or isinstance(exc, KeyError):  # KeyError's text is a bare key, e.g. '101'
        return type(exc).__name__
    return first[:200]
