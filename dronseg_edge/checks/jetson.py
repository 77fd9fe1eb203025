"""Jetson boards: model, L4T/JetPack release, power mode and clocks. No lines elsewhere.

The paths are module attributes so tests can point them at fake files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

from dronseg_edge import machine
from dronseg_edge.checks.base import OK, WARN, Check
from dronseg_edge.machine import is_jetson

DEVFREQ = Path("/sys/class/devfreq")  # GPU clock (Hz) of Tegra iGPUs: ga10b on Orin, gv11b on Xavier
CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")  # kHz
NVPMODEL = "nvpmodel"

# L4T release -> JetPack, for the releases NVIDIA published; others fall back to the major series.
JETPACK = {"35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3",
           "35.6.0": "5.1.4", "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1"}
JETPACK_SERIES = {32: "4.x", 34: "5.0 DP", 35: "5.x", 36: "6.x", 38: "7.x"}
_L4T = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", re.IGNORECASE)
GPU_DEVFREQ_NAMES = ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")


def parse_l4t(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, GCID: ...' -> '36.4.3' (the L4T version JetPack is named by)."""
    match = _L4T.search(text or "")
    return None if match is None else ".".join([match.group(1), *(match.group(2).split(".") + ["0"])[:2]])


def jetpack_for(l4t: str) -> str:
    return JETPACK.get(l4t) or JETPACK_SERIES.get(int(l4t.split(".")[0]), "unknown")


def parse_nvpmodel(output: str) -> tuple[str, str | None] | None:
    """``nvpmodel -q`` prints 'NV Power Mode: MAXN' and then the mode number -> ('MAXN', '0')."""
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.lower().startswith("nv power mode"):
            name = line.split(":", 1)[1].strip() if ":" in line else "?"
            number = next((n for n in lines[index + 1:] if n.isdigit()), None)
            return name, number
    return None


def jetson_checks() -> Iterator[Check]:
    if not is_jetson():
        return
    yield Check("jetson", OK, machine.read_text(machine.DEVICE_TREE_MODEL) or "Tegra board (no device-tree model)")
    for check in (release_check, power_mode_check, clocks_check):
        yield check()


def release_check() -> Check:
    text = machine.read_text(machine.TEGRA_RELEASE)
    l4t = parse_l4t(text) if text else None
    if l4t is None:
        release = machine.TEGRA_RELEASE
        shown = f"{release} unreadable" if text is None else f"unrecognised {release}: {text.splitlines()[0][:80]!r}"
        return Check("jetpack", WARN, f"{shown}; TensorRT/CUDA versions follow the JetPack release")
    return Check("jetpack", OK, f"L4T {l4t} = JetPack {jetpack_for(l4t)}")


def power_mode_check() -> Check:
    tool = shutil.which(NVPMODEL)
    if tool is None:
        return Check("power mode", WARN, f"{NVPMODEL} not found (it comes with JetPack): power mode unknown")
    try:
        parsed = parse_nvpmodel(subprocess.run([tool, "-q"], capture_output=True, text=True, timeout=10,
                                               check=True).stdout)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("power mode", WARN, f"`{NVPMODEL} -q` failed ({type(exc).__name__}): power mode unknown")
    if parsed is None:
        return Check("power mode", WARN, f"`{NVPMODEL} -q` printed no 'NV Power Mode' line: power mode unknown")
    name, number = parsed
    shown = name + (f" (mode {number})" if number is not None else "")
    if "MAXN" in name.upper():
        return Check("power mode", OK, shown)
    return Check("power mode", WARN, f"{shown}: a power-capped mode, so latency is higher than the board can do; "
                                     f"`sudo {NVPMODEL} -m <MAXN mode>` (list them: {NVPMODEL} -p --verbose)")


def _mhz(path: Path, per_mhz: int) -> int | None:
    text = machine.read_text(path)
    return round(int(text) / per_mhz) if text and text.isdigit() else None


def clocks_check() -> Check:
    try:
        gpu = next((entry for entry in sorted(DEVFREQ.iterdir())
                    if any(key in entry.name.lower() for key in GPU_DEVFREQ_NAMES)), None)
    except OSError:
        gpu = None
    parts, below_max = [], False
    for label, folder, now_file, top_file, per_mhz in (("GPU", gpu, "cur_freq", "max_freq", 1_000_000),
                                                       ("CPU0", CPUFREQ, "scaling_cur_freq", "cpuinfo_max_freq", 1000)):
        now, top = (_mhz(folder / now_file, per_mhz), _mhz(folder / top_file, per_mhz)) if folder else (None, None)
        if now is not None and top is not None:
            parts.append(f"{label} {now}/{top} MHz")
            below_max = below_max or now < top
    if not parts:
        return Check("clocks", WARN, f"unreadable ({DEVFREQ}, {CPUFREQ})")
    # Clocks below their maximum are normal at idle (DVFS); only benchmarks need them pinned.
    hint = "; `sudo jetson_clocks` pins them at max for benchmarks" if below_max else ""
    return Check("clocks", OK, f"{', '.join(parts)} (now/max){hint}")
