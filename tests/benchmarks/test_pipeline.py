"""benchmarks/pipeline.py: its options, checked before anything runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.pipeline import parse_args  # noqa: E402

from dronseg_edge.errors import DronsegError  # noqa: E402


def test_no_frames_or_no_repeats_are_refused():
    """Before, with --vs-plain-loop: --frames 0 was a FileNotFoundError traceback, --repeats 0 a StatisticsError
    traceback after the untimed runs."""
    for args in (["--frames", "0"], ["--repeats", "0"], ["--quick", "--frames", "-1"]):
        with pytest.raises(DronsegError, match="take 1 or more"):
            parse_args(["--vs-plain-loop", *args])
    assert parse_args(["--vs-plain-loop", "--quick"]).repeats == 1
