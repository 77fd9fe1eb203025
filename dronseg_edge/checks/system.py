"""The package, Python, the operating system, CPU, memory and disk, and the folders the package writes to.

What a bug report needs about the machine (the lines ``yolo checks`` users paste), each with its values
as facts for ``checks --json``.
"""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path
from typing import Iterator

from dronseg_edge import __version__, machine
from dronseg_edge.checks.base import FAIL, OK, WARN, Check
from dronseg_edge.errors import DronsegError

MIN_PYTHON = (3, 10)
PACKAGE_FOLDER = Path(__file__).resolve().parents[1]
# Below these, work gets killed or stops half-way: an export holds the model several times over in RAM
# (on a Jetson the GPU's memory too), and runs, engines and videos need room on disk.
LOW_MEMORY_GIB = 1.0
LOW_DISK_GIB = 1.0
GONE = "the current folder was deleted: cd to one that exists"


def system_checks() -> Iterator[Check]:
    """One line at a time: a crash keeps the lines before it (checks.run_checks)."""
    yield Check("dronseg-edge", OK, f"{__version__} ({PACKAGE_FOLDER})", {"version": __version__, "path": str(PACKAGE_FOLDER)})
    yield python_check()
    name, kernel, arch = machine.os_name(), platform.release(), platform.machine()
    yield Check("os", OK, f"{name} ({platform.system()} {kernel}, {arch})", {"os": name, "kernel": kernel, "machine": arch})
    model, (total, usable) = machine.cpu_model(), machine.cpu_cores()
    limited = f", {usable} usable by this process" if usable is not None and usable != total else ""
    yield Check("cpu", OK, f"{model}, {total or '?'} logical cores{limited}",
                {"model": model, "logical_cores": total, "usable_cores": usable})
    yield memory_check()
    yield from disk_checks()


def python_check() -> Check:
    version = platform.python_version()
    facts = {"version": version, "executable": sys.executable, "venv": sys.prefix != sys.base_prefix}
    if sys.version_info < MIN_PYTHON:
        return Check("python", FAIL, f"{version}: dronseg-edge needs Python >= {'.'.join(map(str, MIN_PYTHON))}", facts)
    venv = ""
    if facts["venv"]:
        # On a Jetson, TensorRT and NVIDIA's torch are system packages, invisible to a venv made without
        # --system-site-packages: say whether this one sees them.
        found = re.search(r"^\s*include-system-site-packages\s*=\s*(\S*)",
                          machine.read_text(Path(sys.prefix) / "pyvenv.cfg") or "", re.MULTILINE)
        seen = "unknown" if found is None else "yes" if found.group(1).lower() == "true" else "no"
        venv = f"; venv, system site-packages: {seen}"
    return Check("python", OK, f"{version} ({sys.executable}{venv})", facts)


def _gib(size: int | None) -> float | None:
    return None if size is None else round(size / machine.GIB, 1)


def memory_check() -> Check:
    memory = machine.memory()
    if memory is None:
        return Check("ram", WARN, "unreadable (no /proc/meminfo, no sysconf)", {"total_gib": None, "available_gib": None})
    total, available = _gib(memory.total), _gib(memory.available)
    facts = {"total_gib": total, "available_gib": available}
    if available is None:
        return Check("ram", OK, f"{total} GiB (available: unknown)", facts)
    if available < LOW_MEMORY_GIB:
        return Check("ram", WARN, f"{total} GiB, only {available} GiB available: an export or a large model may be "
                                  "killed for lack of memory; close other programs", facts)
    return Check("ram", OK, f"{total} GiB, {available} GiB available", facts)


def disk_checks() -> Iterator[Check]:
    """Free space where runs are written (the current folder) and, when it is another file system, where
    the package is installed (pip, caches and a venv's growth land there)."""
    seen = set()
    for name, folder in (("disk", _cwd()), ("disk (install)", PACKAGE_FOLDER)):
        found = machine.disk(folder) if folder else None
        if found is None:
            yield Check(name, WARN, f"{folder}: free space unreadable" if folder else GONE, {"path": str(folder), "free_gib": None})
            continue
        if found.device in seen:
            continue
        seen.add(found.device)
        free, total = _gib(found.free), _gib(found.total)
        facts = {"path": str(found.path), "free_gib": free, "total_gib": total}
        status = WARN if free < LOW_DISK_GIB else OK
        low = ": runs, engines and videos may not fit" if status == WARN else ""
        yield Check(name, status, f"{free} GiB free of {total} GiB on {found.path}{low}", facts)


def folder_checks() -> list[Check]:
    engines = "engines rebuild from scratch every time"
    try:
        cache = writable_check("cache folder", machine.cache_root(), f"{engines}; set XDG_CACHE_HOME to a writable folder")
    except DronsegError as exc:
        cache = Check("cache folder", WARN, f"{exc}: {engines}")
    cwd = _cwd()
    runs = (writable_check("runs folder", cwd / "runs",
                           "train/infer cannot write their default runs/ here; run from a writable folder or pass --out")
            if cwd else Check("runs folder", WARN, f"{GONE}; train/infer cannot write their default runs/ there"))
    return [cache, runs]


def _cwd() -> Path | None:
    """The current folder; None once it was deleted (by another process, while this shell was in it)."""
    try:
        return Path.cwd()
    except FileNotFoundError:
        return None


def writable_check(name: str, folder: Path, consequence: str) -> Check:
    """Whether ``folder`` (or, while it does not exist, the nearest folder above it) takes a file."""
    existing, reason = machine.unwritable(folder)
    if reason is not None:
        return Check(name, WARN, f"{folder} is not writable ({reason}); {consequence}")
    where = "writable" if existing == folder else f"can be created (in {existing})"
    return Check(name, OK, f"{folder} {where}")
