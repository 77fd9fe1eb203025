"""Image sizes. The CLI speaks W x H (``1280x720``, as video people write it); tensors are (H, W)."""

from __future__ import annotations

import re

from dronseg_edge.errors import DronsegError

_SIZE = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+)\s*$")


def parse_size(text: str | tuple[int, int], option: str = "--size") -> tuple[int, int]:
    """Parse ``'1280x720'`` (or a ``(width, height)`` pair, as the Python API takes sizes) into ``(width, height)``;
    raise DronsegError on anything else."""
    if isinstance(text, (tuple, list)):
        text = "x".join(map(str, text))
    match = _SIZE.match(str(text))
    if not match:
        raise DronsegError(f"{option} {text!r} is not a size: write it as WIDTHxHEIGHT, e.g. 1280x720")
    width, height = map(int, match.groups())
    if width < 16 or height < 16 or width > 16384 or height > 16384:
        raise DronsegError(f"{option} {text!r} is out of range: each side must be 16..16384 pixels")
    return width, height


def format_size(size: tuple[int, int]) -> str:
    """``(width, height)`` back to ``'WxH'``."""
    return f"{int(size[0])}x{int(size[1])}"
