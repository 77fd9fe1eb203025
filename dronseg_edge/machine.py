"""The host machine without torch: CPU model and cores, memory, free disk and whether a folder takes a file,
the operating system, a Jetson, the user's cache folder, and what is installed (versions from metadata, imports
that never raise).

What ``dronseg-edge checks`` prints for a bug report and what ``bench`` records beside its figures.
Linux sources first (/proc/cpuinfo, /proc/meminfo, /etc/os-release), the standard library's answers
elsewhere; nothing here raises for a file it cannot read. The /proc paths are module attributes so
tests can point them at fake files.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from dronseg_edge.errors import DronsegError

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # JetPack's L4T release file
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")  # an ARM board's model: 'NVIDIA Jetson AGX Orin Developer Kit'
GIB = 2**30


def cpu_model() -> str:
    """'AMD EPYC 7B13' (x86 ``model name``), the board name of ARM boards that give one (``Hardware``), or
    the platform's own answer."""
    try:
        with CPUINFO.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_cores() -> tuple[int | None, int | None]:
    """(logical cores of the machine, cores this process may run on): a container or ``taskset`` limits the second."""
    total = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on macOS or Windows
        usable = total
    return total, usable


@dataclass(frozen=True)
class Memory:
    total: int  # bytes
    available: int | None  # bytes a new program can use without swapping (MemAvailable); None where unknown


def memory() -> Memory | None:
    """Total and available RAM; on a Jetson that is also the GPU's memory (one pool). None where unreadable."""
    values = {}
    try:
        for line in MEMINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, rest = line.partition(":")
            number = rest.split()[0] if rest.split() else ""
            if number.isdigit():
                values[key.strip()] = int(number) * 1024  # /proc/meminfo counts kB
    except OSError:
        pass
    if "MemTotal" in values:
        return Memory(values["MemTotal"], values.get("MemAvailable"))
    try:
        return Memory(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), None)
    except (AttributeError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class Disk:
    path: Path  # the folder asked about, or the nearest existing folder above it
    free: int  # bytes this user may write
    total: int  # bytes
    device: int  # st_dev: two folders on one file system share it


def disk(folder: Path) -> Disk | None:
    """Free and total space of the file system holding ``folder`` (or the nearest existing folder above it)."""
    existing = nearest_existing(Path(folder).resolve())
    try:
        usage = shutil.disk_usage(existing)
        return Disk(existing, usage.free, usage.total, existing.stat().st_dev)
    except OSError:
        return None


def nearest_existing(folder: Path) -> Path:
    """``folder`` if it exists, else the nearest existing folder above it (may raise OSError: a name too long)."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    return existing


def unwritable(folder: Path) -> tuple[Path, str | None]:
    """(the nearest existing folder, why no file can be made there; None when one can). Nothing is left behind.

    A real file is made and removed: os.access is wrong on read-only mounts seen by root, ACLs and NFS
    root squash. The missing folder itself is not created, so a run refused for another reason leaves nothing.
    """
    try:
        existing = nearest_existing(folder)
    except OSError as exc:  # ENAMETOOLONG, a symlink loop
        return Path(folder), exc.strerror or str(exc)
    if not existing.is_dir():
        return existing, f"{existing} is a file"
    try:
        with tempfile.TemporaryFile(prefix=".dronseg-probe-", dir=existing):
            pass
    except OSError as exc:
        return existing, exc.strerror or str(exc)
    return existing, None


def installed_version(distribution: str) -> str | None:
    """The version pip recorded for ``distribution`` (read from its metadata, nothing imported), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def onnxruntime_for_numpy_1() -> str | None:
    """Why onnxruntime cannot load (one line naming the fix) when its release is built against numpy 1.x (1.17
    and 1.18, the core's floor on x86-64) and numpy 2 is installed beside it, which pip allows; else None."""
    from packaging.version import InvalidVersion, Version

    name, version = next(((n, v) for n in ("onnxruntime", "onnxruntime-gpu") if (v := installed_version(n))), (None, None))
    numpy = installed_version("numpy")
    try:
        old = version and numpy and Version(numpy).major >= 2 and Version(version) < Version("1.19")
    except InvalidVersion:
        return None
    return (f"{name} {version} was built against numpy 1.x and cannot load under numpy {numpy}: "
            f"pip install 'numpy<2' (or '{name}>=1.19')") if old else None


def read_text(path: Path) -> str | None:
    """A small system file's text (device-tree strings end in NUL bytes), stripped; None where unreadable."""
    try:
        return path.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, short enough for one check line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__


def import_optional(name: str) -> tuple[ModuleType | None, str | None]:
    """``(module, None)``, or ``(None, why)`` when it is missing or broken; never raises.

    Broken installs raise more than ImportError (OSError for a missing shared library, RuntimeError
    or AttributeError for a version mismatch), and each must become a line, not a traceback.
    """
    try:
        return importlib.import_module(name), None
    except Exception as exc:
        if isinstance(exc, ModuleNotFoundError) and (exc.name in (None, name) or name.startswith(f"{exc.name}.")):
            return None, "not installed"
        return None, f"cannot be imported: {first_line(exc)}"  # broken, or one of its own dependencies is missing


def cache_root() -> Path:
    """~/.cache/dronseg-edge (or $XDG_CACHE_HOME/dronseg-edge): TensorRT timing caches, ONNX Runtime engine caches.
    DronsegError where neither names a folder (HOME unset for a user id with no home: a container's bare uid)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")  # a relative one is to be ignored (the XDG spec)
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):  # "~" left as it was
        raise DronsegError(f"no cache folder: HOME is unset and user id {os.getuid()} has no home folder; set XDG_CACHE_HOME "
                           "(or HOME) to a writable folder")
    return Path(base) / "dronseg-edge"


def os_name() -> str:
    """'Ubuntu 22.04.4 LTS' from /etc/os-release, else the platform's name and release."""
    try:
        release = platform.freedesktop_os_release()
        return release.get("PRETTY_NAME") or release.get("NAME") or platform.system()
    except (AttributeError, OSError):  # not Linux, or no os-release file
        return f"{platform.system()} {platform.release()}".strip()


def is_jetson() -> bool:
    """A Tegra release file, or a device-tree model naming NVIDIA (other ARM boards have a model too;
    a container on a Jetson may lack the release file but sees the model)."""
    model = (read_text(DEVICE_TREE_MODEL) or "").lower()
    return TEGRA_RELEASE.is_file() or "jetson" in model or "nvidia" in model
