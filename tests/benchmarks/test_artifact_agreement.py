"""benchmarks/artifact_agreement.py: the same command run again (the model is trained once per --work)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

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


def measured_twice(tmp_path, monkeypatch, write_text=None) -> Path:
    """main() with the model and the comparison faked, run twice with one --tag; the second's write is ``write_text``."""
    monkeypatch.setattr(artifact_agreement, "trained_model", lambda work, epochs: (work / "best.pt", work / "video.mp4"))
    monkeypatch.setattr(artifact_agreement, "compare", lambda *args: {"frames": 3, "agreement": {}, "parity": {}})
    argv = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--tag", "t"]
    assert artifact_agreement.main(argv) == 0
    if write_text is not None:
        monkeypatch.setattr(Path, "write_text", write_text)
    return next((tmp_path / "out").glob("artifact-agreement-cpu-*-t.json"))


def test_the_results_say_what_they_were_measured_on(tmp_path, monkeypatch):
    """Before: no versions, CPU or load average in the JSON, where every other benchmark's results carry them."""
    doc = json.loads(measured_twice(tmp_path, monkeypatch).read_text())
    assert doc["system"]["versions"]["opencv"] == cv2.__version__ and doc["system"]["device"]["type"] == "cpu"
    assert doc["system"]["cpu"]["logical_cores"] and "load_average" in doc["system"]["cpu"]


def test_a_write_that_fails_leaves_the_earlier_results_whole(tmp_path, monkeypatch):
    """Before: the JSON was written in place, so a disk filling up mid-write left half of it under the final name."""
    def half_then_full(self, text, *args, **kwargs):
        with open(self, "w") as file:
            file.write(text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    path = measured_twice(tmp_path, monkeypatch, half_then_full)
    earlier = path.read_text()
    with pytest.raises(Exception, match="space"):
        artifact_agreement.main(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--tag", "t"])
    assert path.read_text() == earlier and [p.name for p in path.parent.iterdir()] == [path.name]
