"""benchmarks/vs_plain_loop.py: --baseline really runs the other checkout's package."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.vs_plain_loop import _run  # noqa: E402


def test_a_baseline_checkout_runs_its_own_package_even_from_this_repositorys_root(tmp_path, monkeypatch):
    other = tmp_path / "before"
    (other / "dronseg_edge").mkdir(parents=True)
    (other / "dronseg_edge" / "__init__.py").write_text("")
    (other / "dronseg_edge" / "__main__.py").write_text("print('the baseline checkout')\n")
    monkeypatch.chdir(ROOT)  # where the benchmark is run from: `python -m` would find this checkout first
    assert os.path.isdir("dronseg_edge")
    ran = _run([sys.executable, "-m", "dronseg_edge"], other)
    assert ran["stdout"].strip() == "the baseline checkout" and ran["peak_mib"] > 0
