"""Tiled against resized inference on 4K drone frames: IoU of the small classes, and what it costs.

    python benchmarks/tiling.py                       # CPU, a few minutes: synth 3840x2160, LR-ASPP at 256x160
    python benchmarks/tiling.py --model best.pt       # your own model (trained for windows at full resolution)
    python benchmarks/tiling.py --overlaps 0,0.25,0.5 # more tiled rows (default 0 and 0.25)

The frames are `dronseg-edge synth` scenes at 3840x2160, where objects keep the scene's scale (a
person is ~50 px across, as from a 4K camera at the altitude where a 720p one shows ~16 px). Without
--model a small model is trained here first, the realistic setting for tiling: its input (256x160
by default) is far smaller than the frame, and it has seen both scales, whole frames shrunk to its
input and crops of its input size cut from the 4K frames (as mmseg trains on crops for its slide
mode), so neither way of inferring meets something it never saw. Each test frame is then segmented
resized whole (on the CPU the class map is upsampled nearest; on a GPU the logits bilinearly)
and tiled (pipeline/tiling.py) at each --overlaps, and scored against its ground truth: IoU per
class (person, bike, car, drone, animal, and the mean over every class present) and milliseconds per frame.

Writes benchmarks/results/tiling-<device>-<date>[-TAG].json and .md (docs/tiling.md shows the table).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not one installed
from dronseg_edge.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from dronseg_edge.bench.report import now_iso  # noqa: E402
from dronseg_edge.bench.system import describe_system, system_info  # noqa: E402
from dronseg_edge.classes import CLASS_NAMES  # noqa: E402
from dronseg_edge.errors import DronsegError  # noqa: E402
from dronseg_edge.metrics import confusion_matrix, iou_from_confusion  # noqa: E402
from dronseg_edge.pipeline import Segmenter  # noqa: E402
from dronseg_edge.pipeline.tiling import MAX_OVERLAP  # noqa: E402
from dronseg_edge.runtime.registry import is_checkpoint  # noqa: E402
from dronseg_edge.sizes import format_size, parse_size  # noqa: E402

SMALL = ("person", "bike", "car", "drone", "animal")
SMALL_IDS = [CLASS_NAMES.index(name) for name in SMALL]
RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent / "work" / "tiling"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frame-size", default="3840x2160", help="test frames, WxH")
    parser.add_argument("--input", default="256x160", help="input of the model trained here, WxH (divisible by 32)")
    parser.add_argument("--model", type=Path, help="any checkpoint or artifact with logits; skips the training")
    parser.add_argument("--train-scenes", type=int, default=8, help="4K scenes to cut training crops from")
    parser.add_argument("--test-scenes", type=int, default=5, help="4K scenes to score on (another seed)")
    parser.add_argument("--crops", type=int, default=16, help="crops of the model input per training scene")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--overlaps", default="0,0.25", help="comma-separated tile overlaps to score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=WORK, help="scenes, training set and run (reused when present)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="")
    return parser.parse_args(argv)


def render_scenes(work: Path, size: tuple[int, int], count: int, seed: int) -> Path:
    """``count`` `synth` scenes at ``size``, all listed in train.csv with their masks in masks/masks.

    Training and test scenes are two such sets of different seeds: the first scenes of a set carry
    synth's rota of rare classes (drone, animal, bike, ...), so a small test set has them too.
    """
    from dronseg_edge.data.synthetic import synthesize

    root = work / f"scenes_{format_size(size)}_{count}_seed{seed}"
    if not (root / "train.csv").is_file():
        synthesize(root, images=count, size=size, video_frames=0, seed=seed, test_fraction=0.0, force=True)
    return root


def read_ids(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return [row["ImageID"] for row in csv.DictReader(handle)]


def training_set(scenes: Path, out: Path, input_size: tuple[int, int], crops: int, seed: int) -> Path:
    """A Kaggle-layout set of the model's input size: each training scene shrunk whole (as `train`
    would), ``crops // 4`` copies of it, and ``crops`` crops at full resolution, half of them centred on
    a pixel of a small class (so the rare classes are seen often enough to be learnt)."""
    if (out / "train.csv").is_file():
        return out
    rng = np.random.default_rng(seed)
    width, height = input_size
    (out / "imgs/imgs").mkdir(parents=True, exist_ok=True)
    (out / "masks/masks").mkdir(parents=True, exist_ok=True)
    ids = []

    def save(name: str, image: np.ndarray, mask: np.ndarray) -> None:
        cv2.imwrite(str(out / "imgs/imgs" / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(out / "masks/masks" / f"{name}.png"), mask)
        ids.append(name)

    for scene_id in read_ids(scenes / "train.csv"):
        image = cv2.imread(str(scenes / "imgs/imgs" / f"{scene_id}.jpg"))
        mask = cv2.imread(str(scenes / "masks/masks" / f"{scene_id}.png"), cv2.IMREAD_UNCHANGED)
        small_image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        small_mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
        for copy in range(max(1, crops // 4)):
            save(f"{scene_id}_whole{copy}", small_image, small_mask)
        ys, xs = np.nonzero(np.isin(mask, SMALL_IDS))
        for index in range(crops):
            if index % 2 == 0 and len(xs):
                pick = int(rng.integers(len(xs)))
                x = int(np.clip(xs[pick] - width // 2 + rng.integers(-width // 4, width // 4 + 1), 0, mask.shape[1] - width))
                y = int(np.clip(ys[pick] - height // 2 + rng.integers(-height // 4, height // 4 + 1), 0, mask.shape[0] - height))
            else:
                x, y = int(rng.integers(0, mask.shape[1] - width + 1)), int(rng.integers(0, mask.shape[0] - height + 1))
            save(f"{scene_id}_crop{index:02d}", image[y:y + height, x:x + width], mask[y:y + height, x:x + width])
    with open(out / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageID"])
        writer.writerows([i] for i in ids)
    return out


def train_model(data: Path, run: Path, input_size: tuple[int, int], epochs: int, seed: int) -> tuple[Path, float]:
    """LR-ASPP-MobileNetV3 from scratch (no pretrained weights can be fetched here) on ``data``; (best.pt, seconds)."""
    from dronseg_edge.data.augment import AugmentConfig
    from dronseg_edge.train.config import TrainConfig
    from dronseg_edge.train.fit import fit

    best = run / "weights" / "best.pt"
    if best.is_file():
        return best, float("nan")
    started = time.perf_counter()
    cfg = TrainConfig(data=str(data), out=str(run), model="lraspp_mobilenet_v3_large", weights="none", size=input_size,
                      epochs=epochs, batch=8, lr=0.005, optimizer="adamw", bn_momentum=0.1, class_weights="inverse_sqrt",
                      device="cpu", workers=0, seed=seed, tensorboard=False, plots=False, mosaic_every=0,
                      augment=AugmentConfig(hflip=0.5, affine_p=0.0, color_p=0.5, blur_p=0.0, noise_p=0.0))
    result = fit(cfg, log=lambda message: print(f"  train: {message}"))
    return result.best, time.perf_counter() - started


def score(model: Path, frames: list[np.ndarray], truths: list[np.ndarray], **options) -> dict:
    """Segment every frame with ``Segmenter(model, **options)``; IoU per class and ms per frame."""
    with Segmenter(model, device="cpu", **options) as seg:
        seg.predict(frames[0][:seg.info.input_size[1], :seg.info.input_size[0]])  # warm-up
        cm = torch.zeros(len(CLASS_NAMES), len(CLASS_NAMES), dtype=torch.int64)
        times, windows = [], 0
        for frame, truth in zip(frames, truths):
            start = time.perf_counter()
            result = seg.predict(frame)
            times.append((time.perf_counter() - start) * 1e3)
            windows = result.tiles
            cm += confusion_matrix(torch.from_numpy(result.mask), torch.from_numpy(truth), len(CLASS_NAMES))
    iou = iou_from_confusion(cm)
    present = cm.sum(1) > 0
    return {"iou": {name: _round(iou[i]) for i, name in enumerate(CLASS_NAMES)},
            "miou_present": _round(iou[present].nanmean()), "small_mean": _round(iou[SMALL_IDS].nanmean()),
            "ms_per_frame": round(float(np.median(times)), 1), "windows": windows}


def _round(value) -> float | None:
    value = float(value)
    return None if value != value else round(value, 4)


def table(doc: dict) -> str:
    rows = ["| inference | windows | " + " | ".join(f"{n} IoU" for n in SMALL) + " | small mean | mIoU (present) | ms/frame |",
            "|---|---|" + "---|" * (len(SMALL) + 3)]
    for name, data in doc["modes"].items():
        cells = [f"{data['iou'][n]:.3f}" if data["iou"][n] is not None else "n/a" for n in SMALL]
        rows.append(f"| {name} | {data['windows'] or 1} | " + " | ".join(cells) +
                    f" | {data['small_mean']:.3f} | {data['miou_present']:.3f} | {data['ms_per_frame']:.0f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    frame_size, input_size = parse_size(args.frame_size, "--frame-size"), parse_size(args.input, "--input")
    overlaps = [o.strip() for o in args.overlaps.split(",") if o.strip()]
    if not all(re.fullmatch(r"\d*\.?\d+", o) and float(o) <= MAX_OVERLAP for o in overlaps):  # before the training
        raise DronsegError(f"--overlaps {args.overlaps}: give overlaps from 0 to {MAX_OVERLAP}, comma-separated")
    overlaps = [float(o) for o in overlaps]
    torch.set_num_threads(os.cpu_count() or 1)
    system = system_info(torch.device("cpu"))
    ort_threads = None if args.model is None or is_checkpoint(args.model) else "onnxruntime default (one per core)"
    if ort_threads:  # ONNX Runtime runs the model on a pool of its own (Segmenter's default: not streaming)
        system["cpu"]["torch_threads"] = None
    print("\n".join(describe_system(system)) + (f"\nonnxruntime intra-op threads: {ort_threads}" if ort_threads else ""))
    started = time.perf_counter()
    scenes = render_scenes(args.work, frame_size, args.train_scenes, args.seed)
    tests = render_scenes(args.work, frame_size, args.test_scenes, args.seed + 1000)
    print(f"scenes: {scenes}, {tests} ({time.perf_counter() - started:.0f} s)")
    train_s = None
    model = args.model
    if model is None:
        name = f"{format_size(input_size)}_{args.train_scenes}x{args.crops}_seed{args.seed}"
        data = training_set(scenes, args.work / f"train_{name}", input_size, args.crops, args.seed)
        model, train_s = train_model(data, args.work / f"run_{name}_{args.epochs}e", input_size, args.epochs, args.seed)
        print(f"model: {model} (trained in {train_s:.0f} s)")
    test_ids = read_ids(tests / "train.csv")
    frames = [cv2.imread(str(tests / "imgs/imgs" / f"{i}.jpg")) for i in test_ids]
    truths = [cv2.imread(str(tests / "masks/masks" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in test_ids]
    present = {CLASS_NAMES[c]: int(sum((t == c).sum() for t in truths)) for c in range(len(CLASS_NAMES))}
    print("truth pixels of the small classes: " + ", ".join(f"{n} {present[n]}" for n in SMALL))
    modes = {"resized": dict(tile="off")}
    modes.update({f"tiled, overlap {o:g}": dict(tile="on", tile_overlap=o) for o in overlaps})
    results = {}
    for name, options in modes.items():
        results[name] = score(model, frames, truths, **options)
        print(f"{name}: small-class mean IoU {results[name]['small_mean']}, {results[name]['ms_per_frame']} ms/frame")
    doc = {"schema": "dronseg-edge-tiling/1", "date": now_iso(), "system": system,
           "settings": {"frame_size": format_size(frame_size), "model": str(model), "trained_here": args.model is None,
                        "input_size": format_size(input_size) if args.model is None else None,
                        "train_scenes": args.train_scenes, "test_scenes": len(frames), "crops": args.crops,
                        "epochs": args.epochs, "train_s": None if train_s is None else round(train_s, 1),
                        "seed": args.seed, "torch_threads": system["cpu"]["torch_threads"], "onnxruntime_intra_op": ort_threads,
                        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
           "truth_pixels": present, "modes": results, "wall_s": round(time.perf_counter() - started, 1)}
    text = table(doc)
    print(text)
    stem = f"tiling-cpu-{date.today().isoformat()}{'-' + args.tag if args.tag else ''}"
    path = write_json_atomic(args.out / f"{stem}.json", doc)
    machine = "; ".join(describe_system(system))
    write_text_atomic(args.out / f"{stem}.md", f"# Tiled vs resized inference, {doc['date']}\n\n{machine}\n\n"
                                              f"{len(frames)} synthetic {format_size(frame_size)} frames, model "
                                              f"{model}\n\n{text}\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DronsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
