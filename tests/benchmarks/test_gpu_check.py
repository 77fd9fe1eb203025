"""`make gpu-check` (benchmarks/gpu_check): the orchestration in CPU mode end to end, and its parts.

The end-to-end run forces a 1 s timeout on the tests stage (with estimates scaled down, so the stage
starts pytest instead of skipping it): it must be reported as ``timeout`` and the stages after it must
still run. On the CPU the GPU-only parts say "no CUDA" and the optional
ort-cuda stage is skipped (no onnxruntime-gpu staged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import runner, summary, wheels  # noqa: E402
from benchmarks.gpu_check.plan import KINDS, STAGES, cpu_plan, describe, gpu_plan  # noqa: E402
from benchmarks.gpu_check.stage_tests import parse_junit, parse_verbose  # noqa: E402

STATUSES = {"passed", "failed", "skipped", "timeout"}


@pytest.mark.slow
def test_cpu_mode_runs_every_stage_and_reports_a_timeout(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--out", str(results), "--work", str(tmp_path / "work"),
           "--wheels", str(tmp_path / "no-wheels"), "--stage-timeout", "tests=1", "--bundle", str(tmp_path / "bundle"),
           "--estimate-scale", "0.01"]  # so the tests stage starts pytest within its 1 s, and is killed there
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: a stage timed out

    doc = json.loads((results / "summary.json").read_text())
    assert doc["schema"] == "dronseg-edge-gpu-check/1" and doc["complete"] and doc["mode"] == "cpu"
    assert [s["name"] for s in doc["stages"]] == list(STAGES)
    for stage in doc["stages"]:
        assert stage["status"] in STATUSES and stage["seconds"] >= 0 and stage["timeout_s"] > 0, stage
        assert (results / stage["log"]).is_file()
    by_name = {s["name"]: s for s in doc["stages"]}
    assert by_name["tests"]["status"] == "timeout" and "1 s timeout" in by_name["tests"]["reason"]
    assert by_name["tests"]["seconds"] < 10  # killed, process group and all, not waited for
    logs = {name: (results / by_name[name]["log"]).read_text()[-2000:] for name in by_name}
    for name in ("env", "latency", "train", "pipeline", "probes"):  # the run went on after the timeout
        assert by_name[name]["status"] == "passed", (name, by_name[name]["reason"], logs[name])
    assert by_name["ort-cuda"]["status"] == "skipped"
    assert by_name["ort-cuda"]["reason"].startswith("no onnxruntime-gpu wheels staged, and this machine's onnxruntime has no CUDA")
    assert proc.stdout.startswith("gpu-check: cpu mode") and "plan (cpu mode): budget" in proc.stdout
    assert proc.stdout.index("plan (cpu mode)") < proc.stdout.index("] env")  # the plan comes before any stage
    items = by_name["probes"]["figures"]["items"]
    assert [i["item"] for i in items][:2] == ["checkpoint", "predict_equals_stream"]  # the CUDA-only probes skip first
    assert all(i["status"] == "done" and i["seconds"] >= 0 and i["estimate_s"] > 0 for i in items)
    assert all(s["estimate_s"] > 0 for s in doc["stages"])

    rows = by_name["latency"]["figures"]["rows"]
    assert {r["arch"] for r in rows} == set(cpu_plan().latency_archs)
    assert all(r["median_ms"] > 0 for r in rows if r["status"] == "passed")
    assert {r["reason"] for r in rows if r["status"] == "skipped"} == {"no CUDA"}
    train = by_name["train"]["figures"]
    assert train["throughput"]["images_per_s"] > 0 and train["fp16_check"]["weights_changed"]
    pipe = by_name["pipeline"]["figures"]
    assert pipe["measurement"]["ratio"] > 0 and pipe["cli"]["exit_code"] == 0
    probes = by_name["probes"]["figures"]["probes"]
    assert probes["predict_equals_stream"]["status"] == "passed"
    assert probes["two_segmenters_capturing_at_once"] == {"status": "skipped", "reason": "no CUDA"}

    assert [t["name"] for t in doc["targets"]] == ["resnet101_ms", "mobilenet_ms", "end_to_end_ratio", "train_images_per_s"]
    assert all(t["met"] is None for t in doc["targets"])  # CPU mode judges no target
    assert doc["setup"]["status"] == "skipped" and doc["versions"]["torch"]

    md = (results / "summary.md").read_text()
    assert "## Stages" in md and "## Targets" in md and "| tests | timeout |" in md
    assert all(f"| {name} |" in md for name in STAGES)
    bundled = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert bundled == sorted(["summary.json", "summary.md", f"{results.name}.tar.gz"])


def test_junit_and_verbose_output_give_counts_and_skip_reasons(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite name="pytest">
      <testcase classname="tests.a" name="test_ok"/>
      <testcase classname="tests.a" name="test_gpu"><skipped message="needs a CUDA GPU">x</skipped></testcase>
      <testcase classname="tests.b" name="test_gpu2"><skipped message="needs a CUDA GPU">x</skipped></testcase>
      <testcase classname="tests.b" name="test_bad"><failure message="assert 1 == 2">trace</failure></testcase>
      <testcase classname="tests.c" name="test_err"><error message="fixture broke">trace</error></testcase>
    </testsuite></testsuites>""")
    result = parse_junit(xml)
    assert (result["passed"], result["failed"], result["errors"], result["skipped"], result["total"]) == (1, 1, 1, 2, 5)
    assert result["skip_reasons"] == [{"reason": "needs a CUDA GPU", "tests": 2}] and not result["partial"]
    assert result["failures"][0] == {"test": "tests.b::test_bad", "kind": "failure", "message": "assert 1 == 2"}

    text = ("tests/x.py::test_a PASSED  [ 33%]\ntests/x.py::test_b SKIPPED (needs TensorRT)  [ 66%]\n"
            "tests/y.py::test_c FAILED  [100%]\nnoise\n")
    partial = parse_verbose(text)
    assert (partial["passed"], partial["skipped"], partial["failed"], partial["partial"]) == (1, 1, 1, True)
    assert partial["skip_reasons"] == [{"reason": "needs TensorRT", "tests": 1}]


def test_targets_are_judged_only_in_gpu_mode():
    def stage(name, figures):
        return {"name": name, "status": "passed", "reason": "", "figures": figures}

    stages = [
        stage("latency", {"rows": [
            {"arch": "deeplabv3_resnet101", "variant": "fp16 graph", "status": "passed", "median_ms": 5.5},
            {"arch": "deeplabv3_resnet101", "variant": "fp32", "status": "passed", "median_ms": 54.0},
            {"arch": "deeplabv3_resnet101", "variant": "bf16 graph", "status": "failed", "median_ms": 1.0},
            {"arch": "deeplabv3_mobilenet_v3_large", "variant": "fp16 graph", "status": "passed", "median_ms": 2.5}]}),
        stage("ort-cuda", {"rows": [{"arch": "deeplabv3_mobilenet_v3_large", "precision": "fp16", "cuda_graph": True,
                                     "status": "passed", "median_ms": 2.2}]}),
        stage("pipeline", {"measurement": {"ratio": 0.95}}),
        stage("train", {"throughput": {"images_per_s": 40.0}}),
    ]
    got = {t["name"]: t for t in summary.targets(stages, gpu_plan().to_dict())}
    assert got["resnet101_ms"]["measured"] == 5.5 and got["resnet101_ms"]["met"] is True  # the failed row does not count
    assert got["mobilenet_ms"]["measured"] == 2.2 and got["mobilenet_ms"]["met"] is False
    assert got["mobilenet_ms"]["source"] == "ort-cuda: onnxruntime fp16 + CUDA graph"
    assert got["end_to_end_ratio"]["met"] is True and got["train_images_per_s"]["met"] is False
    on_cpu = summary.targets(stages, cpu_plan().to_dict())
    assert all(t["met"] is None and "CPU mode" in t["note"] for t in on_cpu)


def test_reduced_precision_rows_fail_only_on_nan_or_gross_disagreement():
    from benchmarks.gpu_check.stage_latency import judge

    def figures(agreement, nonfinite=0):
        failures = [] if agreement >= 99.5 else [f"logits: argmax agreement {agreement}% < 99.5%"]
        return {"agreement_pct": agreement, "candidate_nonfinite": nonfinite, "parity_passed": not failures,
                "parity_failures": failures + (["logits: 3 NaN/Inf values"] if nonfinite else [])}

    assert judge({"status": "passed"}, figures(99.9)) == {"status": "passed", **figures(99.9)}
    near = judge({"status": "passed"}, figures(99.0))  # a random model's near-ties: a warning only
    assert near["status"] == "passed" and "random weights" in near["warning"]
    assert judge({"status": "passed"}, figures(60.0))["status"] == "failed"
    broken = judge({"status": "passed"}, figures(99.9, nonfinite=3))
    assert broken["status"] == "failed" and "NaN" in broken["reason"]


def test_gpu_plan_fits_in_five_minutes_when_its_estimates_hold():
    plan = gpu_plan()
    assert plan.budget_s <= 295  # the 300 s, machine start not included, a few seconds for the summary
    # Every stage but the optional one (onnxruntime-gpu is not staged in a lease: benchmarks/README.md);
    # where it is, its last items give way to the budget, each with its reason.
    assert plan.timeouts["wheels"] + sum(plan.stage_estimate(s) for s in STAGES if KINDS[s] != "optional") <= plan.budget_s
    for stage in STAGES:  # every item priced by the table, none by the fallback
        for item in plan.items(stage):
            keys = (item, item.split(":")[0] + ": *", "*")
            assert any(k in plan.estimates[stage] for k in keys), (stage, item)


def test_correctness_runs_before_speed_and_the_optional_stage_last():
    kinds = [KINDS[s] for s in STAGES]
    assert kinds == sorted(kinds, key=["correctness", "speed", "optional"].index)
    assert STAGES[:3] == ("env", "tests", "probes")


def test_the_whole_call_stays_in_its_budget_even_if_every_stage_runs_to_its_timeout():
    """The orchestrator's rule (runner.grant), every stage taking all it is granted plus the kill's grace."""
    plan = gpu_plan()
    elapsed, ran, skipped = plan.timeouts["wheels"], [], []
    for stage in STAGES:
        timeout, why = runner.grant(plan.first_item(stage), plan.timeouts[stage], plan.budget_s - elapsed)
        if timeout is None:
            skipped.append((stage, why))
            continue
        ran.append(stage)
        elapsed += timeout + runner.GRACE_S
    assert elapsed <= 300 and ran[:3] == ["env", "tests", "probes"]
    assert all("left of the budget" in why for _, why in skipped)


def test_grant_caps_a_stage_at_what_is_left_and_skips_what_cannot_start():
    assert runner.grant(20, 60, 300) == (60, "")
    assert runner.grant(20, 60, 45) == (45, "")
    timeout, why = runner.grant(20, 60, 12)
    assert timeout is None and why == "skipped: needs ~20 s to start and run its first item, 12 s left of the budget"


def test_a_stage_runs_an_item_only_when_its_estimate_fits_and_records_both(tmp_path):
    from benchmarks.gpu_check.report import StageContext, StageReport

    plan = gpu_plan()
    report = StageReport(tmp_path / "probes.json", "probes")
    ctx = StageContext(plan, report, tmp_path, tmp_path, deadline=time.monotonic() + 9.0)
    assert ctx.fits("predict_equals_stream")  # 5 s estimated, ~9 s left
    with ctx.timed("predict_equals_stream"):
        pass
    assert not ctx.fits("two_segmenters_capturing_at_once")  # 10 s estimated
    done, skipped = json.loads((tmp_path / "probes.json").read_text())["figures"]["items"]
    assert done["item"] == "predict_equals_stream" and done["status"] == "done" and done["estimate_s"] == 5
    assert skipped["status"] == "not run" and skipped["seconds"] is None
    assert skipped["reason"].startswith("not run: ~10 s estimated, 9 s left") or skipped["reason"].startswith(
        "not run: ~10 s estimated, 8 s left")


def test_a_tests_stage_without_time_for_a_pytest_run_is_skipped_not_started(tmp_path):
    from benchmarks.gpu_check import stage_tests
    from benchmarks.gpu_check.report import StageContext, StageReport

    report = StageReport(tmp_path / "tests.json", "tests")
    ctx = StageContext(gpu_plan(), report, tmp_path, tmp_path, deadline=time.monotonic() + 3.0)
    stage_tests.body(ctx)
    data = json.loads((tmp_path / "tests.json").read_text())
    assert data["status"] == "skipped" and "no pytest run fits" in data["reason"]
    assert [i["item"] for i in data["figures"]["items"]] == [item for item, _ in stage_tests.RUNS]
    assert stage_tests.RUNS[0][1] == list(stage_tests.FIRST) and all(f"--ignore={p}" in stage_tests.RUNS[1][1]
                                                                     for p in stage_tests.FIRST)


def test_the_printed_plan_lists_every_stage_with_its_estimate():
    plan = gpu_plan()
    lines = describe(plan, {"latency"})
    text = "\n".join(lines)
    assert lines[0].startswith("plan (gpu mode): budget 295 s")
    assert "tests     not selected (--only)" in text and "latency   speed" in text and "env       correctness" in text
    assert lines[-1].startswith("  total estimate")


def test_onnxruntime_gpu_parts_are_reassembled_and_checked(tmp_path, monkeypatch):
    import hashlib

    wheel = tmp_path / "src" / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(os.urandom(3000))
    tar_path = tmp_path / "wheels.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(wheel, arcname=wheel.name)
    data = tar_path.read_bytes()
    chunks = tmp_path / "carry"
    chunks.mkdir()
    for i, start in enumerate(range(0, len(data), 4000), 1):
        (chunks / f"{i:02d}").write_bytes(data[start:start + 4000])
    parts = len(list(chunks.iterdir()))
    folder = tmp_path / "staged"
    folder.mkdir()
    monkeypatch.setattr(wheels, "CHUNK_DIRS", (chunks,))
    monkeypatch.setattr(wheels, "EXTRACTED", ())

    assert wheels.find_ort_gpu(tmp_path, folder, None, tmp_path / "work") == (None, "no onnxruntime-gpu wheels staged")
    manifest = {"wheel": "onnxruntime-gpu==1.31.1", "parts": parts + 1, "sha256": hashlib.sha256(data).hexdigest()}
    (folder / wheels.MANIFEST).write_text(json.dumps(manifest))
    found, why = wheels.find_ort_gpu(tmp_path, folder, None, tmp_path / "work")
    assert found is None and f"{parts} of {parts + 1} found" in why
    (folder / wheels.MANIFEST).write_text(json.dumps({**manifest, "parts": parts}))
    (tmp_path / "work").mkdir()
    found, why = wheels.find_ort_gpu(tmp_path, folder, None, tmp_path / "work")
    assert found.name == wheel.name and found.read_bytes() == wheel.read_bytes() and "reassembled" in why
    (folder / wheels.MANIFEST).write_text(json.dumps({**manifest, "parts": parts, "sha256": "0" * 64}))
    assert "checksum" in wheels.find_ort_gpu(tmp_path, folder, None, tmp_path / "work")[1]


@pytest.mark.slow
def test_ort_stage_measures_exports_with_the_installed_onnxruntime(tmp_path):
    """The ort-cuda measurement code on the CPU provider (the stage itself runs it only with onnxruntime-gpu)."""
    pytest.importorskip("onnxruntime")
    from benchmarks.gpu_check.report import StageContext, StageReport
    from benchmarks.gpu_check.stage_ort import measure

    report = StageReport(tmp_path / "ort.json", "ort-cuda")
    ctx = StageContext(cpu_plan(), report, tmp_path / "work", tmp_path, deadline=float("inf"))
    rows = measure(ctx)
    assert [(r["precision"], r["status"]) for r in rows] == [("fp32", "passed"), ("fp16", "passed")], rows
    for row in rows:
        assert row["provider"].startswith("CPUExecutionProvider") and row["median_ms"] > 0
        assert row["agreement_pct"] >= row["parity_min_agreement_pct"] and row["max_abs_logit_diff"] is not None
    assert json.loads((tmp_path / "ort.json").read_text())["figures"]["rows"] == json.loads(json.dumps(rows))


def test_bad_option_values_are_one_line_before_anything_runs():
    """Before: --stage-timeout tests=abc was a ValueError traceback; --timeout-scale 0 skipped every stage
    for the budget and exited 0, as if everything had passed (a whole GPU lease spent on nothing)."""
    from benchmarks.gpu_check.__main__ import make_plan, parse_args

    for args, message in ((["--stage-timeout", "tests=abc"], "--stage-timeout tests=abc"),
                          (["--stage-timeout", "tests=-5"], "--stage-timeout tests=-5"),
                          (["--timeout-scale", "0"], "--timeout-scale 0"), (["--estimate-scale", "-1"], "--estimate-scale -1")):
        with pytest.raises(SystemExit, match=message):
            make_plan(parse_args(["--cpu", *args]), None)
    assert make_plan(parse_args(["--cpu", "--stage-timeout", "tests=1.5"]), None).timeouts["tests"] == 1.5


def test_a_relative_out_from_another_folder_reaches_the_stages(tmp_path, monkeypatch):
    """Before: the stages, which run in the repository root, were handed the relative --out and failed
    ("No such file or directory: 'gc/stages/plan.json'"), every one of them."""
    from benchmarks.gpu_check.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    code = main(["--cpu", "--only", "env", "--out", "gc", "--work", str(tmp_path / "work"), "--wheels", str(tmp_path / "none")])
    doc = json.loads((tmp_path / "gc" / "summary.json").read_text())
    assert code == 0 and [s["status"] for s in doc["stages"] if s["name"] == "env"] == ["passed"]
