"""`make gpu-check` (benchmarks/gpu_check): the orchestration in CPU mode end to end, and its parts.

The end-to-end run forces a 1 s timeout on the tests stage: it must be reported as ``timeout`` and
the stages after it must still run. On the CPU the GPU-only parts say "no CUDA" and the optional
ort-cuda stage is skipped (no onnxruntime-gpu staged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import summary, wheels  # noqa: E402
from benchmarks.gpu_check.plan import STAGES, cpu_plan, gpu_plan  # noqa: E402
from benchmarks.gpu_check.stage_tests import parse_junit, parse_verbose  # noqa: E402

STATUSES = {"passed", "failed", "skipped", "timeout"}


@pytest.mark.slow
def test_cpu_mode_runs_every_stage_and_reports_a_timeout(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--out", str(results), "--work", str(tmp_path / "work"),
           "--wheels", str(tmp_path / "no-wheels"), "--stage-timeout", "tests=1", "--bundle", str(tmp_path / "bundle")]
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
    assert by_name["ort-cuda"]["status"] == "skipped" and by_name["ort-cuda"]["reason"] == "no onnxruntime-gpu wheels staged"

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


def test_gpu_plan_fits_in_five_minutes():
    assert sum(gpu_plan().timeouts.values()) <= 285  # stages + wheel setup, each a hard timeout


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
