"""Stage pipeline: a synthetic drone video through the inference pipeline, end-to-end fps against model-only fps.

The measurement is benchmarks/pipeline.py's (``run_inference``, the function behind
``dronseg-edge infer``, after a warm-up that captures the CUDA graph); then the real command,
``python -m dronseg_edge infer CKPT video.mp4 --half``, runs once in its own process to prove the
CLI path on the device, cold start included (its fps is reported but not compared).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import pipeline as pipeline_benchmark
from benchmarks.gpu_check import fixtures
from benchmarks.gpu_check.plan import size_text
from benchmarks.gpu_check.report import StageContext, run_stage

ROOT = Path(__file__).resolve().parents[2]


def measure(ctx: StageContext) -> dict:
    plan = ctx.plan
    args = pipeline_benchmark.parse_args([
        "--arch", plan.pipeline_arch, "--size", size_text(plan.pipeline_size), "--frames", str(plan.pipeline_frames),
        "--device", plan.device, "--iters", str(plan.pipeline_iters), "--repeats", "1", "--work", str(ctx.work)]
        + (["--half"] if plan.cuda else []))
    doc = pipeline_benchmark.run(args)
    model_fps, e2e_fps = doc["model_only"]["fps"], doc["end_to_end"]["fps"]
    return {"settings": doc["settings"], "video": doc["video"], "model_only": doc["model_only"],
            "end_to_end": doc["end_to_end"], "ratio": e2e_fps / model_fps if model_fps else None}


def cli_run(ctx: StageContext, checkpoint: Path, video: Path) -> dict:
    """``dronseg-edge infer`` as a user runs it (``python -m dronseg_edge``: no console script needed)."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-infer-") as folder:
        out = Path(folder) / "run"
        cmd = [sys.executable, "-m", "dronseg_edge", "infer", str(checkpoint), str(video), "--out", str(out),
               "--device", ctx.plan.device, "--no-progress"] + (["--half"] if ctx.plan.cuda else [])
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(ctx.left() - 1.0, 1.0))
        except subprocess.TimeoutExpired:
            return {"command": " ".join(cmd[1:]), "status": "timeout", "exit_code": None,
                    "reason": f"stopped at the stage budget after {time.monotonic() - start:.0f} s"}
        seconds = time.monotonic() - start
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)
        result = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "seconds": round(seconds, 2)}
        summary_path = out / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            result.update({k: summary.get(k) for k in ("frames", "fps", "provider", "device", "video_codec", "stage_ms")})
            result["outputs"] = sorted(p.name for p in out.iterdir())
        else:
            result["error"] = (proc.stderr.strip().splitlines() or ["no summary.json written"])[-1][:300]
    return result


def body(ctx: StageContext) -> None:
    plan, report = ctx.plan, ctx.report
    device = fixtures.device_for(plan)
    with ctx.timed("measure"):
        result = report.figure("measurement", measure(ctx))
    print(f"end-to-end {result['end_to_end']['fps']:.1f} fps vs model-only {result['model_only']['fps']:.1f} fps", flush=True)
    problems = []
    if result["end_to_end"]["frames"] != result["video"]["frames"]:
        problems.append(f"end-to-end run wrote {result['end_to_end']['frames']} of {result['video']['frames']} frames")
    if not ctx.fits("dronseg-edge infer"):
        report.figure("cli", {"status": "not run", "reason": ctx.out_of_time("dronseg-edge infer")})
    else:
        ckpt = fixtures.checkpoint(ctx.work, plan.pipeline_arch, plan.pipeline_size, device)
        with ctx.timed("dronseg-edge infer"):
            cli = report.figure("cli", cli_run(ctx, ckpt, Path(result["video"]["path"])))
        if cli.get("status") == "timeout":
            report.finish("timeout", f"dronseg-edge infer: {cli['reason']}" + (f"; {'; '.join(problems)}" if problems else ""))
            return
        if cli["exit_code"] != 0 or cli.get("frames") != result["video"]["frames"]:
            problems.append(f"dronseg-edge infer: exit code {cli['exit_code']}, frames {cli.get('frames')} "
                            f"{cli.get('error', '')}".strip())
    if problems:
        report.finish("failed", "; ".join(problems))


if __name__ == "__main__":
    run_stage("pipeline", body)
