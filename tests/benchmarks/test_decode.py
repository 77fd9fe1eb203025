"""benchmarks/decode.py: its clip sizes and codecs, checked before any clip is made."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.decode import parse_args, parse_sizes  # noqa: E402


def test_sizes_by_name_or_width_and_height():
    assert parse_sizes("1080p,4k,320x180") == {"1080p": (1920, 1080), "4k": (3840, 2160), "320x180": (320, 180)}


def test_a_bad_size_or_codec_is_a_usage_error(capsys):
    """Before: a ValueError traceback (--sizes 720) or a KeyError traceback (--codecs h265), the latter after
    the first clips were made."""
    for args, message in ((["--sizes", "720"], "--sizes '720' is not a size"), (["--codecs", "h264,h265"], "--codecs h265"),
                          (["--quick", "--codecs", "av1"], "--codecs av1")):
        with pytest.raises(SystemExit) as stop:
            parse_args(args)
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_load_average_before_the_run_is_recorded(tmp_path, monkeypatch):
    """Before: only the load average at the end, which counts the run's own decoding threads (the other benchmarks
    record the one before their runs too)."""
    pytest.importorskip("av")
    from benchmarks import decode
    from dronseg_edge.bench import system

    loads = iter([[0.5, 0.5, 0.5], [3.0, 1.0, 0.6]])  # before the run, after it
    monkeypatch.setattr(system, "load_average", lambda: next(loads))
    monkeypatch.setattr(decode, "make_clips", lambda args, sizes: ({}, {}))
    cpu = decode.run(parse_args(["--quick", "--work", str(tmp_path)]))["cpu"]
    assert cpu["load_average_start"] == [0.5, 0.5, 0.5] and cpu["load_average"] == [3.0, 1.0, 0.6]
