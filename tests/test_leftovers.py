"""leftovers.py: a folder claimed by a live run keeps its hidden files; a dead run's leftovers are removed."""

import os
import re
import subprocess
import sys

import pytest

from dronseg_edge import leftovers
from dronseg_edge.leftovers import LOCK_PREFIX, RANDOM, FolderClaim

pytestmark = pytest.mark.skipif(leftovers.fcntl is None, reason="flock-based claims need fcntl (POSIX)")

PATTERNS = ((".", re.compile(rf"^\.export-{RANDOM}$")), ("weights", re.compile(rf"^\.last\.pt\.{RANDOM}\.tmp$")))


def _litter(folder):
    (folder / ".export-abcd1234").mkdir(parents=True)
    (folder / ".export-abcd1234" / "raw.onnx").write_bytes(b"half")
    (folder / "weights").mkdir()
    (folder / "weights" / ".last.pt.zz99zz99.tmp").write_bytes(b"half")
    # Not ours: other names, or our names in another place.
    for name in (".bashrc", "notes.txt", ".export-short", "weights/.export-abcd1234x"):
        (folder / name).write_text("keep")


def test_a_dead_runs_leftovers_and_lock_are_removed(tmp_path):
    _litter(tmp_path)
    dead = tmp_path / f"{LOCK_PREFIX}999999-abcdefgh"  # a lock file nobody holds: its run died
    dead.write_text("")
    with FolderClaim(tmp_path, PATTERNS) as claim:
        assert sorted(p.name for p in claim.removed) == [".export-abcd1234", ".last.pt.zz99zz99.tmp"]
        assert not dead.exists()
        assert claim.lock.parent == tmp_path and claim.lock.exists()
        assert "removed 2 leftovers of an interrupted export in" in claim.note("export")
    assert not claim.lock.exists()  # released
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bashrc", ".export-short", "notes.txt", "weights"]
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [".export-abcd1234x"]


def test_a_live_claim_keeps_everything(tmp_path):
    _litter(tmp_path)
    # Another process holds the folder: its flock is what says it is alive.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from dronseg_edge.leftovers import FolderClaim\n"
        f"claim = FolderClaim({str(tmp_path)!r}, ())\n"
        "print('held', flush=True); sys.stdin.readline()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with FolderClaim(tmp_path, PATTERNS) as claim:
            assert claim.removed == [] and claim.note("export") is None
        assert (tmp_path / ".export-abcd1234" / "raw.onnx").exists()
        assert (tmp_path / "weights" / ".last.pt.zz99zz99.tmp").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock, its lock file stays behind
        holder.wait()
    with FolderClaim(tmp_path, PATTERNS) as claim:
        assert len(claim.removed) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dronseg-")]


def test_a_claim_in_this_process_counts_as_live_too(tmp_path):
    _litter(tmp_path)
    with FolderClaim(tmp_path, PATTERNS):
        assert FolderClaim(tmp_path, PATTERNS).removed == []  # flock conflicts across open files, even here


def test_an_unwritable_folder_is_worked_in_unclaimed(tmp_path, monkeypatch):
    _litter(tmp_path)

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(leftovers.tempfile, "mkstemp", refuse)
    claim = FolderClaim(tmp_path, PATTERNS)
    assert claim.lock is None and claim.removed == []  # unclaimed: nothing is removed, nothing is raised
    claim.release()
    assert (tmp_path / ".export-abcd1234").exists()
    assert os.listdir(tmp_path / "weights") != []
