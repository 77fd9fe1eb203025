"""End-to-end video fps of `dronseg-edge infer` against the backend's model-only fps.

The infer issue's targets, on an H100 with DeepLabV3-ResNet101 at 1280x720, batch 1, writing the
overlay video: end-to-end fps >= 0.9 x model-only fps, and the PyTorch backend <= 6.0 ms model-only.

    python benchmarks/pipeline.py --half                        # GPU: ResNet-101, 1280x720, fp16 + CUDA graph
    python benchmarks/pipeline.py --video drone_h264.mp4 --half # on your own footage (ideally H.264)
    python benchmarks/pipeline.py --model model_fp16.onnx       # any artifact: .pt, .onnx, .engine
    python benchmarks/pipeline.py --quick                       # CPU smoke run: LR-ASPP, 160x96, 40 frames
    python benchmarks/pipeline.py --vs-plain-loop               # CPU: infer vs a hand-written OpenCV+ORT loop

--vs-plain-loop (benchmarks/vs_plain_loop.py) runs `dronseg-edge infer` on an ONNX file and the plain
loop of benchmarks/plain_loop.py side by side as separate processes (LR-ASPP at 320x192 by default,
a 300-frame 1280x720 H.264 clip) and reports whole-process and per-stage ratios, peak memory and
the 1-frame start-up difference; writes benchmarks/results/vs-plain-loop-<device>-<date>.json and .md.

Model-only: ``backend.infer`` on a preprocessed frame already on the device (the package's timing
harness: CUDA events on a GPU). End-to-end: ``run_inference`` on the video (decode thread,
inference, writer threads: overlay video + stats; --masks adds mask PNGs), wall time from the
first frame until every output is written, after a warm-up that captures the CUDA graph.
Without --model the model has random weights with calibrated BatchNorm (speed does not depend on
the weights); without --video a synthetic drone video is rendered (mp4v: this OpenCV cannot write
H.264, so the input codec is recorded in the results).

Writes benchmarks/results/pipeline-<device>-<date>[-TAG].json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import device_slug, sane_checkpoint  # noqa: E402  (same folder: one way to make test models)

from dronseg_edge.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from dronseg_edge.bench.report import now_iso  # noqa: E402
from dronseg_edge.bench.system import describe_system, system_info  # noqa: E402
from dronseg_edge.bench.timing import TimingSettings, measure  # noqa: E402
from dronseg_edge.devices import resolve_device  # noqa: E402
from dronseg_edge.errors import DronsegError  # noqa: E402
from dronseg_edge.models import ARCHS  # noqa: E402
from dronseg_edge.pipeline import RunOptions, Segmenter, run_inference  # noqa: E402
from dronseg_edge.runtime.host import preprocess_host  # noqa: E402
from dronseg_edge.sizes import format_size, parse_size  # noqa: E402

TARGET_RATIO = 0.9
TARGET_MODEL_MS = 6.0  # PyTorch backend, ResNet-101, 1280x720, H100
TARGET_CASE = ("deeplabv3_resnet101", (1280, 720))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help=".pt/.onnx/.engine to run (default: a random-weight --arch checkpoint)")
    parser.add_argument("--arch", default="deeplabv3_resnet101", choices=list(ARCHS))
    parser.add_argument("--size", default="1280x720", help="WxH of the model input and of the synthetic video")
    parser.add_argument("--video", type=Path, help="input video (default: a synthetic one of --frames frames)")
    parser.add_argument("--frames", type=int, default=300, help="frames of the synthetic video")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--half", action="store_true", help="fp16 for checkpoints on a GPU")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--compile", dest="compile_mode", help="checkpoints: torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--masks", action="store_true", help="also write mask PNGs in the end-to-end run")
    parser.add_argument("--iters", type=int, default=200, help="model-only timed iterations")
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs; the best one is reported")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: lraspp_mobilenet_v3_large, 160x96, 40 frames")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work"), help="cached checkpoints and videos")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tag", default="", help="appended to the result file name")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="--vs-plain-loop: also run `infer` of this other checkout of the package (e.g. a git "
                             "worktree of the commit before a change), in the same alternation")
    parser.add_argument("--vs-plain-loop", action="store_true",
                        help="infer on ONNX vs the plain OpenCV + ONNX Runtime loop (CPU; default LR-ASPP 320x192, 3 repeats)")
    args = parser.parse_args(argv)
    if args.vs_plain_loop:
        parser.set_defaults(arch="lraspp_mobilenet_v3_large", size="320x192", repeats=3, device="cpu")
        args = parser.parse_args(argv)
    if args.quick:  # new defaults; options given on the command line still win
        parser.set_defaults(arch="lraspp_mobilenet_v3_large", size="160x96", frames=40, iters=20, repeats=1)
        args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1:  # --vs-plain-loop: a traceback once the first processes had run
        raise DronsegError(f"--frames {args.frames} --repeats {args.repeats}: both take 1 or more")
    return args


def synthetic_video(work: Path, size: tuple[int, int], frames: int) -> Path:
    """A rendered drone flight (dronseg_edge.data.synthetic), cached in ``work``."""
    from dronseg_edge.data.synthetic import synthesize

    root = work / f"video_{format_size(size)}_{frames}"
    if not (root / "video.mp4").is_file():
        synthesize(root, images=1, size=size, video_frames=frames, seed=0, force=True)
    return root / "video.mp4"


def video_facts(path: Path) -> tuple[np.ndarray, dict]:
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
    facts = {"path": str(path), "codec": "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)),
             "frames": int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), "fps": capture.get(cv2.CAP_PROP_FPS),
             "size": format_size((int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))))}
    capture.release()
    if not ok:
        raise DronsegError(f"video {path} has no readable frame")
    return frame, facts


def run(args: argparse.Namespace) -> dict:
    """Measure model-only and end-to-end fps as ``args`` say; returns the results document (not written)."""
    device = run_device(args)
    size = parse_size(args.size)
    model = args.model or sane_checkpoint(args.arch, size, args.work / "checkpoints" / f"{args.arch}_{format_size(size)}.pt",
                                          device)
    video = args.video or synthetic_video(args.work, size, args.frames)
    first, facts = video_facts(video)
    if device.type == "cpu" and (os.cpu_count() or 1) > 1:
        torch.set_num_threads(os.cpu_count() - 1)  # what run_inference uses on the CPU: compare like with like
    options = {"backend_options": {"compile_mode": args.compile_mode}} if args.compile_mode else {}
    segmenter = Segmenter(model, device=device, half=args.half, batch=args.batch, **options)
    system = system_info(device)  # after set_num_threads: its "torch uses N threads" is what both runs use
    if segmenter.backend.name != "torch":  # ONNX Runtime or TensorRT runs the model, not torch's threads
        system["cpu"]["torch_threads"] = None
    ort_threads = (segmenter.backend.threads or "onnxruntime default (one per core)"  # its own pool runs the model
                   if segmenter.backend.name == "onnxruntime" else None)
    for line in describe_system(system):
        print(line)
    print(f"model: {model} -> {segmenter.describe()}" + (f" (intra-op threads: {ort_threads})" if ort_threads else ""))
    print(f"video: {facts['path']} ({facts['codec']}, {facts['size']}, {facts['frames']} frames, {facts['fps']:g} fps)")
    for _ in range(3):  # captures the CUDA graph and lets cudnn pick its kernels before anything is timed
        segmenter.predict(first)

    batch_host = preprocess_host([first] * args.batch, segmenter.info)
    timing = TimingSettings(warmup_iters=10, iters=args.iters)
    model_only = measure(segmenter.backend, batch_host, timing)
    model_ms = model_only.compute.median_ms / args.batch
    print(f"model-only: {model_ms:.2f} ms per frame (median of {args.iters}), {1000 / model_ms:.1f} fps")

    runs = []
    for repeat in range(max(1, args.repeats)):
        with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as folder:
            options = RunOptions(out=Path(folder) / "run", save_masks=args.masks, progress=False)
            summary = run_inference(segmenter, video, options)
        runs.append(summary.data)
        print(f"end-to-end run {repeat + 1}: {summary.speed_line()}")
    best = max(runs, key=lambda data: data["fps"])
    segmenter.close()

    ratio = best["fps"] / (1000 / model_ms)
    arch = segmenter.info.arch
    targets = {"end_to_end_vs_model_only": {"target": TARGET_RATIO, "measured": round(ratio, 3), "met": ratio >= TARGET_RATIO}}
    if device.type == "cuda" and segmenter.backend.name == "torch" and (arch, segmenter.info.input_size) == TARGET_CASE:
        targets["torch_model_only_ms"] = {"target": TARGET_MODEL_MS, "measured": round(model_ms, 3),
                                          "met": model_ms <= TARGET_MODEL_MS}
    print(f"end-to-end / model-only = {best['fps']:.1f} / {1000 / model_ms:.1f} fps = {ratio:.2f} "
          f"(target >= {TARGET_RATIO}{'' if device.type == 'cuda' else '; the targets are for the H100'})")

    doc = {
        "schema": "dronseg-edge-pipeline/1", "date": now_iso(), "system": system,
        "settings": {"model": str(model), "arch": arch, "weights": "given" if args.model else "random, BatchNorm calibrated",
                     "backend": segmenter.backend.name, "provider": segmenter.backend.provider,
                     "precision": segmenter.info.precision, "input_size": format_size(segmenter.info.input_size),
                     "batch": args.batch, "masks": args.masks, "timing": timing.to_dict(), "repeats": len(runs),
                     "torch_threads": system["cpu"]["torch_threads"], "onnxruntime_intra_op": ort_threads,
                     # other processes on the machine slow every stage: record how busy it was
                     "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
        "video": facts,
        "model_only": {"ms_per_frame": round(model_ms, 4), "fps": round(1000 / model_ms, 2),
                       "latency_ms": model_only.to_dict()["latency_ms"]},
        "end_to_end": {"fps": best["fps"], "frames": best["frames"], "wall_s": best["wall_s"], "stage_ms": best["stage_ms"],
                       "write_ms": best["write_ms"], "video_codec": best["video_codec"],
                       "all_fps": [data["fps"] for data in runs]},
        "targets": targets,
    }
    return doc


def run_device(args: argparse.Namespace) -> torch.device:
    return resolve_device("cpu" if args.quick and args.device == "auto" else args.device)


def run_vs_plain_loop(args: argparse.Namespace) -> int:
    """The side-by-side run (benchmarks/vs_plain_loop.py); writes its JSON and Markdown."""
    import vs_plain_loop
    from dronseg_edge.export import export_artifact

    size = parse_size(args.size)
    device = resolve_device(args.device)
    if args.model is None:
        checkpoint = sane_checkpoint(args.arch, size, args.work / "checkpoints" / f"{args.arch}_{format_size(size)}.pt", device)
        model = export_artifact(checkpoint, fmt="onnx", precision="fp32", size=size, out_dir=args.work / "onnx",
                                parity=False, device="cpu").path
        arch = args.arch
    else:  # what the file itself says it is, not the --arch/--size defaults
        from dronseg_edge.metadata import read_onnx_info

        model, info = args.model, read_onnx_info(args.model)
        arch, size = info.arch, tuple(info.input_size)
    source = Path(args.video or synthetic_video(args.work, (1280, 720), args.frames))
    # The re-encoded copy is cached under the source's name and change time: another --video is another copy
    tag = f"{source.stem}_{source.stat().st_mtime_ns}"
    video = vs_plain_loop.h264_clip(source, args.work / f"clip_h264_{tag}_{args.frames}.mp4", args.frames)
    one = vs_plain_loop.h264_clip(source, args.work / f"clip_h264_{tag}_1.mp4", 1)
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # before the alternation
    _, facts = video_facts(video)
    system = system_info(torch.device("cpu"))
    system["cpu"]["torch_threads"] = None  # this process's: neither side runs torch (doc["threads"] says what they use)
    for line in describe_system(system):
        print(line)
    print(f"model: {model} ({format_size(size)}); video: {facts['codec']} {facts['size']}, {facts['frames']} frames")
    doc = vs_plain_loop.compare(Path(model), video, one, args.repeats, args.baseline)
    doc.update({"schema": "dronseg-edge-vs-plain-loop/1", "date": now_iso(), "system": system, "video": facts,
                "model": {"path": str(model), "arch": arch, "input_size": format_size(size)},
                "threads": vs_plain_loop.thread_counts(), "load_average_1m_start": load_start,
                "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None})
    text = vs_plain_loop.table(doc)
    print(text)
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in doc["met"].items()))
    stem = f"vs-plain-loop-cpu-{date.today().isoformat()}{'-' + args.tag if args.tag else ''}"
    path = write_json_atomic(args.out / f"{stem}.json", doc)
    machine = "; ".join(describe_system(system))  # the device, CPU (and load average) and versions
    write_text_atomic(args.out / f"{stem}.md", f"# infer vs the plain loop, {doc['date']}\n\n{machine}\n\n"
                                         f"{text}\n\nthreads: {json.dumps(doc['threads'])}\n")
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.vs_plain_loop:
        return run_vs_plain_loop(args)
    doc = run(args)
    name = f"pipeline-{device_slug(run_device(args))}-{date.today().isoformat()}{'-' + args.tag if args.tag else ''}.json"
    path = write_json_atomic(args.out / name, doc)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DronsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
