"""The torch floor for unpickling .pt files, read from a version string (torch_floor.py; no torch needed), and
what torch_load refuses before torch reads a file."""

from __future__ import annotations

import zipfile

import pytest

from dronseg_edge.errors import DronsegError
from dronseg_edge.torch_floor import SAFE_TORCH, torch_load, unsafe_torch_reason


@pytest.mark.parametrize("version", ["2.8.0", "2.5.0a0+872d972e41.nv24.08", "2.9.1+cu128"])
def test_an_older_torch_gets_one_line_naming_the_floor(version):
    reason = unsafe_torch_reason(version, "checkpoint best.pt")
    floor = ".".join(map(str, SAFE_TORCH))
    assert reason.startswith(f"torch {version} cannot load checkpoint best.pt safely") and "\n" not in reason
    assert f"install torch >= {floor}" in reason and "GHSA-63cw-57p8-fm3p" in reason


@pytest.mark.parametrize("version", ["2.10.0", "2.14.1+cu130", "2.11.0a0+17a4bd1.nv26.02", "3.0.0"])
def test_the_floor_and_newer_load(version):
    assert unsafe_torch_reason(version, "checkpoint best.pt") is None


def test_a_zip_bomb_is_refused_before_torch_unpacks_it(tmp_path, monkeypatch):
    """A 2 MB .pt of deflated zeros took infer, eval or train --weights to 2.8 GB before torch refused it."""
    torch = pytest.importorskip("torch")
    bomb = tmp_path / "evil.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("evil/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("evil/data/0", bytes(64 << 20))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was given the file"))
    with pytest.raises(DronsegError) as error:
        torch_load(bomb, f"--weights {bomb}", "missing", ": pass a state dict")
    assert str(error.value) == (f"--weights {bomb} cannot be read (its records unpack to 67.1 MB from a 0.1 MB file: "
                                "a zip bomb, or a file packed by another tool): pass a state dict")
