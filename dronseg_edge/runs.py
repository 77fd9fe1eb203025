"""Run folders: ``runs/<task>/exp``, ``exp2``, ``exp3``... so a new run never overwrites an earlier one."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

from dronseg_edge.atomic import ensure_writable_dir

TRAIN_RUNS = Path("runs/train")  # train's run folders without --out


def next_run_dir(parent: Path | str, name: str = "exp") -> Path:
    """Create and return the first free ``parent/name``, ``parent/name2``, ... folder."""
    parent = ensure_writable_dir(Path(parent))
    for index in itertools.count(1):
        candidate = parent / (name if index == 1 else f"{name}{index}")
        with contextlib.suppress(FileExistsError):
            candidate.mkdir()
            return candidate
