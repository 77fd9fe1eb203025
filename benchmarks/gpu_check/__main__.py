"""``make gpu-check``: prove every GPU path in at most 5 minutes, or run the same stages at tiny sizes on a CPU.

The plan (plan.py) is printed first: every stage with its estimated cost. Correctness runs before
speed; a stage starts only when it still fits in the budget, and an item only when its estimate
fits in its stage's; what does not fit is skipped with the reason. The exit code says whether
everything that ran passed.

    python -m benchmarks.gpu_check                  # GPU when nvidia-smi lists one, else CPU mode
    python -m benchmarks.gpu_check --cpu --out /tmp/gc
    python -m benchmarks.gpu_check --only latency,train --timeout-scale 2
    python -m benchmarks.gpu_check --stage-timeout tests=1 --estimate-scale 0.01   # a stage killed at its timeout

Stages (each its own subprocess, killed at its timeout; the run goes on after a failure): env,
tests, probes, latency, pipeline, train, ort-cuda (see plan.py for what each runs and for how
long). Before them, staged wheels (.carry/wheels, tools/stage_gpu_wheels.sh) are installed into
private folders on PYTHONPATH; the machine's packages are not touched. Results:
benchmarks/results/gpu-check-<gpu>-<date>/summary.{json,md}, stages/*.json, logs/*.log.
Exit code 0 when everything that ran passed (no stage, nor the wheel setup, failed or timed out; a
stage or item skipped for the budget is not a failure), else 1; the targets never change it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks.gpu_check import runner, summary, wheels
from benchmarks.gpu_check.plan import STAGES, Plan, cpu_plan, describe, gpu_plan
from dronseg_edge.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parents[2]
ORT_STAGES = ("tests", "ort-cuda")  # the only stages that see the staged onnxruntime-gpu


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_true", help="CPU mode (tiny sizes) even where a GPU is visible")
    mode.add_argument("--gpu", action="store_true", help="GPU mode even where nvidia-smi lists no GPU")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/gpu-check-<gpu>-<date>)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu-check-work",
                        help="cached checkpoints, data and private package folders (default runs/gpu-check-work)")
    parser.add_argument("--only", default="", help=f"comma-separated stages to run ({', '.join(STAGES)}); env always runs")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every stage timeout and the budget")
    parser.add_argument("--estimate-scale", type=float, default=1.0,
                        help="multiply every item's estimated cost (below 1 on a faster machine: items the plan would "
                             "skip are started; above 1 on a slower one); timeouts stay")
    parser.add_argument("--stage-timeout", action="append", default=[], metavar="STAGE=SECONDS",
                        help="set one stage's timeout (repeatable), after --timeout-scale")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".carry" / "wheels", help="staged small wheels")
    parser.add_argument("--ort-wheels", type=Path, help="an onnxruntime-gpu wheel or a folder holding one")
    parser.add_argument("--latency-compile", metavar="MODE", help="also time torch.compile(mode=MODE) (minutes: raise the timeouts)")
    parser.add_argument("--bundle", type=Path, help="also copy summary.json/.md and a .tar.gz of the results folder here")
    return parser.parse_args(argv)


def gpu_name() -> str | None:
    """The first GPU nvidia-smi lists (no CUDA context: the stages each make their own), or None."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return names[0] if names else None


def make_plan(args: argparse.Namespace, gpu: str | None) -> Plan:
    for name, value in (("--timeout-scale", args.timeout_scale), ("--estimate-scale", args.estimate_scale)):
        if not value > 0:  # 0 skipped every stage for the budget and exited 0, as if all had passed
            raise SystemExit(f"error: {name} {value:g}: give a factor above 0")
    plan = gpu_plan() if (args.gpu or (gpu and not args.cpu)) else cpu_plan()
    scaled = {stage: {item: v * args.estimate_scale for item, v in table.items()} for stage, table in plan.estimates.items()}
    plan = dataclasses.replace(plan, budget_s=plan.budget_s * args.timeout_scale, estimates=scaled,
                               startup_s=plan.startup_s * args.estimate_scale)
    timeouts = {k: v * args.timeout_scale for k, v in plan.timeouts.items()}
    for item in args.stage_timeout:
        stage, _, seconds = item.partition("=")
        if stage not in timeouts or not re.fullmatch(r"\d+(\.\d*)?", seconds) or not float(seconds) > 0:
            raise SystemExit(f"error: --stage-timeout {item}: use STAGE=SECONDS (above 0) with STAGE one of {', '.join(timeouts)}")
        timeouts[stage] = float(seconds)
    return dataclasses.replace(plan, timeouts=timeouts, compile_mode=args.latency_compile)


def results_folder(args: argparse.Namespace, plan: Plan, gpu: str | None) -> Path:
    if args.out:
        return args.out
    slug = re.sub(r"[^a-z0-9]+", "-", (gpu if plan.mode == "gpu" and gpu else "cpu").lower()).strip("-")
    folder = ROOT / "benchmarks" / "results" / f"gpu-check-{slug}-{dt.date.today().isoformat()}"
    if folder.exists():  # a second run the same day keeps the first
        folder = folder.with_name(folder.name + dt.datetime.now().strftime("-%H%M%S"))
    return folder


def stage_env(plan: Plan, site: str | None, ort_site: str | None, stage: str) -> dict:
    paths = [str(ROOT)] + ([ort_site] if ort_site and stage in ORT_STAGES else []) + ([site] if site else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if plan.cpu_threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(plan.cpu_threads)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only - set(STAGES):
        raise SystemExit(f"error: --only {','.join(sorted(only - set(STAGES)))}: stages are {', '.join(STAGES)}")
    gpu = gpu_name()
    plan = make_plan(args, gpu)
    results = results_folder(args, plan, gpu).resolve()  # absolute: the stages run in ROOT
    (results / "stages").mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()
    plan_path = write_json_atomic(results / "stages" / "plan.json", plan.to_dict())
    run_info = {"date": dt.datetime.now().astimezone().replace(microsecond=0).isoformat(), "mode": plan.mode,
                "device": (gpu or "GPU not listed by nvidia-smi") if plan.mode == "gpu" else "cpu", "results": str(results),
                "command": "python -m benchmarks.gpu_check " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv)),
                "python": sys.executable, "total_seconds": 0.0}
    print(f"gpu-check: {plan.mode} mode ({run_info['device']}), results in {results}", flush=True)
    print("\n".join(describe(plan, only)), flush=True)

    setup = wheels.prepare(ROOT, work, args.wheels, args.ort_wheels, plan.timeouts["wheels"])
    setup["timeout_s"] = plan.timeouts["wheels"]
    write_json_atomic(work / "ort-gpu.json", setup["ort_gpu"])  # read by the ort-cuda stage
    print(f"wheels: {setup['status']} {setup['reason']}", flush=True)

    outcomes: list[dict] = []
    for stage in STAGES:
        timeout, why = runner.grant(plan.first_item(stage), plan.timeouts[stage], plan.budget_s - (time.monotonic() - start))
        if only and stage not in only and stage != "env":
            timeout, why = None, "not selected (--only)"
        if timeout is None:
            outcomes.append({"name": stage, "status": "skipped", "reason": why, "seconds": 0.0,
                             "timeout_s": plan.timeouts[stage], "estimate_s": plan.stage_estimate(stage),
                             "figures": {}, "notes": []})
            print(f"[{time.monotonic() - start:5.0f} s] {stage}: {why}", flush=True)
            continue
        print(f"[{time.monotonic() - start:5.0f} s] {stage} (estimate {plan.stage_estimate(stage):.0f} s, "
              f"timeout {timeout:.0f} s) ...", flush=True)
        outcome = runner.run(stage, root=ROOT, results=results, work=work, plan_path=plan_path,
                             timeout=timeout, env=stage_env(plan, setup["site"], setup["ort_site"], stage))
        outcome["estimate_s"] = plan.stage_estimate(stage)
        outcomes.append(outcome)
        print(f"[{time.monotonic() - start:5.0f} s] {stage}: {outcome['status']} in {outcome['seconds']:.1f} s"
              + (f" ({outcome['reason']})" if outcome["reason"] else ""), flush=True)
        run_info["total_seconds"] = round(time.monotonic() - start, 2)
        summary.write(results, summary.build(run_info, setup, outcomes, plan.to_dict(), complete=False))

    run_info["total_seconds"] = round(time.monotonic() - start, 2)
    doc = summary.build(run_info, setup, outcomes, plan.to_dict(), complete=True)
    json_path, md_path = summary.write(results, doc)
    print(md_path.read_text())
    if args.bundle:
        bundle(results, args.bundle)
    print(f"wrote {json_path} and {md_path}")
    ok = setup["status"] != "failed" and all(o["status"] in ("passed", "skipped") for o in outcomes)
    return 0 if ok else 1


def bundle(results: Path, folder: Path) -> None:
    """summary.json/.md plus everything as one .tar.gz: few files, for a copy-back limit of 8 files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "summary.md"):
        shutil.copy2(results / name, folder / name)
    with tarfile.open(folder / f"{results.name}.tar.gz", "w:gz") as tar:
        tar.add(results, arcname=results.name)


if __name__ == "__main__":
    sys.exit(main())
