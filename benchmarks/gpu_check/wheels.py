"""Staged wheels for a machine without a package registry (the GPU machine): installed into private
folders that the stages put on PYTHONPATH, so the machine's own packages (torch, its CPU
onnxruntime) are never touched.

- Small wheels (iterative-stratification, onnxslim, ...) from ``.carry/wheels`` (tools/stage_gpu_wheels.sh
  fills it): each is installed only when its distribution is missing here, into ``WORK/site``.
- onnxruntime-gpu (255 MB, more than one 64 MiB upload) arrives in parts copied to /tmp/carry by
  earlier device calls (../shared/tools/wheel-chunks); ``ort-gpu-parts.json`` in the wheel folder says
  how many parts and their checksum. It goes to ``WORK/ort-site``, used only by the tests and
  ort-cuda stages: it shares the ``onnxruntime`` module with the machine's CPU build.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ORT_GPU = "onnxruntime-gpu"
MANIFEST = "ort-gpu-parts.json"
CHUNK_DIRS = (Path("/tmp/carry"),)  # where wheel-chunks' printed steps copy the parts
EXTRACTED = (Path("/tmp/wheels"),)  # where those steps unpack them, when done by hand


def dist_name(wheel: Path) -> str:
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def is_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pip_target(wheels: list[Path], target: Path, timeout: float) -> str | None:
    """Install ``wheels`` into ``target`` without an index or dependencies; None on success, else the error."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
           "--no-compile", "--upgrade", "--target", str(target), *map(str, wheels)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        return f"pip install timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"pip exit code {proc.returncode}"])[-1][:300]
    return None


def small_wheels(folder: Path, work: Path, timeout: float) -> dict:
    wheels = sorted(p for p in folder.glob("*.whl") if not dist_name(p).startswith("onnxruntime")) if folder.is_dir() else []
    missing = [w for w in wheels if not is_installed(dist_name(w))]
    result = {"folder": str(folder), "staged": [w.name for w in wheels], "installed": [], "already_present":
              [w.name for w in wheels if w not in missing], "site": None}
    if not missing:
        return result
    site = work / "site"
    error = pip_target(missing, site, timeout)
    if error:
        return {**result, "error": error}
    return {**result, "installed": [w.name for w in missing], "site": str(site)}


def find_ort_gpu(root: Path, wheel_folder: Path, explicit: Path | None, work: Path) -> tuple[Path | None, str]:
    """The onnxruntime-gpu wheel: given, already unpacked, or reassembled from its parts; else (None, why)."""
    if explicit is not None:
        found = sorted(explicit.glob("onnxruntime_gpu-*.whl")) if explicit.is_dir() else [explicit]
        return (found[-1], f"given: {found[-1]}") if found and found[-1].is_file() else (None, f"no onnxruntime-gpu wheel at {explicit}")
    for folder in EXTRACTED:
        found = sorted(folder.glob("onnxruntime_gpu-*.whl"))
        if found:
            return found[-1], f"found in {folder}"
    manifest_path = wheel_folder / MANIFEST
    if not manifest_path.is_file():
        return None, "no onnxruntime-gpu wheels staged"
    manifest = json.loads(manifest_path.read_text())
    parts = []
    for i in range(1, int(manifest["parts"]) + 1):
        candidates = [d / f"{i:02d}" for d in CHUNK_DIRS] + [root / ".carry" / f"part{i}" / "chunk"]
        parts.append(next((c for c in candidates if c.is_file()), None))
    if any(p is None for p in parts):
        have = sum(p is not None for p in parts)
        return None, (f"onnxruntime-gpu parts incomplete: {have} of {len(parts)} found in "
                      f"{', '.join(map(str, CHUNK_DIRS))} or .carry/partN (copy them first, tools/stage_gpu_wheels.sh)")
    return _reassemble(parts, manifest, work)


def _reassemble(parts: list[Path], manifest: dict, work: Path) -> tuple[Path | None, str]:
    digest = hashlib.sha256()
    tar_path = work / "ort-gpu.tar"
    with open(tar_path, "wb") as out:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if manifest.get("sha256") and digest.hexdigest() != manifest["sha256"]:
        return None, f"onnxruntime-gpu parts do not match their checksum ({len(parts)} parts): copy them again"
    folder = work / "ort-wheels"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        # The "data" filter refuses absolute paths and links out of the folder (Python >= 3.11.4 has it).
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    tar_path.unlink()
    found = sorted(folder.glob("onnxruntime_gpu-*.whl"))
    return (found[-1], f"reassembled from {len(parts)} parts") if found else (None, "the parts hold no onnxruntime-gpu wheel")


def prepare(root: Path, work: Path, wheel_folder: Path, ort_wheels: Path | None, timeout: float) -> dict:
    """Install what is staged; returns the record for the summary, with ``site`` and ``ort_site`` (or None)."""
    start = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    record = {"small": small_wheels(wheel_folder, work, timeout)}
    wheel, how = find_ort_gpu(root, wheel_folder, ort_wheels, work)
    ort = {"wheel": wheel.name if wheel else None, "how": how, "site": None}
    if wheel is not None:
        left = timeout - (time.monotonic() - start)
        site = work / "ort-site"
        error = pip_target([wheel], site, left)
        ort.update({"error": error} if error else {"site": str(site)})
    record["ort_gpu"] = ort
    record["site"], record["ort_site"] = record["small"].get("site"), ort["site"]
    errors = [e for e in (record["small"].get("error"), ort.get("error")) if e]
    if errors:
        record["status"], record["reason"] = "failed", "; ".join(errors)
    elif record["site"] or record["ort_site"]:
        record["status"], record["reason"] = "passed", ""
    else:
        record["status"] = "skipped"
        record["reason"] = "nothing to install" + ("" if record["small"]["staged"] else " (no staged wheels)")
    record["seconds"] = round(time.monotonic() - start, 2)
    return record
