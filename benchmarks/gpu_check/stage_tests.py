"""Stage tests: every test marked ``gpu`` (``pytest -m gpu``), with pass/fail/skip counts and each skip's reason,
in two runs (RUNS): the CUDA wrapper's and CUDA graphs' GPU tests first, then the rest.

Counts come from pytest's JUnit XML; when pytest is stopped at the stage budget there is no XML,
and the verbose log lines (``path::test PASSED``) give the counts of what had finished.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from benchmarks.gpu_check.report import StageContext, run_stage

ROOT = Path(__file__).resolve().parents[2]
VERBOSE_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)(?: \((.*)\))?")


def parse_junit(path: Path) -> dict:
    """Counts, skip reasons (grouped, with how many tests each) and failure messages from a JUnit XML file."""
    root = ET.parse(path).getroot()
    counts = Counter()
    skips: Counter = Counter()
    failures = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag: child for child in case}
        if "failure" in kinds or "error" in kinds:
            tag = "failure" if "failure" in kinds else "error"
            counts["failed" if tag == "failure" else "errors"] += 1
            failures.append({"test": name, "kind": tag, "message": (kinds[tag].get("message") or "")[:300]})
        elif "skipped" in kinds:
            counts["skipped"] += 1
            skips[(kinds["skipped"].get("message") or "no reason given").strip()] += 1
        else:
            counts["passed"] += 1
    return _result(counts, skips, failures, partial=False)


def parse_verbose(text: str) -> dict:
    """The same from ``pytest -v`` output, for a run stopped before it wrote its XML."""
    counts = Counter()
    skips: Counter = Counter()
    failures = []
    for line in text.splitlines():
        match = VERBOSE_LINE.match(line.strip())
        if not match:
            continue
        test, outcome, reason = match.groups()
        if outcome in ("PASSED", "XFAIL", "XPASS"):
            counts["passed"] += 1
        elif outcome == "SKIPPED":
            counts["skipped"] += 1
            skips[(reason or "no reason given").strip()] += 1
        else:
            counts["failed" if outcome == "FAILED" else "errors"] += 1
            failures.append({"test": test, "kind": outcome.lower(), "message": ""})
    return _result(counts, skips, failures, partial=True)


def _result(counts: Counter, skips: Counter, failures: list, partial: bool) -> dict:
    totals = {key: counts.get(key, 0) for key in ("passed", "failed", "errors", "skipped")}
    totals["total"] = sum(totals.values())
    return {**totals, "skip_reasons": [{"reason": reason, "tests": n} for reason, n in skips.most_common()],
            "failures": failures, "partial": partial}


# Two pytest runs, the GPU tests of the CUDA wrapper (runtime/cuda_runtime.py: the TensorRT runner's
# CUDA calls, which need no TensorRT) and of CUDA-graph capture across threads first: they are the
# quickest, and would otherwise wait behind the whole suite's collection.
FIRST = ("tests/runtime/test_cuda_runtime.py", "tests/runtime/test_cuda_graph.py")
RUNS = (("pytest -m gpu: cuda_runtime, CUDA graphs", list(FIRST)),
        ("pytest -m gpu: the rest", ["tests", *(f"--ignore={path}" for path in FIRST)]))


def run_pytest(ctx: StageContext, index: int, targets: list[str]) -> tuple[dict, bool]:
    """One ``pytest -m gpu`` run over ``targets``: (its result, whether it was stopped at the stage budget)."""
    stages_dir = ctx.results / "stages"
    stages_dir.mkdir(parents=True, exist_ok=True)
    junit, log = stages_dir / f"tests-{index}-junit.xml", stages_dir / f"tests-{index}-pytest.log"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={junit}", f"--timeout={ctx.plan.test_timeout_s}", *targets]
    budget = max(ctx.left() - 2.0, 1.0)  # leave time to parse and write the report
    stopped = False
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            stopped = True
    text = log.read_text(encoding="utf-8", errors="replace")
    print(text[-20000:])  # the stage log keeps pytest's output too
    result = parse_junit(junit) if junit.is_file() and not stopped else parse_verbose(text)
    return {**result, "command": " ".join(cmd[1:]), "pytest_exit_code": rc}, stopped


def combined(results: list[dict]) -> dict:
    """The runs' counts added up, their skip reasons and failures joined."""
    totals = {key: sum(r[key] for r in results) for key in ("passed", "failed", "errors", "skipped", "total")}
    skips: Counter = Counter()
    for r in results:
        skips.update({s["reason"]: s["tests"] for s in r["skip_reasons"]})
    return {**totals, "skip_reasons": [{"reason": reason, "tests": n} for reason, n in skips.most_common()],
            "failures": [f for r in results for f in r["failures"]], "partial": any(r["partial"] for r in results)}


def body(ctx: StageContext) -> None:
    report = ctx.report
    runs = []
    for index, (item, targets) in enumerate(RUNS, 1):
        if not ctx.fits(item):  # recorded in the items figure with its reason
            continue
        with ctx.timed(item):
            result, stopped = run_pytest(ctx, index, targets)
        runs.append({"run": item, **result})
        report.figure("runs", runs)
        if stopped:
            report.figure("results", combined(runs))
            report.finish("timeout", f"{item}: stopped at the stage budget: counts are partial")
            return
    if not runs:
        report.finish("skipped", "no pytest run fits in the stage's budget (see its items)")
        return
    result = report.figure("results", combined(runs))
    codes = [r["pytest_exit_code"] for r in runs]
    if result["failed"] or result["errors"]:
        report.finish("failed", f"{result['failed']} failed, {result['errors']} errors")
    elif result["total"] == 0:
        report.finish("failed", f"no GPU tests collected (pytest exit codes {codes})")
    elif any(code not in (0, 5) for code in codes):
        report.finish("failed", f"pytest exit codes {codes}")


if __name__ == "__main__":
    run_stage("tests", body)
