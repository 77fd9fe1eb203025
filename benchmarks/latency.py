"""Model latency: the four architectures (the ResNets at output stride 8 and 16) x backends x precisions,
batch 1 and 4, at 1280x720.

Every (architecture, batch) runs the same variants side by side in one process, baselines first
(PyTorch strict fp32 without TF32, PyTorch default fp32 eager, then fp16, CUDA graph, ONNX Runtime,
TensorRT), through the package's own harness (dronseg_edge.bench: CUDA events for checkpoints on a GPU, warm-up,
percentiles). Variants this machine cannot run are listed with the reason. Each output stride is a
model of its own (its own checkpoint, exports and rows, labelled ``ARCH OS8`` / ``ARCH OS16``); the
MobileNetV3 models exist at output stride 16 only.

    python benchmarks/latency.py                                    # GPU: all four archs, 1280x720, batch 1 and 4
    python benchmarks/latency.py --quick --size 320x180 --device cpu  # smoke run on a CPU
    python benchmarks/latency.py --checkpoint runs/train/exp/weights/best.pt --batches 1

Models get random weights with calibrated BatchNorm statistics (random statistics make logits
explode and fp16 overflow: docs/facts.md#h100-baseline), unless --checkpoint gives trained ones. Parity
uses --data, or a small synthetic data set made in the work folder. The physical floor is the
model's FLOPs per frame (counted by torch's FlopCounterMode on the meta device) over the GPU's dense
FP16 tensor peak; ratio = measured ms per frame / floor.

Writes benchmarks/results/latency-<device>-<date>[-TAG].json (and .md with --markdown).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not one installed
from dronseg_edge.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from dronseg_edge.bench.matrix import MatrixRow, Variant, run_matrix  # noqa: E402
from dronseg_edge.bench.report import fmt_fps, fmt_ms, now_iso, render_table  # noqa: E402
from dronseg_edge.bench.system import describe_system, load_average, system_info  # noqa: E402
from dronseg_edge.bench.timing import TimingSettings  # noqa: E402
from dronseg_edge.checkpoint import load_checkpoint, model_state, save_checkpoint  # noqa: E402
from dronseg_edge.devices import device_description, resolve_device  # noqa: E402
from dronseg_edge.errors import DronsegError  # noqa: E402
from dronseg_edge.metadata import default_output_stride  # noqa: E402
from dronseg_edge.models import ARCHS, build_model, output_strides  # noqa: E402
from dronseg_edge.sizes import format_size, parse_size  # noqa: E402

VARIANTS = (
    Variant("pytorch", "fp32", tf32=False),  # baseline: strict fp32 eager
    Variant("pytorch", "fp32"),  # baseline: torch's default (TF32 convolutions) eager
    Variant("pytorch", "fp16"),  # fp16 + channels_last eager
    Variant("pytorch", "fp16", cuda_graph=True),
    Variant("onnx", "fp32"),  # baseline: ONNX Runtime (CUDA provider on a GPU)
    Variant("onnx", "fp32", cuda_graph=True),
    Variant("onnx", "fp16"),
    Variant("onnx", "fp16", cuda_graph=True),
    Variant("onnx", "int8"),
    Variant("engine", "fp16"),
    Variant("engine", "int8"),
)
# Dense FP16 tensor-core peak, TFLOP/s (NVIDIA data sheets; H100 SXM figure as in docs/facts.md#h100-baseline).
PEAK_FP16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated architectures")
    parser.add_argument("--output-strides", default="8,16",
                        help="output strides to measure, each as its own rows, where the arch has them (ResNets: 8 and "
                             "16; MobileNetV3: 16 only, measured at 16 whatever this says)")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="use this checkpoint (repeatable) instead of random-weight models")
    parser.add_argument("--size", default="1280x720", help="WxH")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="1 warm-up call, 3 iterations, no parity")
    parser.add_argument("--parity", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--variants", default="all",
                        help="comma-separated labels to keep, matched as substrings (e.g. 'pytorch,onnx fp32')")
    parser.add_argument("--exclude", default="", help="comma-separated label substrings to leave out (e.g. 'int8')")
    parser.add_argument("--data", type=Path, help="images (+ masks) for parity and int8 calibration")
    parser.add_argument("--work", type=Path, default=Path("runs/bench/latency-work"),
                        help="checkpoints and exports (runs/ is git-ignored)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--peak-tflops", type=float, help="dense FP16 peak of this device, for the floor column")
    parser.add_argument("--markdown", action="store_true", help="also write the table as .md beside the JSON")
    parser.add_argument("--tag", default="", help="appended to the file name, to keep several runs of one day")
    return parser.parse_args(argv)


def sane_checkpoint(arch: str, size: tuple[int, int], path: Path, device: torch.device, output_stride: int | None = None) -> Path:
    """Random weights with BatchNorm statistics calibrated by a few train-mode passes (cached by name)."""
    if path.is_file():
        return path
    torch.manual_seed(0)
    model = build_model(arch, weights="none", output_stride=output_stride).to(device).train()
    calib = (max(64, size[0] // 4), max(64, size[1] // 4))  # statistics, not resolution, matter here
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(2, 3, calib[1], calib[0], device=device))
    return save_checkpoint(path, model_state(model.eval().cpu(), arch, size))


def flops_per_frame(arch: str, size: tuple[int, int], output_stride: int | None = None) -> float:
    """Forward FLOPs (2 x MACs) of one frame, counted on the meta device (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(arch, weights="none", output_stride=output_stride).eval()
        x = torch.empty(1, 3, size[1], size[0])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FP16_TFLOPS.items():  # most specific names first
        if key in name:
            return value
    return None


def synthetic_data(work: Path, size: tuple[int, int]) -> Path | None:
    """A small synthetic data set for parity/calibration (None when the synthesiser is not available)."""
    try:
        from dronseg_edge.data.synthetic import synthesize
    except ImportError:
        return None
    root = work / f"synthetic_{format_size(size)}"
    if not (root / "imgs").is_dir():
        synthesize(root, images=24, size=size, video_frames=0, seed=0, test_fraction=0.2)
    return root


def model_label(arch: str, output_stride: int) -> str:
    """The arch column: stride-16 and stride-8 rows of one arch never share a label."""
    return f"{arch} OS{output_stride}"


def strides_for(arch: str, wanted: list[int]) -> list[int]:
    """The wanted output strides ``arch`` exists at, or its only one (MobileNetV3: 16)."""
    return [s for s in wanted if s in output_strides(arch)] or [default_output_stride(arch)]


def parse_strides(text: str) -> list[int]:
    try:
        strides = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        strides = []
    if not strides or any(s not in (8, 16) for s in strides):
        raise DronsegError(f"--output-strides {text!r}: give 8, 16 or 8,16")
    return sorted(set(strides))


def device_slug(device: torch.device) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", device_description(device).split(" (")[0]).strip("-").lower()


def row_cells(model: str, batch: int, row: MatrixRow, floor_ms: float | None) -> list[str]:
    r = row.result
    if r is None:
        return [model, str(batch), row.variant.label, "-", "-", "-", "-", "-", "-", fmt_ms(floor_ms), "-", "-",
                f"{row.status}: {row.reason}"]
    s = r.measurement.latency
    per_frame = s.median_ms / batch
    ratio = f"{per_frame / floor_ms:.1f}" if floor_ms else "n/a"
    parity = (f"{100 * row.agreement:.2f}% " + ("PASS" if row.parity_passed else "FAIL")) if row.agreement is not None else "-"
    return [model, str(batch), row.variant.label, r.provider, fmt_ms(s.median_ms), fmt_ms(s.p99_ms), f"{100 * s.cv:.1f}",
            fmt_ms(per_frame), fmt_fps(s.throughput_fps), fmt_ms(floor_ms), ratio, parity,
            row.status + (f": {row.reason}" if row.reason else "")]


HEADERS = ("model", "batch", "variant", "provider", "median ms", "p99 ms", "cv %", "ms/frame", "fps", "floor ms",
           "ratio", "parity", "status")


def main(argv=None) -> int:
    args = parse_args(argv)
    size = parse_size(args.size)
    device = resolve_device(args.device)
    batches = [b.strip() for b in args.batches.split(",") if b.strip()]
    if not batches or not all(b.isdigit() and int(b) > 0 for b in batches):
        raise DronsegError(f"--batches {args.batches}: give batch sizes of at least 1, comma-separated (e.g. 1,4)")
    batches = [int(b) for b in batches]
    timing = (TimingSettings(warmup_iters=1, iters=3) if args.quick
              else TimingSettings(warmup_s=args.warmup_s, iters=args.iters))
    parity = args.parity and not args.quick
    wanted = [v.strip() for v in args.variants.split(",") if v.strip() and args.variants != "all"]
    unwanted = [v.strip() for v in args.exclude.split(",") if v.strip()]
    variants = [v for v in VARIANTS if (not wanted or any(w in v.label for w in wanted))
                and not any(u in v.label for u in unwanted)]
    if not variants:
        raise DronsegError(f"--variants {args.variants!r} --exclude {args.exclude!r} leave no variant: the labels are "
                           + ", ".join(v.label for v in VARIANTS))
    if args.checkpoint:
        loaded = [(load_checkpoint(p), p) for p in args.checkpoint]
        models = [(c["arch"], int(c.get("output_stride") or default_output_stride(c["arch"])), p) for c, p in loaded]
    else:
        archs = [a.strip() for a in args.archs.split(",") if a.strip()]
        unknown = [a for a in archs if a not in ARCHS]
        if unknown or not archs:
            raise DronsegError(f"--archs {','.join(unknown) or repr(args.archs)}: choose from {', '.join(ARCHS)}")
        wanted = parse_strides(args.output_strides)
        models = [(a, s, sane_checkpoint(a, size, args.work / "checkpoints" / f"{a}_os{s}_{format_size(size)}.pt", device, s))
                  for a in archs for s in strides_for(a, wanted)]
    data = args.data or (synthetic_data(args.work, size) if parity or any(v.precision == "int8" for v in variants) else None)
    peak = peak_tflops(device, args.peak_tflops)
    system = system_info(device)
    for line in describe_system(system):
        print(line)

    settings = {"size": format_size(size), "batches": batches, "device": str(device), "parity": parity,
                "timing": timing.to_dict(), "peak_fp16_tflops": peak, "data": str(data) if data else None,
                "variants": [v.label for v in variants],
                "weights": "checkpoints" if args.checkpoint else "random, BatchNorm calibrated"}
    date = now_iso()
    tag = f"-{re.sub(r'[^A-Za-z0-9_.]+', '-', args.tag)}" if args.tag else ""
    path = args.out / f"latency-{device_slug(device)}-{date[:10]}{tag}.json"
    entries, table = [], []
    for arch, stride, ckpt in models:
        label = model_label(arch, stride)
        flops = flops_per_frame(arch, size, stride)
        floor_ms = flops / (peak * 1e12) * 1e3 if peak else None
        for batch in batches:
            load = load_average()  # the machine may be shared: noisy rows are explained by this
            print(f"== {label} batch {batch} at {format_size(size)} (load average {load})", file=sys.stderr)
            rows = run_matrix(ckpt, device, timing, size=size, batch=batch, data=data, parity=parity, variants=variants,
                              out_dir=args.work / "exports" / f"{arch}_os{stride}" / f"{format_size(size)}_b{batch}",
                              log=lambda text: print("   " + text, file=sys.stderr))
            for row in rows:
                table.append(row_cells(label, batch, row, floor_ms))
                entries.append({"arch": arch, "output_stride": stride, "model": label, "batch": batch, "checkpoint": str(ckpt),
                                "gflops_per_frame": flops / 1e9, "floor_ms": floor_ms, "load_average_before": load,
                                **row.to_dict()})
            # Written after every block, so a run that dies later (out of memory, Ctrl-C) keeps what it measured.
            write_results(path, date, system, settings, entries, table, complete=False, markdown=args.markdown)
    print(render_table(HEADERS, table))
    write_results(path, date, system, settings, entries, table, complete=True, markdown=args.markdown)
    print(f"wrote {path}" + (f" and {path.with_suffix('.md')}" if args.markdown else ""))
    return 0


def write_results(path: Path, date: str, system: dict, settings: dict, entries: list, table: list, *,
                  complete: bool, markdown: bool) -> None:
    doc = {"schema": "dronseg-edge-latency/1", "date": date, "complete": complete, "system": system,
           "settings": settings, "results": entries}
    write_json_atomic(path, doc)
    if markdown:
        lines = [f"- {line}" for line in describe_system(system)] + [f"- date: {date}", ""]
        lines += [render_table(HEADERS, table, markdown=True), ""]
        if not complete:
            lines.insert(0, "(incomplete run: the table ends where the run stopped)\n")
        write_text_atomic(path.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DronsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
