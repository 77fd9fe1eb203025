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
