"""atomic.py: a write lands whole under its final name or not at all, and leaves no temporary file,
whenever an interrupt arrives."""

import os

import pytest

from dronseg_edge import atomic


def test_an_interrupt_right_after_the_temporary_file_exists_leaves_nothing(tmp_path, monkeypatch):
    """SIGTERM becomes KeyboardInterrupt at any bytecode: here just after the temporary file was made
    (before, the file was made by mkstemp ahead of the try that removes it: a synth run under load
    left one behind)."""
    real_close = os.close

    def close_then_interrupt(fd):
        real_close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text_atomic(tmp_path / "a.txt", "text")
    assert list(tmp_path.iterdir()) == []


def test_a_write_lands_under_its_final_name_with_ordinary_permissions(tmp_path):
    path = atomic.write_text_atomic(tmp_path / "b.txt", "text")
    assert path.read_text() == "text" and [p.name for p in tmp_path.iterdir()] == ["b.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
