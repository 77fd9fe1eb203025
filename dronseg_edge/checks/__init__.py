"""``dronseg-edge checks``: what this machine can run, one line per check (OK / WARN / FAIL).

Every library is imported inside its check and a missing or broken one is a WARN line (FAIL only
for what the package cannot do without), never a traceback; an unexpected error in a check becomes
a WARN line naming its group. The verdict comes last, ``backends``: FAIL when nothing here can run a model.
"""

from __future__ import annotations

from typing import Callable, Iterable

from dronseg_edge.checks import (cuda_checks, dependencies, jetson, onnxruntime_checks, system, tensorrt_checks,
                                 torch_checks, video)
from dronseg_edge.checks.base import FAIL, OK, STATUSES, WARN, Check
from dronseg_edge.errors import docs_url
from dronseg_edge.machine import first_line

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
    """Every check of this machine, in group order, and the ``backends`` verdict last.

    An unexpected exception in a group is a bug in a check, not a verdict on the machine: one WARN line
    naming the group ("could not tell"); the lines it gave before stay and the other groups still run.
    """
    results: list[Check] = []
    for label, group in [*groups(), ("backends", lambda: [backends_check(results)])]:
        try:
            results.extend(group())
        except Exception as exc:
            results.append(Check(label, WARN, f"could not be checked ({first_line(exc)}); please report this as a bug"))
    return results


def summary(results: list[Check]) -> str:
    return ", ".join(f"{sum(check.status == status for check in results)} {status}" for status in STATUSES)


# The verdict, read from the other groups' lines after they ran: a machine where no backend works is FAIL
# (`checks` exits 1), while each missing library alone is only a WARN.
INSTALL = ("pip install 'dronseg-edge[ort]' (ONNX Runtime on the CPU), or 'dronseg-edge[ort-gpu]' / 'dronseg-edge[trt]' "
           f"on an NVIDIA GPU; on a Jetson: {docs_url('jetson.md', 'step-by-step-on-jetpack-6')}")


def backends_check(results: list[Check]) -> Check:
    """One line naming what can run a model (``facts['backends']``: 'onnxruntime', 'tensorrt', 'torch')."""
    ok = {check.name for check in results if check.status == OK}
    providers = [onnxruntime_checks.short(check.facts["provider"]) for check in results
                 if check.name.startswith("ort ") and check.status == OK and check.facts.get("runs")]
    runs = {"onnxruntime": f"onnxruntime ({', '.join(providers)}): .onnx" if providers else None,
            "tensorrt": "tensorrt: .engine" if {"tensorrt", "cuda-bindings"} <= ok else None,
            "torch": "torch: .pt" if {"torch", "torchvision"} <= ok else None}
    found = [name for name, shown in runs.items() if shown]
    facts = {"backends": found, "onnxruntime_providers": providers}
    if not found:
        return Check("backends", FAIL, f"nothing here can run a model (no ONNX Runtime session ran, no TensorRT engine "
                                       f"was built, no torch with torchvision): {INSTALL}", facts)
    return Check("backends", OK, "; ".join(runs[name] for name in found), facts)
