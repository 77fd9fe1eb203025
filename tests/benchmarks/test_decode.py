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
