"""One stage as one subprocess, killed with everything it started when its timeout runs out.

A process of its own per stage: a hung CUDA call, a deadlocked thread or a crash in one stage
cannot take the run with it, each stage starts from a clean CUDA context (like a user's program),
and the timeout is a hard one. The stage gets a budget a little shorter than its timeout, so it
normally stops itself and writes its report; the kill is the backstop, and the figures the stage
had written before it are kept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MODULES = {"env": "stage_env", "tests": "stage_tests", "latency": "stage_latency", "train": "stage_train",
           "pipeline": "stage_pipeline", "probes": "stage_probes", "ort-cuda": "stage_ort"}
GRACE_S = 3.0  # between SIGTERM and SIGKILL


def grant(minimum: float, timeout: float, left: float) -> tuple[float | None, str]:
    """(the timeout a stage gets, "") when its start and first item (``minimum`` s) fit in the ``left``
    seconds of the call's budget, capped at what is left; else (None, why it is skipped)."""
    if left < minimum:
        return None, f"skipped: needs ~{minimum:.0f} s to start and run its first item, {max(left, 0):.0f} s left of the budget"
    return min(timeout, left), ""


def budget_for(timeout: float) -> float:
    """The stage's own budget: its timeout less a margin to write its report and exit."""
    return max(timeout - min(6.0, max(1.0, 0.12 * timeout)), 0.5)


def run(stage: str, *, root: Path, results: Path, work: Path, plan_path: Path, timeout: float, env: dict) -> dict:
    report_path = results / "stages" / f"{stage}.json"
    log_path = results / "logs" / f"{stage}.log"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", f"benchmarks.gpu_check.{MODULES[stage]}", "--plan", str(plan_path), "--report",
           str(report_path), "--work", str(work), "--results", str(results), "--budget-s", f"{budget_for(timeout):.1f}"]
    start = time.monotonic()
    timed_out = False
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers: loader workers, a child pytest, ...
    seconds = time.monotonic() - start
    report = _read(report_path)
    status, reason = report.get("status"), report.get("reason") or ""
    if timed_out:
        status, reason = "timeout", f"killed at its {timeout:.0f} s timeout" + (f" ({reason})" if reason else "")
    elif status not in ("passed", "failed", "skipped", "timeout"):
        status, reason = "failed", f"exit code {rc} before the stage reported: {_last_line(log_path)}"
    elif rc != 0 and status == "passed":
        status, reason = "failed", f"exit code {rc}: {_last_line(log_path)}"
    return {"name": stage, "status": status, "reason": reason, "seconds": round(seconds, 2), "timeout_s": timeout,
            "exit_code": rc, "log": str(log_path.relative_to(results)), "figures": report.get("figures", {}),
            "notes": report.get("notes", [])}


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the stage is the leader of its own session (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
