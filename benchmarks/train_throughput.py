"""Training throughput: images/s, time the loop waits for data, peak GPU memory.

Runs the package's own training step (dronseg_edge.train.loop.train_one_epoch) on real JPEG/PNG
files through the real DataLoader and augmentation, so the loader's cost is part of the figure.

    python benchmarks/train_throughput.py                       # ResNet-101, 1280x720, bf16, batch 8
    python benchmarks/train_throughput.py --model lraspp_mobilenet_v3_large --size 320x192 --steps 5 --device cpu

Writes benchmarks/results/train_throughput-<device>-<date>[-TAG].json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not one installed
from dronseg_edge.atomic import write_json_atomic  # noqa: E402
from dronseg_edge.bench.system import cpu_model, load_average, versions  # noqa: E402
from dronseg_edge.data.aeroscapes import dataset_samples  # noqa: E402
from dronseg_edge.data.augment import AugmentConfig  # noqa: E402
from dronseg_edge.data.dataset import SegmentationDataset  # noqa: E402
from dronseg_edge.devices import device_description, resolve_device  # noqa: E402
from dronseg_edge.errors import DronsegError  # noqa: E402
from dronseg_edge.sizes import parse_size  # noqa: E402
from dronseg_edge.train.config import TrainConfig  # noqa: E402
from dronseg_edge.train.loop import train_one_epoch  # noqa: E402
from dronseg_edge.train.rng import seed_everything  # noqa: E402
from dronseg_edge.train.setup import build_criterion, loader_options, prepare_model, step_context  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deeplabv3_resnet101")
    parser.add_argument("--size", default="1280x720", help="WxH")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm (0: no clipping)")
    parser.add_argument("--amp", default="bf16", choices=["auto", "fp16", "bf16", "off"])
    parser.add_argument("--loss", default="focal+dice")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--warmup", type=int, default=10, help="optimiser steps before timing")
    parser.add_argument("--steps", type=int, default=50, help="timed optimiser steps")
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--data", type=Path, help="data set root (default: synthesise --images at --size)")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="appended to the file name, to keep several runs of one day")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:  # --steps 0 wrote "0.0 img/s" as a result
        raise DronsegError(f"--steps {args.steps} --warmup {args.warmup}: time 1 or more steps, after 0 or more")
    return args


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    size = parse_size(args.size)
    load_start = load_average()  # before the run: the one after it counts its own loader workers
    seed_everything(0)
    scratch, data = None, args.data
    if data is None:
        from dronseg_edge.data.synthetic import synthesize

        scratch = tempfile.TemporaryDirectory(prefix="dronseg-bench-")
        data = Path(scratch.name) / "data"
        synthesize(data, images=args.images, size=size, video_frames=0, seed=0, test_fraction=0.0)
    samples = dataset_samples(data, "train")
    cfg = TrainConfig(data=str(data), model=args.model, weights="none", batch=args.batch, size=size,
                      accumulate=args.accumulate, loss=args.loss, optimizer=args.optimizer, amp=args.amp,
                      channels_last=args.channels_last, compile=args.compile, workers=args.workers, epochs=1,
                      augment=AugmentConfig(enabled=args.augment))
    dataset = SegmentationDataset(samples, size, augment=cfg.augment)
    micro_batches = (args.warmup + args.steps) * args.accumulate
    # Drawn with replacement, so the run lasts the warm-up plus the timed steps whatever the data set's size;
    # model, optimiser, schedule, scaler, loss and loader settings are a training run's own (train/setup.py).
    loader = DataLoader(dataset, batch_size=args.batch, sampler=RandomSampler(dataset, replacement=True, num_samples=micro_batches * args.batch),
                        drop_last=True, **loader_options(cfg, device))
    setup = prepare_model(cfg, device, args.warmup + args.steps)
    model, optimizer, scheduler, scaler, net = setup.model, setup.optimizer, setup.scheduler, setup.scaler, setup.compiled
    criterion = build_criterion(cfg, device)
    ctx = step_context(setup, device)
    iterator = iter(loader)
    # Parameters before any step: a run whose optimiser steps were all skipped (fp16 overflow) or never
    # reached the weights must not pass for training. Kept on the host so the peak GPU memory is the loop's own.
    before = [p.detach().to("cpu", copy=True) for p in model.parameters()]

    class Stream:  # one loader iterator shared by the warm-up and the timed pass
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __iter__(self):
            for _ in range(self.n):
                yield next(iterator)

    kwargs = dict(accumulate=args.accumulate, grad_clip=args.grad_clip, show_progress=sys.stderr.isatty())
    warm = train_one_epoch(net, criterion, optimizer, scheduler, scaler, Stream(args.warmup * args.accumulate), ctx, description="warm-up", **kwargs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed = train_one_epoch(net, criterion, optimizer, scheduler, scaler, Stream(args.steps * args.accumulate), ctx, description="timed", **kwargs)
    with torch.no_grad():
        change = max((p.detach().cpu() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    del before
    if scratch is not None:
        scratch.cleanup()
    result = {
        "benchmark": "train_throughput",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": device_description(device),
        "host": platform.node(),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "load_average_start": load_start,
                "load_average": load_average()},
        "versions": versions(),
        # synthetic data: how it was made, not the temporary folder (deleted by now) it was made in
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "data": str(args.data) if args.data else f"synthetic, {args.images} images {args.size}, seed 0"},
        "images_per_s": timed["images"] / timed["seconds"],
        "images": timed["images"],
        "seconds": timed["seconds"],
        "data_wait_s": timed["data_wait_s"],
        "data_wait_frac": timed["data_wait_s"] / timed["seconds"],
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "final_loss": timed["loss"],
        "loss_finite": math.isfinite(timed["loss"]),
        "optimizer_steps": warm["steps"] + timed["steps"],
        "max_abs_weight_change": change,
        "weights_changed": change > 0,
        # fp16 only: GradScaler's scale after the run (halved at every overflow, so it shows skipped steps)
        "grad_scale": scaler.get_scale() if scaler.is_enabled() else None,
    }
    return result


def main(argv=None) -> Path:
    args = parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", result["device"].split(" (")[0]).strip("-").lower()
    tag = f"-{re.sub(r'[^A-Za-z0-9_.]+', '-', args.tag)}" if args.tag else ""  # as benchmarks/latency.py
    path = args.out / f"train_throughput-{slug}-{result['date'][:10]}{tag}.json"
    write_json_atomic(path, result)  # strict JSON: a NaN or infinite loss (fp16 overflow) is null, loss_finite says so
    memory = "n/a (CPU)" if result["peak_memory_gib"] is None else f"{result['peak_memory_gib']:.2f} GiB"
    print(f"{result['images_per_s']:.1f} img/s ({args.model} {args.size} batch {args.batch} amp {args.amp}) on "
          f"{result['device']}, data wait {100 * result['data_wait_frac']:.1f}%, peak GPU memory {memory} -> {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except DronsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
