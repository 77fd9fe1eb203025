"""The side of a stage process: its arguments, its deadline, and the report it keeps on disk.

Every stage runs as ``python -m benchmarks.gpu_check.stage_NAME --plan P --report R --work W
--budget-s S --results D``. The report (JSON) is rewritten after every figure, so when the
orchestrator kills a stage at its timeout, what the stage had measured is still there. Keep this
module free of torch: the stages that may skip (ort-cuda) must start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.gpu_check.plan import Plan
from dronseg_edge.atomic import write_json_atomic

STATUSES = ("passed", "failed", "skipped", "timeout")


class StageReport:
    """status (passed | failed | skipped; the orchestrator adds timeout), reason, figures, notes."""

    def __init__(self, path: Path, stage: str):
        self.path = Path(path)
        self.data: dict[str, Any] = {"stage": stage, "status": None, "reason": "", "figures": {}, "notes": []}

    def figure(self, key: str, value: Any) -> Any:
        self.data["figures"][key] = value
        self.save()
        return value

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.data["notes"].append(text)
        self.save()

    def finish(self, status: str, reason: str = "") -> None:
        assert status in STATUSES, status
        self.data["status"], self.data["reason"] = status, reason
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


@dataclass
class StageContext:
    plan: Plan
    report: StageReport
    work: Path  # cached checkpoints, data, videos (shared by the stages of a run)
    results: Path  # the run's results folder (for files a stage keeps, e.g. junit XML)
    deadline: float  # time.monotonic() past which no new work starts

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def enough(self, seconds: float) -> bool:
        return self.left() >= seconds

    def out_of_time(self, what: str) -> str:
        return f"not run: stage budget spent ({max(self.left(), 0):.0f} s left before {what})"


def parse_stage_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", type=Path, required=True, help="plan JSON written by the orchestrator")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, required=True)
    return parser.parse_args(argv)


def stage_main(stage: str, body: Callable[[StageContext], None], argv=None) -> int:
    """Run ``body``; an exception becomes status failed with its first line as the reason (traceback to the log)."""
    args = parse_stage_args(argv)
    start = time.monotonic()
    plan = Plan.from_dict(json.loads(args.plan.read_text()))
    report = StageReport(args.report, stage)
    report.save()
    ctx = StageContext(plan, report, args.work, args.results, start + args.budget_s)
    try:
        body(ctx)
    except Exception as exc:  # any failure is a finding to report, not a reason to lose the figures
        traceback.print_exc()
        message = (str(exc).strip().splitlines() or [""])[0][:300]
        report.finish("failed", f"{type(exc).__name__}: {message}")
        return 1
    if report.data["status"] is None:
        report.finish("passed")
    print(f"{stage}: {report.data['status']}" + (f" ({report.data['reason']})" if report.data["reason"] else ""),
          flush=True)
    return 0 if report.data["status"] != "failed" else 1


def run_stage(stage: str, body: Callable[[StageContext], None]) -> None:
    sys.exit(stage_main(stage, body))
