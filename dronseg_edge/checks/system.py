"""The package, Python, the operating system, and the folders the package writes to."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from dronseg_edge import __version__
from dronseg_edge.checks.base import FAIL, OK, WARN, Check

MIN_PYTHON = (3, 10)


def system_checks() -> Iterator[Check]:
    yield Check("dronseg-edge", OK, f"{__version__} ({Path(__file__).resolve().parents[1]})")
    yield python_check()
    yield Check("os", OK, f"{platform.system()} {platform.release()}, {platform.machine()}")


def python_check() -> Check:
    version = platform.python_version()
    if sys.version_info < MIN_PYTHON:
        return Check("python", FAIL, f"{version}: dronseg-edge needs Python >= {'.'.join(map(str, MIN_PYTHON))}")
    return Check("python", OK, f"{version} ({sys.executable}{venv_note()})")


def venv_note() -> str:
    """Whether this Python is a venv and whether it sees the system's packages: on a Jetson, TensorRT
    and NVIDIA's torch are system packages, invisible to a venv made without --system-site-packages."""
    if sys.prefix == sys.base_prefix:
        return ""
    config = Path(sys.prefix) / "pyvenv.cfg"
    system_site = "unknown"
    try:
        for line in config.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "include-system-site-packages":
                system_site = "yes" if value.strip().lower() == "true" else "no"
    except OSError:
        pass
    return f"; venv, system site-packages: {system_site}"


def cache_root() -> Path:
    """~/.cache/dronseg-edge (or $XDG_CACHE_HOME/dronseg-edge): TensorRT timing caches, ONNX Runtime engine caches."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dronseg-edge"


def folder_checks() -> Iterator[Check]:
    yield writable_check("cache folder", cache_root(),
                         "engines rebuild from scratch every time; set XDG_CACHE_HOME to a writable folder")
    yield writable_check("runs folder", Path.cwd() / "runs",
                         "train/infer cannot write their default runs/ here; run from a writable folder or pass --out")


def writable_check(name: str, folder: Path, consequence: str) -> Check:
    """Whether ``folder`` (or, while it does not exist, the nearest folder above it) takes a file.

    A real file is created and removed, because os.access is wrong on read-only mounts and some
    network file systems. Nothing is left behind, not even the missing folder.
    """
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return Check(name, WARN, f"{folder}: {existing} is not a folder; {consequence}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return Check(name, WARN, f"{folder} is not writable ({exc.strerror or exc}); {consequence}")
    where = "writable" if existing == folder else f"can be created (in {existing})"
    return Check(name, OK, f"{folder} {where}")
