#!/usr/bin/env python3
"""Check that dronseg-edge's install sets resolve for a Jetson on JetPack 6 without x86-only wheels.

    .venv/bin/python tools/check_jetson_deps.py [--sets core,train,export,trt,trt-cu12,video] [--keep DIR]

For each install set it builds the project's wheel once, then asks pip what it would install for
Python 3.10 on manylinux aarch64 up to glibc 2.35 (Ubuntu 22.04, JetPack 6):

    pip install --dry-run --ignore-installed --only-binary=:all: --python-version 3.10 --implementation cp
        --abi cp310 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 ... _2_35_aarch64
        --target TMP --report REPORT.json 'dronseg_edge-*.whl[EXTRA]'

pip picks wheels for the target platform but evaluates environment markers (``platform_machine !=
'aarch64'``, torch's ``platform_machine == 'x86_64'`` CUDA libraries) against the machine it runs on, so
on x86-64 a plain dry-run would wrongly keep the x86-only requirements. pip is therefore run with its
marker environment set to the Jetson's (``JETSON_MARKERS``). It needs network access to the index.

A set FAILS when pip cannot resolve it for aarch64 (an x86-only wheel, or no wheel for cp310 aarch64),
when it would install a wheel whose platform tag is not aarch64 or pure Python, or when it would put in
what JetPack must provide: opencv-python* or onnxruntime* in the core (they would shadow JetPack's
OpenCV and NVIDIA's onnxruntime-gpu), tensorrt from pip. Notes (not failures) say where the Jetson's
own wheels replace the registry's (torch, torchvision). Exit status: 0 all pass, 1 a set failed,
2 the check itself could not run (no wheel, or pip finds no numpy<2 for aarch64: an index out of reach).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.10"
GLIBC_MINOR = 35  # Ubuntu 22.04 (JetPack 6); manylinux_2_17 .. manylinux_2_35 wheels run there
# packaging's marker environment of a Jetson Orin on JetPack 6 (Python 3.10.12, L4T kernel).
JETSON_MARKERS = {
    "implementation_name": "cpython", "implementation_version": "3.10.12", "os_name": "posix",
    "platform_machine": "aarch64", "platform_python_implementation": "CPython",
    "platform_release": "5.15.148-tegra", "platform_system": "Linux", "platform_version": "#1 SMP PREEMPT",
    "python_full_version": "3.10.12", "python_version": "3.10", "sys_platform": "linux",
}
# Each set, and what docs/jetson.md tells a JetPack 6 user to add to the same pip command: numpy 1.x,
# because JetPack's OpenCV and TensorRT 10.3 bindings are built against it (they fail to import under
# numpy 2), and cuda-bindings 12.x for JetPack 6's CUDA 12 driver.
JETPACK6 = ["numpy<2"]
SETS = {
    "core": ("", JETPACK6),
    "train": ("train", JETPACK6),
    "export": ("export", JETPACK6),
    "trt": ("trt", [*JETPACK6, "cuda-bindings>=12.3,<13"]),
    "trt-cu12": ("trt-cu12", JETPACK6),  # the extra itself pins cuda-bindings 12.x
    "video": ("video", JETPACK6),
}
INDEX_PROBE = "numpy<2"  # has cp310 manylinux aarch64 wheels on PyPI: found, or the index cannot be used from here
# On a Jetson these come from JetPack or NVIDIA's own wheels: pip must not bring them.
NEVER_FROM_PIP = {"tensorrt": "TensorRT comes with JetPack", "tensorrt-cu12": "TensorRT comes with JetPack",
                  "onnxruntime-gpu": "no aarch64 wheel on PyPI"}
NOT_IN_CORE = {"opencv-python": "shadows JetPack's OpenCV (GStreamer)",
               "opencv-python-headless": "shadows JetPack's OpenCV (GStreamer)",
               "opencv-contrib-python": "shadows JetPack's OpenCV (GStreamer)",
               "onnxruntime": "would overwrite NVIDIA's onnxruntime-gpu (same module)",
               "torch": "the core must not need torch"}
REPLACED_ON_JETSON = {"torch": "NVIDIA's torch wheel, installed first, satisfies it when it is 2.10 or newer (venv --system-site-packages)",
                      "torchvision": "NVIDIA's torchvision wheel, installed first, satisfies it"}

# Runs pip with the Jetson's marker environment (pip's vendored packaging reads default_environment()).
PIP_SHIM = """
import json, sys
from pip._vendor.packaging import markers
target = json.loads(sys.argv[1])
markers.default_environment = lambda: dict(target)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_platforms(filename: str) -> list[str]:
    """The platform tags of a wheel file name ('numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl')."""
    return filename[:-len(".whl")].split("-")[-1].split(".")


def judge(set_name: str, installs: list[dict]) -> tuple[list[str], list[str]]:
    """(failures, notes) for what pip would install for one set (the ``install`` list of pip's report)."""
    failures, notes = [], []
    for item in installs:
        name = canonical(item["metadata"]["name"])
        filename = item["download_info"]["url"].rsplit("/", 1)[-1]
        if filename.endswith(".whl"):
            bad = [tag for tag in wheel_platforms(filename) if tag != "any" and not tag.endswith("aarch64")]
            if bad:
                failures.append(f"{filename}: platform {'.'.join(bad)} is not aarch64")
        if name in NEVER_FROM_PIP:
            failures.append(f"{name} from pip: {NEVER_FROM_PIP[name]}")
        if set_name == "core" and name in NOT_IN_CORE:
            failures.append(f"{name} in the core on aarch64: {NOT_IN_CORE[name]}")
        if name in REPLACED_ON_JETSON:
            notes.append(f"{name} {item['metadata']['version']} from the registry here; on a Jetson {REPLACED_ON_JETSON[name]}")
    cuda_libs = sorted(canonical(i["metadata"]["name"]) for i in installs
                       if canonical(i["metadata"]["name"]).startswith("nvidia-"))
    if cuda_libs:
        notes.append(f"{len(cuda_libs)} nvidia-* CUDA library wheels come with the registry's torch "
                     f"({', '.join(cuda_libs[:3])}, ...): skipped when NVIDIA's torch is installed first")
    return failures, notes


def build_wheel(dest: Path) -> Path:
    """The project's wheel (pure Python), built once with this interpreter from a copy of the sources, so
    the build leaves no build/ folder in the work tree (and two builds at once do not share one)."""
    with tempfile.TemporaryDirectory(prefix="dronseg-src-") as tmp:
        source = Path(tmp)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, source / name)
        shutil.copytree(ROOT / "dronseg_edge", source / "dronseg_edge",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        args = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(source)]
        if _has("setuptools"):  # build with it, rather than fetch it into an isolated build environment
            args.insert(4, "--no-build-isolation")
        subprocess.run(args, check=True, capture_output=True, text=True)
    return next(Path(dest).glob("dronseg_edge-*.whl"))


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def dry_run(wheel: Path, extra: str, constraints: list[str], work: Path, name: str) -> tuple[int, list[dict], str]:
    """(pip's exit status, the install list of its report, its last output lines) for one set."""
    report = work / f"{name}.json"
    platforms = ["manylinux2014_aarch64"] + [f"manylinux_2_{minor}_aarch64" for minor in range(17, GLIBC_MINOR + 1)]
    args = ["install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--quiet",
            "--python-version", PYTHON_VERSION, "--implementation", "cp",
            "--abi", "cp" + PYTHON_VERSION.replace(".", ""), "--abi", "abi3", "--abi", "none",
            *[flag for platform in platforms for flag in ("--platform", platform)],
            "--target", str(work / f"target-{name}"), "--report", str(report),
            f"{wheel}[{extra}]" if extra else str(wheel), *constraints]
    done = subprocess.run([sys.executable, "-c", PIP_SHIM, json.dumps(JETSON_MARKERS), *args],
                          capture_output=True, text=True)
    output = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                       if line.strip() and "is ignored: it is neither a file nor a directory" not in line)
    installs = json.loads(report.read_text())["install"] if done.returncode == 0 and report.is_file() else []
    return done.returncode, installs, "\n".join(output.splitlines()[-6:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--keep", type=Path, help="keep pip's JSON reports in this folder")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SETS]
    if unknown:
        print(f"error: unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="jetson-deps-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            wheel = build_wheel(Path(tmp) / "wheel")
        except (subprocess.CalledProcessError, StopIteration) as exc:
            detail = (getattr(exc, "stderr", "") or "").strip().splitlines()[-1:] or [str(exc)]
            print(f"error: could not build the project's wheel: {detail[0]}", file=sys.stderr)
            return 2
        print(f"Jetson (JetPack 6): cp{PYTHON_VERSION.replace('.', '')}, manylinux aarch64 up to glibc 2.{GLIBC_MINOR}; "
              f"markers evaluated as platform_machine=aarch64")
        # pip takes an index it cannot reach for one without the package: offline, every set would FAIL (exit 1)
        code, _, tail = dry_run(INDEX_PROBE, "", [], work, "index-probe")
        if code != 0:
            print(f"error: could not check: pip finds no {INDEX_PROBE} for aarch64, which PyPI has (no network, or an "
                  "index without aarch64 wheels):\n     " + tail.replace("\n", "\n     "), file=sys.stderr)
            return 2
        failed = False
        for name in chosen:
            extra, constraints = SETS[name]
            code, installs, tail = dry_run(wheel, extra, constraints, work, name)
            label = f"dronseg-edge[{extra}]" if extra else "dronseg-edge"
            if constraints:
                label += " " + " ".join(f"'{c}'" for c in constraints)
            if code != 0:
                failed = True
                print(f"FAIL {label}: pip cannot resolve it for aarch64:\n     " + tail.replace("\n", "\n     "))
                continue
            failures, notes = judge(name, installs)
            failed |= bool(failures)
            packages = ", ".join(f"{i['metadata']['name']} {i['metadata']['version']}" for i in installs
                                 if canonical(i["metadata"]["name"]) != "dronseg-edge")
            print(f"{'FAIL' if failures else 'OK  '} {label}: {len(installs) - 1} packages: {packages}")
            for line in failures:
                print(f"     FAIL {line}")
            for line in notes:
                print(f"     note {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
