"""benchmarks/live_outputs.py: bad options are one line, before the model and the clip are made."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.live_outputs import parse_args  # noqa: E402
from dronseg_edge.errors import DronsegError  # noqa: E402


def test_no_frames_or_no_repeats_are_refused():
    """Before: --repeats 0 was a StatisticsError traceback after the warm-up run, --frames 0 a DronsegError
    traceback about the clip it had made empty."""
    for args in (["--repeats", "0"], ["--frames", "0"]):
        with pytest.raises(DronsegError, match="take 1 or more"):
            parse_args(args)
    assert parse_args(["--quick", "--repeats", "0"]).repeats == 1  # --quick sets its own


def test_a_bad_size_is_one_line(tmp_path):
    """Before: the DronsegError of the size check came out as a traceback."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "live_outputs.py"), "--size", "100", "--work",
                           str(tmp_path / "work"), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == "error: --size '100' is not a size: write it as WIDTHxHEIGHT, e.g. 1280x720\n"
    assert not list(tmp_path.iterdir())
