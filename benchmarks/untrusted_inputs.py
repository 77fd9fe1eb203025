"""Peak memory of `infer` and of the data check on decompression bombs (issue 19).

    python benchmarks/untrusted_inputs.py            # the bombs of issue 19: 30000x30000 one-bit PNGs
    python benchmarks/untrusted_inputs.py --quick    # smoke run: 12000x12000 bombs

A bomb is a valid one-bit greyscale PNG of zeros: 30000x30000 is 109 KB on disk and 2.7 GB once
decoded to BGR. Issue 19 measured, before images were measured from their header: `infer model.onnx
bomb.png` 10.7 GB peak RSS (exit 0, 34 s); `train` on a data set holding 4 such files renamed .jpg,
--workers 4, 15.7 GB before its error.

Each case runs as its own process under a small parent that reads the child's peak resident set
(``RUSAGE_CHILDREN``), so this process (which imports torch to make the model) does not count:

- ``infer_bomb``: ``infer model.onnx bomb.png`` (target < 1 GB; exit 2: its one image is refused);
- ``infer_folder``: ``infer`` on a folder of two good images and the bomb (target < 1 GB; exit 0);
- ``infer_8k``: ``infer`` on a genuine 8K JPEG (7680x4320, under the limit): the cost of a large
  image that is decoded, for scale (no target);
- ``train_data_check``: ``train --workers 4`` on a 24-image data set with 4 bombs renamed .jpg
  (target < 2 GB; exit 2 naming the first);
- ``data_check``: ``validate_samples(workers=4)`` alone on that data set (target < 2 GB);
- ``data_check_8k``: ``validate_samples`` with 16 threads on 12 genuine 8K images and masks (under the
  limit, so all are decoded): the pixel budget keeps at most 2^27 pixels (4 such images) in flight
  whatever the thread count (no target; for scale).

The model is LR-ASPP at 96x64 with calibrated random weights, exported to ONNX (the deployable path).
Writes benchmarks/results/untrusted-inputs-cpu-<date>.json. Not a timed test: wall seconds are
recorded for information only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from dronseg_edge.atomic import write_json_atomic  # noqa: E402
from dronseg_edge.bench.system import cpu_model, load_average, versions  # noqa: E402
from dronseg_edge.machine import installed_version  # noqa: E402

TARGETS_MIB = {"infer_bomb": 1024, "infer_folder": 1024, "train_data_check": 2048, "data_check": 2048}
# The child's peak memory, read by a small parent (a child inherits its parent's maximum resident
# set at fork, so measuring from this process would count its own size; see vs_plain_loop.py).
MEASURE = ("import resource, subprocess, sys\n"
           "code = subprocess.call(sys.argv[1:])\n"
           "print('peak_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(code)\n")
CHECK = ("import sys\n"
         "from dronseg_edge.data.aeroscapes import dataset_samples, validate_samples\n"
         "from dronseg_edge.errors import DronsegError\n"
         "try:\n"
         "    validate_samples(dataset_samples(sys.argv[1]), workers=int(sys.argv[2]))\n"
         "except DronsegError as exc:\n"
         "    print(f'error: {exc}', file=sys.stderr)\n"
         "    sys.exit(exc.exit_code)\n")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12000x12000 bombs (over the limit, quicker to make)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/work/untrusted")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    return parser.parse_args(argv)


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` as a grandchild; its exit code, peak RSS (MiB), wall seconds and last stderr line."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    peak = next(int(line.split()[1]) for line in reversed(lines) if line.startswith("peak_kib"))
    said = [line.replace(f"{ROOT}/", "") for line in lines if line.startswith(("error:", "warning:"))]
    return {"exit_code": proc.returncode, "peak_mib": round(peak / 1024, 1), "seconds": round(wall, 2),
            "stderr": said[-1] if said else None}


def make_inputs(work: Path, side: int) -> dict[str, Path]:
    """The ONNX model, the bomb, a folder holding it, an 8K JPEG and a data set with 4 bombs (cached)."""
    from testkit import make_checkpoint, scene, write_png_bomb

    from dronseg_edge.data.synthetic import synthesize
    from dronseg_edge.export import export_artifact

    work.mkdir(parents=True, exist_ok=True)
    model = work / "model" / "tiny_fp32.onnx"
    if not model.exists():
        checkpoint = make_checkpoint(work / "tiny.pt")
        export_artifact(checkpoint, out_dir=work / "model", device="cpu", parity=False).path.rename(model)
    bomb = work / f"bomb_{side}.png"
    if not bomb.exists():
        write_png_bomb(bomb, side, side)
    folder = work / f"folder_{side}"
    if not folder.exists():
        folder.mkdir()
        cv2.imwrite(str(folder / "a.jpg"), scene(0, (1280, 720)))
        shutil.copy(bomb, folder / "b.png")
        cv2.imwrite(str(folder / "c.jpg"), scene(3, (1280, 720)))
    big = work / "frame_8k.jpg"
    if not big.exists():
        cv2.imwrite(str(big), cv2.resize(scene(7, (960, 540)), (7680, 4320)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    data = work / f"data_{side}"
    if not data.exists():
        synthesize(data, images=24, size=(320, 192), video_frames=0, seed=0, test_fraction=0.0)
        for image in sorted((data / "imgs/imgs").glob("*.jpg"))[5:9]:
            shutil.copy(bomb, image)  # a PNG under the .jpg name, as in issue 19
    large = work / "data_8k"
    if not large.exists():
        _large_data_set(large, big, count=12)
    return {"model": model, "bomb": bomb, "folder": folder, "big": big, "data": data, "large": large}


def _large_data_set(root: Path, image: Path, count: int) -> None:
    """``count`` copies of the 8K JPEG with an 8K class mask each, in the Kaggle layout."""
    (root / "imgs/imgs").mkdir(parents=True)
    (root / "masks/masks").mkdir(parents=True)
    mask = np.zeros((4320, 7680), np.uint8)
    mask[2000:, :] = 10
    ids = [f"big_{index:02d}" for index in range(count)]
    for image_id in ids:
        shutil.copy(image, root / "imgs/imgs" / f"{image_id}.jpg")
        cv2.imwrite(str(root / "masks/masks" / f"{image_id}.png"), mask)
    (root / "train.csv").write_text("ImageID\n" + "\n".join(ids) + "\n")


def run(args: argparse.Namespace) -> dict:
    side = 12000 if args.quick else 30000
    inputs = make_inputs(args.work, side)
    runs = args.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    cli = [sys.executable, "-m", "dronseg_edge"]
    infer = [*cli, "infer", str(inputs["model"])]
    flags = ["--device", "cpu", "--no-progress"]
    cases = {
        "infer_bomb": [*infer, str(inputs["bomb"]), "--out", str(runs / "bomb"), *flags],
        "infer_folder": [*infer, str(inputs["folder"]), "--out", str(runs / "folder"), *flags],
        "infer_8k": [*infer, str(inputs["big"]), "--out", str(runs / "8k"), *flags],
        "train_data_check": [*cli, "train", "--data", str(inputs["data"]), "--workers", "4", "--model",
                             "lraspp_mobilenet_v3_large", "--weights", "none", "--size", "96x64", "--epochs", "1",
                             "--device", "cpu", "--out", str(runs / "train")],
        "data_check": [sys.executable, "-c", CHECK, str(inputs["data"]), "4"],
        "data_check_8k": [sys.executable, "-c", CHECK, str(inputs["large"]), "16"],
    }
    results, load_start = {}, load_average()  # before the runs: the one at the end counts their own processes
    for name, cmd in cases.items():
        results[name] = measure(cmd)
        target = TARGETS_MIB.get(name)
        results[name]["target_mib"] = target
        results[name]["met"] = None if target is None else results[name]["peak_mib"] < target
        print(f"{name:17s} exit {results[name]['exit_code']}  peak {results[name]['peak_mib']:8.1f} MiB  "
              f"{results[name]['seconds']:6.1f} s  {results[name]['stderr'] or ''}")
    return {"benchmark": "untrusted-inputs", "date": date.today().isoformat(), "device": "cpu",
            "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "load_average_start": load_start,
                    "load_average": load_average()},
            "versions": {**versions(), "pillow": installed_version("pillow")},  # Pillow reads the images' headers
            "bomb": {"size": [side, side], "file_bytes": inputs["bomb"].stat().st_size, "decoded_bgr_bytes": side * side * 3},
            "max_pixels": 1 << 26, "issue_19_before": {"infer_bomb_peak_gb": 10.7, "train_workers_4_peak_gb": 15.7},
            "results": results}


def main(argv=None) -> None:
    args = parse_args(argv)
    record = run(args)
    suffix = "-quick" if args.quick else ""
    path = args.out / f"untrusted-inputs-cpu-{record['date']}{suffix}.json"
    write_json_atomic(path, record)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
