"""Stage ort-cuda (optional): ONNX Runtime's CUDA provider through the package's OnnxRuntimeBackend.

Runs only where onnxruntime-gpu is at hand: the machine's own onnxruntime is a CUDA build, or a wheel
was staged (``--ort-wheels``, or parts, wheels.py), which the setup step installs into a private
folder that the orchestrator puts first on this stage's PYTHONPATH, so the machine's CPU
onnxruntime stays as it is. A 15-minute lease of the GPU machine does not stage it (benchmarks/README.md). Then: fp32 and fp16 ONNX exports of a calibrated model, each timed
with IO binding, without and with ONNX Runtime's CUDA graph, and compared with the PyTorch strict
fp32 model by the package's parity check. Then the Segmenter on one of those files both ways,
pre/post with torch on the GPU against the torch-free host path (numpy through OrtValues): ms per
frame side by side and how far their masks agree, to decide which path a GPU with torch should
take. Without staged wheels the stage is skipped at once (torch is imported only after that check).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks.gpu_check.report import StageContext, run_stage

NOT_STAGED = "no onnxruntime-gpu wheels staged"


def ort_state(ctx: StageContext) -> dict:
    path = ctx.work / "ort-gpu.json"  # written by the orchestrator after the setup step
    return json.loads(path.read_text()) if path.is_file() else {"site": None, "how": NOT_STAGED}


def onnxruntime_facts() -> dict:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21: load CUDA/cuDNN from the nvidia-* wheels torch uses
        try:
            ort.preload_dlls()
        except Exception as exc:  # not fatal: torch has loaded most of them already
            print(f"preload_dlls: {exc}", flush=True)
    return {"version": ort.__version__, "module": os.path.dirname(ort.__file__),
            "providers": ort.get_available_providers()}


def measure(ctx: StageContext) -> list[dict]:
    """Export fp32/fp16, then time and check each with and without the CUDA graph (one row each)."""
    from benchmarks.gpu_check import fixtures
    from dronseg_edge.bench.run import prepare_bench
    from dronseg_edge.bench.timing import TimingSettings

    plan, report = ctx.plan, ctx.report
    device = fixtures.device_for(plan)
    ckpt = fixtures.checkpoint(ctx.work, plan.ort_arch, plan.ort_size, device)
    data = fixtures.scenes(ctx.work, plan.ort_size, plan.parity_images)
    ref = prepare_bench(ckpt, device, size=plan.ort_size, batch=1, precision="fp32", cuda_graph=False).backend
    provider = "cuda" if device.type == "cuda" else "cpu"
    graphs = (True, False) if device.type == "cuda" else (None,)
    timing = TimingSettings(warmup_iters=plan.latency_warmup_iters, iters=plan.ort_iters)
    # The CUDA-graph rows first (the fast path users get), the plain IO-binding rows if time is left.
    order = [(p, g) for g in graphs for p in ("fp32", "fp16")]
    exports: dict[str, tuple] = {}
    rows = []
    try:
        for precision, graph in order:
            row = {"arch": plan.ort_arch, "precision": precision, "cuda_graph_requested": graph}
            item = f"{precision} graph={graph}"
            if not ctx.fits(item):
                rows.append({**row, "status": "not run", "reason": ctx.out_of_time(item)})
                continue
            with ctx.timed(item):
                try:
                    path, row["export_s"] = _export(ctx, ckpt, precision, exports, device)
                    row["path"] = str(path)
                    _time_and_check(row, path, graph, provider, timing, ref, data, ctx)
                except Exception as exc:  # one broken row must not hide the others
                    row.update(status="failed", reason=(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
                fixtures.release(device)
            rows.append(row)
            report.figure("rows", rows)
    finally:
        ref.deactivate()
    report.figure("rows", rows)
    return rows


def _export(ctx: StageContext, ckpt: Path, precision: str, exports: dict, device) -> tuple[Path, float]:
    """The ONNX file of ``precision`` (exported once per stage) and the seconds its export took."""
    from dronseg_edge.export import export_artifact

    if precision not in exports:
        start = time.monotonic()
        exported = export_artifact(ckpt, fmt="onnx", precision=precision, size=ctx.plan.ort_size, batch=1,
                                   parity=False, out_dir=ctx.work / "onnx", device=str(device))
        exports[precision] = (Path(exported.path), round(time.monotonic() - start, 2))
    return exports[precision]


def _time_and_check(row: dict, path: Path, graph, provider: str, timing, ref, data, ctx: StageContext) -> None:
    """Time ``path`` with IO binding on ``provider`` and judge its parity against ``ref``; fills ``row``."""
    from benchmarks.gpu_check.stage_latency import judge, parity
    from dronseg_edge.bench.run import make_input, prepare_bench
    from dronseg_edge.bench.timing import measure as time_backend

    device = ref.device
    bench = prepare_bench(path, device, batch=1, cuda_graph=graph, backend_options={"provider": provider})
    backend = bench.backend
    try:
        m = time_backend(backend, make_input(backend.info, bench.size, 1), timing)
        row.update({"status": "passed", "provider": backend.provider, "cuda_graph": backend.cuda_graph,
                    "median_ms": m.latency.median_ms, "p99_ms": m.latency.p99_ms, "cv": m.latency.cv,
                    "iters": m.latency.count, "timer": m.timer, "include_transfers": m.include_transfers})
        judge(row, parity(ref, backend, data, device, ctx.plan.parity_images))
    finally:
        backend.deactivate()
    on_cuda = str(row.get("provider")).startswith("CUDAExecutionProvider")
    if row["status"] == "passed" and device.type == "cuda" and not on_cuda:
        row.update(status="failed", reason=f"ran on {row['provider']}, not the CUDA provider")


def machine_has_ort_cuda() -> bool:
    """Whether the machine's own onnxruntime is a CUDA build (then nothing needs staging)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def body(ctx: StageContext) -> None:
    state = ort_state(ctx)
    ctx.report.figure("staged", state)
    if not state.get("site") and not machine_has_ort_cuda():
        why = state.get("error") or state.get("how") or NOT_STAGED
        ctx.report.finish("skipped", f"{why}, and this machine's onnxruntime has no CUDA provider (benchmarks/README.md, "
                                     "gpu-check: why a 15-minute lease does not stage onnxruntime-gpu)")
        return
    import torch  # noqa: F401  (first: its CUDA libraries are then loaded when onnxruntime looks for them)

    facts = ctx.report.figure("onnxruntime", onnxruntime_facts())
    if state.get("site") and not facts["module"].startswith(state["site"]):
        ctx.report.finish("failed", f"onnxruntime came from {facts['module']}, not the staged {state['site']}")
        return
    rows = measure(ctx)
    failed = [f"{r['precision']} graph={r.get('cuda_graph_requested')}: {r.get('reason', '')}" for r in rows
              if r["status"] == "failed"]
    if failed:
        ctx.report.finish("failed", "; ".join(failed)[:500])


if __name__ == "__main__":
    run_stage("ort-cuda", body)
