"""benchmarks/artifact_agreement.py: the same command run again (the model is trained once per --work)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks import artifact_agreement  # noqa: E402


def fake_cli(package: Path, command: str, *args: str) -> None:
    """export and infer as the package's own: infer refuses an --out that holds files."""
    out = Path(args[args.index("--out") + 1])
    if command == "export":
        out.mkdir(parents=True, exist_ok=True)
        (out / "best_fp32.onnx").write_bytes(b"onnx")
        (out / "best_fp32.parity.json").write_text(json.dumps({"status": "PASSED", "agreement": 1.0}))
        return
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"dronseg-edge infer failed (2): --out {out} already holds files")
    (out / "masks").mkdir(parents=True)
    for index in range(3):
        cv2.imwrite(str(out / "masks" / f"frame_{index:06d}.png"), np.full((8, 8), index, np.uint8))


def test_the_same_run_twice_measures_twice(tmp_path, monkeypatch):
    """Before: the second run stopped at its first infer (its --out held the first run's masks), exit 1."""
    monkeypatch.setattr(artifact_agreement, "cli", fake_cli)
    runs = [artifact_agreement.compare(tmp_path, tmp_path / "best.pt", tmp_path / "video.mp4", tmp_path / "run")
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[1]["frames"] == 3
    assert runs[1]["agreement"]["checkpoint vs frames"] == {"mean": 1.0, "min": 1.0}


def test_another_epochs_trains_another_model(tmp_path, monkeypatch):
    """Before: the model was cached as WORK/train whatever --epochs said, so --epochs 30 after a run with --epochs 1
    compared the 1-epoch model's artifacts, and the results said nothing of it."""
    trained = []

    def cli(package: Path, command: str, *args: str) -> None:
        out = Path(args[args.index("--out") + 1] if "--out" in args else args[0])
        if command == "train":
            trained.append(args[args.index("--epochs") + 1])
            (out / "weights").mkdir(parents=True)
            (out / "weights" / "best.pt").write_bytes(b"checkpoint")
        else:  # synth: the data set, or the video
            out.mkdir(parents=True, exist_ok=True)
            (out / "video.mp4").write_bytes(b"video")

    monkeypatch.setattr(artifact_agreement, "cli", cli)
    one, two, again = (artifact_agreement.trained_model(tmp_path, epochs)[0] for epochs in (1, 2, 1))
    assert trained == ["1", "2"] and one != two and again == one
