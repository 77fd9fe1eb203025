"""Stage train: training throughput (benchmarks/train_throughput.py's code path: the package's
train_one_epoch on real JPEG/PNG files through the real DataLoader), then the fp16 path:
GradScaler, ``--accumulate 2`` and gradient clipping for a few steps, checked for a finite loss and
weights that moved.

The throughput run needs no train/validation split, so it works without iterative-stratification.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks import train_throughput
from benchmarks.gpu_check import fixtures
from benchmarks.gpu_check.plan import size_text
from benchmarks.gpu_check.report import StageContext, run_stage

KEYS = ("images_per_s", "images", "seconds", "data_wait_frac", "peak_memory_gib", "final_loss", "loss_finite",
        "optimizer_steps", "max_abs_weight_change", "weights_changed", "grad_scale", "device")


def run(plan, data: Path, *, batch: int, amp: str, warmup: int, steps: int, accumulate: int = 1,
        grad_clip: float = 0.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-check-train-") as out:
        args = train_throughput.parse_args([
            "--model", plan.train_arch, "--size", size_text(plan.train_size), "--batch", str(batch), "--amp", amp,
            "--warmup", str(warmup), "--steps", str(steps), "--accumulate", str(accumulate), "--grad-clip", str(grad_clip),
            "--workers", str(plan.train_workers), "--data", str(data), "--device", plan.device, "--out", out])
        result = train_throughput.run(args)
    settings = {"arch": plan.train_arch, "size": size_text(plan.train_size), "batch": batch, "amp": amp,
                "channels_last": plan.cuda, "warmup_steps": warmup, "timed_steps": steps, "accumulate": accumulate,
                "grad_clip": grad_clip, "workers": plan.train_workers, "optimizer": args.optimizer, "loss": args.loss}
    return {"settings": settings, **{k: result.get(k) for k in KEYS}}


def body(ctx: StageContext) -> None:
    plan, report = ctx.plan, ctx.report
    fixtures.device_for(plan)
    with ctx.timed("throughput"):
        data = fixtures.scenes(ctx.work, plan.train_size, plan.train_images)
        throughput = report.figure("throughput", run(plan, data, batch=plan.train_batch, amp=plan.train_amp,
                                                     warmup=plan.train_warmup, steps=plan.train_steps))
    print(f"throughput: {throughput['images_per_s']:.1f} img/s, data wait {100 * throughput['data_wait_frac']:.1f}%, "
          f"peak memory {throughput['peak_memory_gib']} GiB", flush=True)
    problems = []
    if not throughput["loss_finite"]:
        problems.append(f"throughput run: loss {throughput['final_loss']}")
    if not ctx.fits("fp16 check"):
        report.figure("fp16_check", {"status": "not run", "reason": ctx.out_of_time("fp16 check")})
    else:
        with ctx.timed("fp16 check"):
            check = run(plan, data, batch=plan.check_batch, amp=plan.check_amp, warmup=0, steps=plan.check_steps,
                        accumulate=2, grad_clip=1.0)
        if not plan.cuda:
            check["note"] = "no CUDA: fp16 autocast and GradScaler need a GPU, so this ran in fp32 (accumulate and clipping only)"
        ok = bool(check["loss_finite"] and check["weights_changed"])
        check["status"] = "passed" if ok else "failed"
        report.figure("fp16_check", check)
        if not ok:
            problems.append(f"{check['settings']['amp']} check: loss {check['final_loss']}, "
                            f"weights changed {check['weights_changed']}, scale {check['grad_scale']}")
    if problems:
        report.finish("failed", "; ".join(problems))


if __name__ == "__main__":
    run_stage("train", body)
