"""Stage latency: ResNet-101 and MobileNetV3 DeepLabV3, batch 1, every PyTorch variant side by side in one process.

Timing is the package's harness (dronseg_edge.bench: CUDA events, warm-up, percentiles) on the
package's TorchBackend; agreement with strict fp32 is the package's parity check
(dronseg_edge.export.check_parity) on synthetic scenes, against a strict-fp32 backend kept open per
architecture (``judge`` says what fails a row). Rows run in priority order (the target rows first
for both models), so a stage short of time loses the least useful rows, listed as not run.
"""

from __future__ import annotations

import torch

from benchmarks.gpu_check import fixtures
from benchmarks.gpu_check.latency_rows import STRICT, Row, item_name, schedule
from benchmarks.gpu_check.plan import size_text
from benchmarks.gpu_check.report import StageContext, run_stage
from dronseg_edge.bench.run import make_input, prepare_bench
from dronseg_edge.bench.timing import TimingSettings, measure
from dronseg_edge.devices import tf32_mode

# What an ResNet-101 torch.compile costs, so the summary can say why it was not attempted (docs/facts.md#h100-baseline).
COMPILE_NOTE = ("torch.compile not attempted: compiling ResNet-101 (max-autotune-no-cudagraphs) took 421 s on the H100 "
                "(docs/facts.md#h100-baseline), far beyond this stage's budget; rerun with --latency-compile MODE and a larger "
                "--timeout-scale to try it. AOTInductor packages are not offered by the package.")
# Argmax agreement (%) under which a reduced-precision row counts as broken: an overflow or a wrong
# kernel costs far more than 10 %, a random model's near-tied logits a few percent at most.
GROSS_PCT = 90.0


def measure_row(ctx: StageContext, arch: str, row: Row, refs: dict, data, device: torch.device) -> dict:
    plan = ctx.plan
    ckpt = fixtures.checkpoint(ctx.work, arch, plan.latency_size, device)
    entry = {"arch": arch, "variant": row.label, "precision": row.precision, "tf32": row.tf32,
             "size": size_text(plan.latency_size), "batch": 1}
    if arch not in refs:
        refs[arch] = prepare_bench(ckpt, device, size=plan.latency_size, batch=1, precision="fp32", cuda_graph=False).backend
    ref = refs[arch]
    if row.reference:
        backend = ref
    else:
        options = {"compile_mode": row.compile_mode} if row.compile_mode else None
        backend = prepare_bench(ckpt, device, size=plan.latency_size, batch=1, precision=row.precision,
                                cuda_graph=row.cuda_graph, backend_options=options).backend
    timing = TimingSettings(warmup_iters=plan.latency_warmup_iters, iters=plan.latency_iters)
    try:
        with tf32_mode(row.tf32):
            m = measure(backend, make_input(backend.info, plan.latency_size, 1), timing)
        s = m.latency
        entry.update({"status": "passed", "provider": backend.provider, "cuda_graph": getattr(backend, "cuda_graph", None),
                      "median_ms": s.median_ms, "p99_ms": s.p99_ms, "mean_ms": s.mean_ms, "min_ms": s.min_ms,
                      "cv": s.cv, "iters": s.count, "timer": m.timer, "warmup_s": m.warmup_s})
        if not row.reference:
            judge(entry, parity(ref, backend, data, device, plan.parity_images))
    finally:
        if backend is not ref:
            backend.deactivate()
        fixtures.release(device)
    return entry


def parity(ref, cand, data, device: torch.device, images: int) -> dict:
    """Argmax agreement and logit error of ``cand`` against the strict-fp32 ``ref`` (the package's parity check)."""
    from dronseg_edge.export import check_parity

    report = check_parity(ref, cand, data, device=device, max_images=images)
    out = report.outputs[0]
    return {"agreement_pct": 100.0 * report.agreement, "max_abs_logit_diff": out.abs_max,
            "reference_abs_max": out.reference_abs_max, "candidate_nonfinite": out.nonfinite_candidate,
            "parity_passed": bool(report.passed), "parity_min_agreement_pct": 100.0 * report.thresholds.min_agreement,
            "parity_failures": list(report.failures), "parity_images": report.images, "parity_data": report.data_source}


def judge(entry: dict, figures: dict) -> dict:
    """Add the parity figures to a measured row; fail it on NaN/Inf or gross disagreement.

    Below the export threshold (99.5 % for fp16, 99 % for bf16) but above GROSS_PCT is a warning:
    random weights leave many pixels with near-tied logits, which reduced precision flips; a
    trained model is the real test (the export parity reports).
    """
    entry.update(figures)
    if figures["candidate_nonfinite"] or not figures["agreement_pct"] >= GROSS_PCT:
        entry.update(status="failed", reason="; ".join(figures["parity_failures"]) or "NaN/Inf in the output")
    elif not figures["parity_passed"]:
        entry["warning"] = ("; ".join(figures["parity_failures"]) + " (random weights: near-tied logits flip easily; "
                            "the export parity on a trained model is the real test)")
    return entry


def body(ctx: StageContext) -> None:
    plan, report = ctx.plan, ctx.report
    device = fixtures.device_for(plan)
    report.figure("settings", {"archs": list(plan.latency_archs), "size": size_text(plan.latency_size), "batch": 1,
                               "warmup_iters": plan.latency_warmup_iters, "iters": plan.latency_iters,
                               "weights": "random, BatchNorm calibrated", "parity_reference": STRICT.label,
                               "timer": "CUDA events (compute only)" if device.type == "cuda" else "perf_counter"})
    data = None
    if device.type == "cuda":
        with ctx.timed("scenes"):
            data = fixtures.scenes(ctx.work, plan.latency_size, plan.parity_images)
    rows, refs = [], {}
    for arch, row in schedule(plan.latency_archs, plan.compile_mode):
        item = item_name(arch, row)
        print(f"== {item}", flush=True)
        if row.needs_cuda() and device.type != "cuda":
            rows.append({"arch": arch, "variant": row.label, "status": "skipped", "reason": "no CUDA"})
        elif not ctx.fits(item):
            rows.append({"arch": arch, "variant": row.label, "status": "not run", "reason": ctx.out_of_time(item)})
        else:
            try:
                with ctx.timed(item):
                    rows.append(measure_row(ctx, arch, row, refs, data, device))
            except Exception as exc:  # one broken variant must not hide the others' numbers
                message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                rows.append({"arch": arch, "variant": row.label, "status": "failed", "reason": message})
        print(f"   {rows[-1]['status']} {rows[-1].get('median_ms', '')} {rows[-1].get('reason', '')}", flush=True)
        report.figure("rows", rows)
    for backend in refs.values():
        backend.deactivate()
    report.figure("best", best_rows(rows))
    if not plan.compile_mode:
        report.figure("compile", {"status": "not run", "reason": COMPILE_NOTE})
    failed = [f"{r['arch']} {r['variant']}: {r.get('reason', '')}" for r in rows if r["status"] == "failed"]
    if failed:
        report.finish("failed", "; ".join(failed)[:500])
    elif not any(r["status"] == "passed" for r in rows):
        report.finish("failed", "no variant measured")


def best_rows(rows: list[dict]) -> dict:
    """Per architecture, the fastest measured row whose parity did not fail."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["status"] != "passed":
            continue
        if r["arch"] not in best or r["median_ms"] < best[r["arch"]]["median_ms"]:
            best[r["arch"]] = {"variant": r["variant"], "median_ms": r["median_ms"], "p99_ms": r["p99_ms"]}
    return best


if __name__ == "__main__":
    run_stage("latency", body)
