"""benchmarks/tiling.py: its overlaps, checked before the scenes are rendered and the model trained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.tiling import main  # noqa: E402
from dronseg_edge.errors import DronsegError  # noqa: E402


def test_bad_overlaps_are_refused_before_any_work(tmp_path):
    """Before: --overlaps x was a ValueError traceback; --overlaps 0.9 rendered the scenes and trained the model
    (minutes) before Segmenter refused "--tile-overlap 0.9", an option this script does not have."""
    for bad in ("x", "0.9", "0,-0.1", "nan"):
        with pytest.raises(DronsegError, match=f"--overlaps {bad}: give overlaps from 0 to 0.75"):
            main(["--overlaps", bad, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    assert not list(tmp_path.iterdir())


def test_an_onnx_model_records_onnx_runtime_threads_not_torch_threads(tmp_path, monkeypatch, capsys):
    """Before: with an ONNX --model the system line (and the .md) said "torch uses N threads" and the JSON recorded
    torch_threads N, though ONNX Runtime ran the model on its own pool (its default, one per core)."""
    import json

    import cv2
    import numpy as np
    import torch

    from benchmarks import tiling

    scenes = tmp_path / "scenes"
    for folder in ("imgs/imgs", "masks/masks"):
        (scenes / folder).mkdir(parents=True)
    cv2.imwrite(str(scenes / "imgs/imgs/a.jpg"), np.zeros((16, 16, 3), np.uint8))
    cv2.imwrite(str(scenes / "masks/masks/a.png"), np.zeros((16, 16), np.uint8))
    (scenes / "train.csv").write_text("ImageID\na\n")
    scored = {"iou": dict.fromkeys(tiling.CLASS_NAMES, 0.5), "miou_present": 0.5, "small_mean": 0.5, "ms_per_frame": 1.0,
              "windows": None}
    monkeypatch.setattr(tiling, "render_scenes", lambda *args: scenes)
    monkeypatch.setattr(tiling, "score", lambda *args, **options: scored)
    before = torch.get_num_threads()
    try:
        tiling.main(["--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "out"), "--tag", "t"])
    finally:
        torch.set_num_threads(before)  # main sets one per core
    doc = json.loads(next((tmp_path / "out").glob("tiling-cpu-*-t.json")).read_text())
    assert doc["settings"]["torch_threads"] is None is doc["system"]["cpu"]["torch_threads"]
    assert doc["settings"]["onnxruntime_intra_op"] == "onnxruntime default (one per core)"
    assert "torch uses" not in capsys.readouterr().out + next((tmp_path / "out").glob("*.md")).read_text()
