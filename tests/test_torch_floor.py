"""The torch floor for unpickling .pt files, read from a version string (torch_floor.py; no torch needed)."""

from __future__ import annotations

import pytest

from dronseg_edge.torch_floor import SAFE_TORCH, unsafe_torch_reason


@pytest.mark.parametrize("version", ["2.8.0", "2.5.0a0+872d972e41.nv24.08", "2.9.1+cu128"])
def test_an_older_torch_gets_one_line_naming_the_floor(version):
    reason = unsafe_torch_reason(version, "checkpoint best.pt")
    floor = ".".join(map(str, SAFE_TORCH))
    assert reason.startswith(f"torch {version} cannot load checkpoint best.pt safely") and "\n" not in reason
    assert f"install torch >= {floor}" in reason and "GHSA-63cw-57p8-fm3p" in reason


@pytest.mark.parametrize("version", ["2.10.0", "2.14.1+cu130", "2.11.0a0+17a4bd1.nv26.02", "3.0.0"])
def test_the_floor_and_newer_load(version):
    assert unsafe_torch_reason(version, "checkpoint best.pt") is None
