"""``dronseg-edge checks``: what this machine can run, one line per check (OK / WARN / FAIL).

Every library is imported inside its check and a missing or broken one is a WARN line (FAIL only
for what the package cannot do without), never a traceback; an unexpected error in a check becomes
a WARN line naming its group. The verdict comes last, ``backends``: FAIL when nothing here can run a model.
"""

from __future__ import annotations

from typing import Callable, Iterable

from dronseg_edge.checks import (cuda_checks, dependencies, jetson, onnxruntime_checks, system, tensorrt_checks,
                                 torch_checks, video)
from dronseg_edge.checks.backends import backends_check
from dronseg_edge.checks.base import FAIL, OK, STATUSES, WARN, Check, run_group

__all__ = ["FAIL", "OK", "STATUSES", "WARN", "Check", "groups", "run_checks", "summary"]


def groups() -> list[tuple[str, Callable[[], Iterable[Check]]]]:
    """(label, function) of each group, looked up at call time so tests can replace one."""
    return [
        ("system", system.system_checks),
        ("jetson", jetson.jetson_checks),
        ("cuda", cuda_checks.cuda_checks),
        ("torch", torch_checks.torch_checks),
        ("onnxruntime", onnxruntime_checks.onnxruntime_checks),
        ("tensorrt", tensorrt_checks.tensorrt_checks),
        ("video", video.video_checks),
        ("folders", system.folder_checks),
        ("dependencies", dependencies.dependency_checks),
    ]


def run_checks() -> list[Check]:
    """Every check of this machine, in group order, and the ``backends`` verdict last."""
    results: list[Check] = []
    for label, group in groups():
        results.extend(run_group(label, group))
    results.extend(run_group("backends", lambda: [backends_check(results)]))
    return results


def summary(results: list[Check]) -> str:
    return ", ".join(f"{sum(check.status == status for check in results)} {status}" for status in STATUSES)
