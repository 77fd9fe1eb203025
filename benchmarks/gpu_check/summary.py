"""The run's summary: summary.json (every figure, each stage's status and seconds, targets, versions)
and summary.md (the same for people), rewritten after every stage so a run cut short keeps its record.

This module, like the orchestrator, imports no torch (the stages do): its tables are plain Markdown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.gpu_check.plan import TARGET_ARCHS, TARGETS
from dronseg_edge.atomic import write_json_atomic, write_text_atomic

SCHEMA = "dronseg-edge-gpu-check/1"
WHAT = {  # what a passing stage proves, for the Markdown table
    "env": "GPU, driver, clocks, memory, bf16, versions; a real ONNX Runtime CUDA session; TensorRT import",
    "tests": "every test marked gpu (pytest -m gpu; cuda_runtime's and CUDA graphs' first): counts and each skip's reason",
    "latency": "PyTorch variants of ResNet-101 and MobileNetV3 side by side; fp16/bf16 agreement with strict fp32",
    "train": "training throughput (bf16, channels_last); fp16 GradScaler + accumulate 2 + clipping moves the weights",
    "pipeline": "video through the inference pipeline and `dronseg-edge infer`: end-to-end vs model-only fps",
    "probes": "CUDA graphs across threads, predict == stream, inference mode mixed",
    "ort-cuda": "ONNX Runtime CUDA provider: fp32/fp16 exports, IO binding, CUDA graph, parity",
}


def figures(stages: list[dict], name: str) -> dict:
    for stage in stages:
        if stage["name"] == name:
            return stage.get("figures") or {}
    return {}


def _best(stages: list[dict], arch: str) -> tuple[float | None, str]:
    """Fastest median over the latency rows and the ONNX Runtime rows of ``arch`` that passed."""
    rows = [dict(r, source="latency") for r in figures(stages, "latency").get("rows", [])]
    rows += [dict(r, source="ort-cuda", variant=f"onnxruntime {r.get('precision')}"
                  + (" + CUDA graph" if r.get("cuda_graph") else "")) for r in figures(stages, "ort-cuda").get("rows", [])]
    ok = [r for r in rows if r.get("arch") == arch and r.get("status") == "passed" and r.get("median_ms") is not None]
    if not ok:
        return None, "not measured"
    best = min(ok, key=lambda r: r["median_ms"])
    return best["median_ms"], f"{best['source']}: {best['variant']}"


def targets(stages: list[dict], plan: dict) -> list[dict]:
    """The issue's targets against this run's figures; ``met`` is None where the run cannot judge (CPU mode, not measured)."""
    gpu = plan["mode"] == "gpu"
    full = (1280, 720)
    out = []
    for key, arch in TARGET_ARCHS.items():
        measured, source = _best(stages, arch)
        out.append(_target(key, f"{arch} {_size(plan['latency_size'])} batch 1, best backend, median ms", "<=", measured,
                           source, gpu and tuple(plan["latency_size"]) == full and arch in plan["latency_archs"]))
    pipe = figures(stages, "pipeline").get("measurement") or {}
    out.append(_target("end_to_end_ratio", f"end-to-end video fps / model-only fps ({plan['pipeline_arch']} "
                       f"{_size(plan['pipeline_size'])})", ">=", pipe.get("ratio"), "pipeline",
                       gpu and (plan["pipeline_arch"], tuple(plan["pipeline_size"])) == ("deeplabv3_resnet101", full)))
    train = figures(stages, "train").get("throughput") or {}
    out.append(_target("train_images_per_s", f"training images/s ({plan['train_arch']} {_size(plan['train_size'])} "
                       f"amp {plan['train_amp']}, batch {plan['train_batch']})", ">=", train.get("images_per_s"), "train",
                       gpu and (plan["train_arch"], tuple(plan["train_size"])) == ("deeplabv3_resnet101", full)))
    return out


def _size(size) -> str:
    return f"{size[0]}x{size[1]}"


def _target(key: str, what: str, op: str, measured: float | None, source: str, applicable: bool) -> dict:
    goal = TARGETS[key]
    met = None
    if measured is not None and applicable:
        met = measured <= goal if op == "<=" else measured >= goal
    note = "" if applicable else "not applicable: CPU mode at tiny sizes (the targets are for the GPU at 1280x720)"
    if measured is None:
        note = "not measured" + (f"; {note}" if note else "")
    return {"name": key, "what": what, "target": f"{op} {goal:g}", "measured": measured, "met": met,
            "source": source, "note": note}


def not_done(stages: list[dict]) -> list[str]:
    """What the run did not prove, said plainly (filled from the stages' own reasons)."""
    items = []
    compile_info = figures(stages, "latency").get("compile")
    if compile_info:
        items.append(compile_info["reason"])
    env = figures(stages, "env")
    trt = env.get("tensorrt") or {}
    if trt and not trt.get("importable"):
        items.append(f"TensorRT: not importable ({trt.get('reason', '')}); engine build and runner not exercised")
    for stage in stages:
        if stage["status"] in ("skipped", "timeout") and stage["name"] != "env":
            items.append(f"{stage['name']}: {stage['status']} ({stage['reason']})")
        for item in (stage.get("figures") or {}).get("items", []):
            if item["status"] == "not run":
                items.append(f"{stage['name']}: {item['item']}: {item['reason']}")
    return items


def build(run: dict, setup: dict, stages: list[dict], plan: dict, complete: bool) -> dict:
    env = figures(stages, "env")
    system = env.get("system") or {}
    return {"schema": SCHEMA, **run, "complete": complete, "gpu": env.get("gpu"), "versions": system.get("versions"),
            "setup": setup, "stages": stages, "targets": targets(stages, plan), "not_done": not_done(stages),
            "plan": plan}


def write(folder: Path, doc: dict) -> tuple[Path, Path]:
    return (write_json_atomic(folder / "summary.json", doc),
            write_text_atomic(folder / "summary.md", markdown(doc)))


# -- Markdown -----------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _note(row: dict) -> str:
    text = row.get("provider") or row.get("reason") or ""
    return text + (f"; warning: {row['warning']}" if row.get("warning") else "")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(doc: dict) -> str:
    gpu = doc.get("gpu") or {}
    lines = [f"# gpu-check: {doc['device']} ({doc['mode']} mode)", "",
             f"- date {doc['date']}, total {doc['total_seconds']:.0f} s" + ("" if doc["complete"] else " (incomplete run)"),
             f"- command: `{doc['command']}`"]
    if doc["mode"] == "cpu":
        lines.append(f"- CPU mode: tiny models and sizes, {doc['plan'].get('cpu_threads') or 'default'} torch thread(s) per "
                     "stage: this proves the orchestration and the code paths, it measures nothing the targets speak of")
    if gpu:
        lines.append(f"- GPU: {gpu.get('name')} (sm {gpu.get('compute_capability')}, {gpu.get('memory_gib')} GiB, "
                     f"driver {gpu.get('driver')}, bf16 {gpu.get('bf16_supported')})")
    versions = doc.get("versions") or {}
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {versions.get(k)}" for k in
                                                ("python", "torch", "cuda", "cudnn", "torchvision", "onnx", "onnxruntime",
                                                 "tensorrt", "dronseg_edge")))
    setup = doc.get("setup") or {}
    lines += ["", "## Stages", ""]
    rows = [["wheels (setup)", setup.get("status"), setup.get("seconds"), setup.get("timeout_s"), setup.get("timeout_s"),
             setup.get("reason"), "staged wheels installed into private folders"]]
    rows += [[s["name"], s["status"], s["seconds"], s.get("estimate_s"), s["timeout_s"], s["reason"], WHAT.get(s["name"], "")]
             for s in doc["stages"]]
    lines += _table(["stage", "status", "seconds", "estimate s", "timeout s", "reason", "proves"], rows)
    items = [[s["name"], i["item"], i["status"], i.get("seconds"), i.get("estimate_s"), i.get("reason", "")]
             for s in doc["stages"] for i in (s.get("figures") or {}).get("items", [])]
    if items:
        lines += ["## Items: seconds against the plan's estimates", ""]
        lines += _table(["stage", "item", "status", "seconds", "estimate s", "reason"], items)
    lines += ["## Targets (benchmark targets, not pass/fail of the run)", ""]
    lines += _table(["target", "goal", "measured", "met", "from", "note"],
                    [[t["what"], t["target"], t["measured"], t["met"], t["source"], t["note"]] for t in doc["targets"]])
    lines += _details(doc["stages"])
    if doc["not_done"]:
        lines += ["## Not done / not proven", ""] + [f"- {item}" for item in doc["not_done"]] + [""]
    return "\n".join(lines)


def _details(stages: list[dict]) -> list[str]:
    lines: list[str] = []
    lat = figures(stages, "latency").get("rows")
    if lat:
        lines += ["## Latency (batch 1, median / p99 ms; agreement with strict fp32)", ""]
        lines += _table(["arch", "variant", "status", "median ms", "p99 ms", "agreement %", "max abs logit diff",
                         "ref abs max", "provider / reason"],
                        [[r["arch"], r["variant"], r["status"], r.get("median_ms"), r.get("p99_ms"), r.get("agreement_pct"),
                          r.get("max_abs_logit_diff"), r.get("reference_abs_max"), _note(r)] for r in lat])
    train = figures(stages, "train")
    if train.get("throughput"):
        t = train["throughput"]
        c = t["settings"]
        lines += ["## Training", "",
                  f"- throughput: {_cell(t['images_per_s'])} images/s, data wait {_cell(100 * t['data_wait_frac'])} %, "
                  f"peak GPU memory {_cell(t['peak_memory_gib'])} GiB ({c['arch']} {c['size']} batch {c['batch']}, "
                  f"amp {c['amp']}, channels_last {_cell(c['channels_last'])}, {c['timed_steps']} timed steps after "
                  f"{c['warmup_steps']}, {c['workers']} loader workers)"]
        check = train.get("fp16_check") or {}
        lines += [f"- fp16 check: {check.get('status')}: loss {_cell(check.get('final_loss'))}, weights changed "
                  f"{_cell(check.get('weights_changed'))}, grad scale {_cell(check.get('grad_scale'))} "
                  f"{check.get('note') or check.get('reason') or ''}", ""]
    pipe = figures(stages, "pipeline")
    if pipe.get("measurement"):
        m = pipe["measurement"]
        lines += ["## Pipeline", "",
                  f"- end-to-end {_cell(m['end_to_end']['fps'])} fps vs model-only {_cell(m['model_only']['fps'])} fps "
                  f"(ratio {_cell(m['ratio'])}); per-stage ms {m['end_to_end'].get('stage_ms')}; "
                  f"{m['video'].get('frames')} frames {m['video'].get('size')} {m['video'].get('codec')}"]
        cli = pipe.get("cli") or {}
        lines += [f"- `dronseg-edge infer`: exit code {cli.get('exit_code')}, {cli.get('frames')} frames, "
                  f"{_cell(cli.get('fps'))} fps (cold start, {cli.get('seconds')} s) {cli.get('reason') or ''}", ""]
    probes = figures(stages, "probes").get("probes")
    if probes:
        lines += ["## Probes", ""] + _table(["probe", "status", "detail"], [
            [name, p["status"], p.get("reason") or p.get("detail") or ""] for name, p in probes.items()])
    tests = figures(stages, "tests").get("results")
    if tests:
        lines += ["## GPU tests", "",
                  f"- {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, {tests['skipped']} skipped"
                  + (" (partial: pytest was stopped)" if tests.get("partial") else "")]
        lines += [f"- {r['run']}: {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"
                  for r in figures(stages, "tests").get("runs", [])]
        lines += [f"- skipped ({s['tests']}): {s['reason']}" for s in tests["skip_reasons"]]
        lines += [f"- {f['kind']}: {f['test']}: {f['message']}" for f in tests["failures"]] + [""]
    ort = figures(stages, "ort-cuda").get("rows")
    if ort:
        lines += ["## ONNX Runtime", ""] + _table(
            ["precision", "graph", "status", "median ms", "p99 ms", "agreement %", "max abs logit diff", "provider / reason"],
            [[r["precision"], r.get("cuda_graph"), r["status"], r.get("median_ms"), r.get("p99_ms"), r.get("agreement_pct"),
              r.get("max_abs_logit_diff"), _note(r)] for r in ort])
    return lines
