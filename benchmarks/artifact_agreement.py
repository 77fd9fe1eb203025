"""Do a checkpoint, its plain ONNX file and its frames ONNX file give the same class maps in `infer`?

The one-frame-path issue's check: the three artifacts of one trained model segment the same video
with `dronseg-edge infer --save-masks`, and the mask PNGs are compared pixel by pixel (checkpoint
against each ONNX file, and the two ONNX files against each other); the parity reports that `export`
writes for both files are collected beside. Run from a checkout with this package first on the path,
or with ``--package DIR`` for another checkout (a worktree of the commit before a change), so a
change is measured before/after on the same model, video and machine:

    python benchmarks/artifact_agreement.py --work runs/agree                  # trains the tiny model once per --epochs
    python benchmarks/artifact_agreement.py --work runs/agree --package ../before --tag before

The model: LR-ASPP-MobileNetV3 at 320x192 trained on `synth` data for a few epochs on the CPU (the
`make demo` recipe), the video: the synthetic drone flight of `synth` (1280x720).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's package (for the helpers below), not one installed
from dronseg_edge.atomic import write_json_atomic  # noqa: E402
from dronseg_edge.bench.system import system_info  # noqa: E402
from dronseg_edge.devices import Device  # noqa: E402

ARTIFACTS = ("checkpoint", "tensors", "frames")


def cli(package: Path, *args: str) -> None:
    """``python -m dronseg_edge ARGS`` with ``package`` first on the path; raises with its output on failure."""
    # In the checkout: `python -m` puts the working directory ahead of PYTHONPATH (paths given are absolute).
    proc = subprocess.run([sys.executable, "-m", "dronseg_edge", *args], capture_output=True, text=True,
                          cwd=package, env={**os.environ, "PYTHONPATH": str(package)})
    if proc.returncode != 0:
        raise SystemExit(f"dronseg-edge {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def trained_model(work: Path, epochs: int) -> tuple[Path, Path]:
    """(checkpoint, video): the demo recipe, made once under ``work`` with this checkout."""
    data, run = work / "data", work / f"train-{epochs}e"  # another --epochs is another model, not the cached one
    checkpoint = run / "weights" / "best.pt"
    if not checkpoint.is_file():
        cli(HERE.parent, "synth", str(data), "--images", "64", "--size", "320x192", "--video-frames", "60", "--seed", "0")
        cli(HERE.parent, "train", "--data", str(data), "--model", "lraspp_mobilenet_v3_large", "--weights", "none",
            "--size", "320x192", "--epochs", str(epochs), "--batch", "8", "--optimizer", "adamw", "--lr", "0.005",
            "--bn-momentum", "0.1", "--workers", "2", "--out", str(run))
    video = work / "video-1280x720" / "video.mp4"  # the flight at the camera's size: the frames graph shrinks it
    if not video.is_file():
        cli(HERE.parent, "synth", str(video.parent), "--images", "4", "--size", "1280x720", "--video-frames", "60",
            "--seed", "1")
    return checkpoint, video


def export_both(package: Path, checkpoint: Path, out: Path) -> dict[str, dict]:
    """The plain and the frames ONNX file (1280x720 source for the static frames graph), with their parity."""
    found = {}
    for name, extra in (("tensors", []), ("frames", ["--io", "frames", "--source-size", "1280x720"])):
        folder = out / f"export-{name}"
        cli(package, "export", str(checkpoint), "--precision", "fp32", "--out", str(folder), *extra)
        onnx = next(p for p in folder.glob("*.onnx"))
        report = json.loads(next(folder.glob("*.parity.json")).read_text())
        found[name] = {"path": onnx, "parity_status": report.get("status"),
                       "parity_agreement": report.get("agreement")}
    return found


def masks(package: Path, model: Path, video: Path, out: Path) -> list[np.ndarray]:
    cli(package, "infer", str(model), str(video), "--out", str(out), "--save-masks", "--no-progress", "--device", "cpu")
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((out / "masks").glob("*.png"))]


def compare(package: Path, checkpoint: Path, video: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's: infer never writes into a folder that holds one
    exported = export_both(package, checkpoint, out)
    models = {"checkpoint": checkpoint, **{name: e["path"] for name, e in exported.items()}}
    maps = {name: masks(package, model, video, out / f"infer-{name}") for name, model in models.items()}
    pairs = {}
    for a, b in (("checkpoint", "tensors"), ("checkpoint", "frames"), ("tensors", "frames")):
        shares = [float((x == y).mean()) for x, y in zip(maps[a], maps[b], strict=True)]
        pairs[f"{a} vs {b}"] = {"mean": round(float(np.mean(shares)), 5), "min": round(float(np.min(shares)), 5)}
    return {"frames": len(maps["checkpoint"]), "agreement": pairs,
            "parity": {name: {k: v for k, v in e.items() if k != "path"} for name, e in exported.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/artifact-agreement"))
    parser.add_argument("--package", type=Path, default=HERE.parent, help="the checkout whose export/infer to run")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    checkpoint, video = trained_model(args.work, args.epochs)
    package = args.package.resolve()
    system = system_info(Device("cpu"))  # CPU, versions (infer runs on this Python), load before the runs add theirs
    doc = {"schema": "dronseg-edge-artifact-agreement/1", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "package": str(package), "commit": _commit(package), "checkpoint": str(checkpoint), "video": str(video),
           "system": system, **compare(package, checkpoint, video, args.work / (args.tag or "run"))}
    print(json.dumps(doc, indent=2))
    path = args.out / f"artifact-agreement-cpu-{date.today().isoformat()}{'-' + args.tag if args.tag else ''}.json"
    write_json_atomic(path, doc)
    print(f"wrote {path}")
    return 0


def _commit(package: Path) -> str | None:
    proc = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
