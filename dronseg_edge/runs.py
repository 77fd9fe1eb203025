"""Run folders: ``runs/<task>/exp``, ``exp2``, ``exp3``... so a new run never overwrites an earlier one."""

from __future__ import annotations

from pathlib import Path

from dronseg_edge.atomic import ensure_writable_dir


def next_run_dir(parent: Path | str, name: str = "exp") -> Path:
    """Create and return the first free ``parent/name``, ``parent/name2``, ... folder."""
    parent = ensure_writable_dir(Path(parent))
    index = 1
    while True:
        candidate = parent / (name if index == 1 else f"{name}{index}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            index += 1
