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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

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
    """What a stage works with: its plan, report, folders and deadline, and its items' estimates.

    Before each item a stage asks ``fits(item)`` (its estimate against the time left) and runs the
    item inside ``timed(item)``; both record the item in the report's ``items`` figure (estimate,
    seconds or the reason it did not run), which the summary sets against the plan.
    """

    plan: Plan
    report: StageReport
    work: Path  # cached checkpoints, data, videos (shared by the stages of a run)
    results: Path  # the run's results folder (for files a stage keeps, e.g. junit XML)
    deadline: float  # time.monotonic() past which no new work starts

    @property
    def stage(self) -> str:
        return self.report.data["stage"]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def estimate(self, item: str) -> float:
        return self.plan.estimate(self.stage, item)

    def fits(self, item: str) -> bool:
        """Whether ``item``'s estimate fits in the time left; when not, it is recorded as not run."""
        if self.left() >= self.estimate(item):
            return True
        self._record({"item": item, "estimate_s": self.estimate(item), "seconds": None, "status": "not run",
                      "reason": self.out_of_time(item)})
        return False

    @contextmanager
    def timed(self, item: str) -> Iterator[None]:
        """Run an item, recording its seconds next to its estimate (also when it raises)."""
        start = time.monotonic()
        status = "failed"
        try:
            yield
            status = "done"
        finally:
            self._record({"item": item, "estimate_s": self.estimate(item),
                          "seconds": round(time.monotonic() - start, 2), "status": status})

    def out_of_time(self, item: str) -> str:
        return (f"not run: ~{self.estimate(item):.0f} s estimated, {max(self.left(), 0):.0f} s left of the stage's "
                f"budget")

    def _record(self, entry: dict) -> None:
        items = list(self.report.data["figures"].get("items", []))
        self.report.figure("items", items + [entry])


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
