"""leftovers.py: only a dead dronseg-edge run's own working files are removed; a live run's, and every
file another program made (however much its name looks like ours), stay."""

import os
import re
import subprocess
import sys
import time

import pytest

from dronseg_edge import leftovers
from dronseg_edge.errors import DronsegError
from dronseg_edge.leftovers import LOCK_PREFIX, RANDOM, TAGGED, TOKEN, FolderClaim, working_prefix

pytestmark = pytest.mark.skipif(leftovers.fcntl is None, reason="flock-based claims need fcntl (POSIX)")

PATTERNS = ((".", re.compile(rf"^\.export\.{TAGGED}\.{RANDOM}$")),
            ("weights", re.compile(rf"^\.last\.pt\.{TAGGED}\.{RANDOM}\.tmp$")))
DEAD = "0badc0de"  # the token of a run that died


def _litter(folder, token=DEAD):
    """What a killed run with ``token`` left, and files that are not ours."""
    (folder / f".export.dronseg-{token}.abcd1234").mkdir(parents=True)
    (folder / f".export.dronseg-{token}.abcd1234" / "raw.onnx").write_bytes(b"half")
    (folder / "weights").mkdir(exist_ok=True)
    (folder / "weights" / f".last.pt.dronseg-{token}.zz99zz99.tmp").write_bytes(b"half")
    # Not ours: other names, our names without the tag, or with a token no dead claim here carries.
    for name in (".bashrc", "notes.txt", ".export-abcd1234", ".export.dronseg-feedf00d.abcd1234",
                 "weights/.last.pt.zz99zz99.tmp"):
        (folder / name).write_text("keep")


def _dead_lock(folder, token=DEAD):
    lock = folder / f"{LOCK_PREFIX}{token}-999999-abcdefgh"  # a lock file nobody holds: its run died
    lock.write_text("")
    return lock


def test_a_dead_runs_leftovers_and_lock_are_removed_and_foreign_files_kept(tmp_path):
    _litter(tmp_path)
    dead = _dead_lock(tmp_path)
    with FolderClaim(tmp_path, PATTERNS) as claim:
        assert sorted(p.name for p in claim.removed) == [f".export.dronseg-{DEAD}.abcd1234", f".last.pt.dronseg-{DEAD}.zz99zz99.tmp"]
        assert not dead.exists()
        assert claim.lock.parent == tmp_path and claim.lock.name.startswith(f"{LOCK_PREFIX}{TOKEN}-")
        assert "removed 2 leftovers of an interrupted export in" in claim.note("export")
    assert not claim.lock.exists()  # released
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bashrc", ".export-abcd1234", ".export.dronseg-feedf00d.abcd1234",
                                                          "notes.txt", "weights"]
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [".last.pt.zz99zz99.tmp"]


def test_without_a_dead_claim_nothing_is_removed(tmp_path):
    """Leftover-shaped names with our tag, but no lock file of a dead run vouching for them: kept."""
    _litter(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with FolderClaim(tmp_path, PATTERNS) as claim:
        assert claim.removed == [] and claim.note("export") is None
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_a_dead_lock_stays_while_a_file_of_its_run_is_left(tmp_path):
    """Another command's patterns (a training run's) leave the export's leftovers to the next export."""
    _litter(tmp_path)
    dead = _dead_lock(tmp_path)
    with FolderClaim(tmp_path, PATTERNS[1:]) as claim:
        assert [p.name for p in claim.removed] == [f".last.pt.dronseg-{DEAD}.zz99zz99.tmp"]
    assert dead.exists()  # still vouches for the .export.* folder
    with FolderClaim(tmp_path, PATTERNS) as claim:
        assert [p.name for p in claim.removed] == [f".export.dronseg-{DEAD}.abcd1234"]
    assert not dead.exists()


def test_a_live_claim_keeps_its_files_while_a_dead_ones_are_removed(tmp_path):
    _litter(tmp_path)
    _dead_lock(tmp_path)
    # Another process holds the folder (its flock is what says it is alive) and works under its own token.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from dronseg_edge.leftovers import FolderClaim, TOKEN\n"
        f"claim = FolderClaim({str(tmp_path)!r}, ())\n"
        "print(TOKEN, flush=True); sys.stdin.readline()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live = holder.stdout.readline().strip()
        live_file = tmp_path / "weights" / f".last.pt.dronseg-{live}.k2j4h5g6.tmp"
        live_file.write_bytes(b"being written")
        with FolderClaim(tmp_path, PATTERNS) as claim:
            assert len(claim.removed) == 2  # the dead run's
        assert live_file.exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock, its lock file stays behind
        holder.wait()
    with FolderClaim(tmp_path, PATTERNS) as claim:
        assert [p.name for p in claim.removed] == [live_file.name]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dronseg-")]


def test_an_unlocked_claim_file_is_live_for_a_minute_and_a_tokenless_lock_goes_at_once(tmp_path):
    """A run killed between making its claim file and locking it: the file counts as live (its pid's) for
    _CLAIM_GRACE_S, then as a dead claim vouching for its token's files. An older version's lock file (no token) goes."""
    claim_file = tmp_path / f".dronseg-claim-{DEAD}-{os.getpid()}-abcdefgh"
    claim_file.write_text("")
    tokenless = tmp_path / f"{LOCK_PREFIX}999999-abcdefgh"
    tokenless.write_text("")
    _litter(tmp_path)
    with pytest.raises(DronsegError, match=f"pid {os.getpid()}\\): wait"):
        FolderClaim(tmp_path, PATTERNS, alone="wait")
    assert not tokenless.exists() and claim_file.exists()
    os.utime(claim_file, (time.time() - 2 * leftovers._CLAIM_GRACE_S,) * 2)
    with FolderClaim(tmp_path, PATTERNS, alone="wait") as claim:
        assert len(claim.removed) == 2
    assert not claim_file.exists()


def test_a_claim_in_this_process_counts_as_live_too(tmp_path):
    with FolderClaim(tmp_path, PATTERNS):
        mine = tmp_path / "weights" / f"{working_prefix('last.pt')}k2j4h5g6.tmp"
        mine.parent.mkdir()
        mine.write_bytes(b"being written")
        assert FolderClaim(tmp_path, PATTERNS).removed == []
    assert mine.exists()


def test_a_pattern_without_the_token_is_refused():
    with pytest.raises(ValueError, match="no token group"):
        FolderClaim(".", ((".", re.compile(rf"^\.export-{RANDOM}$")),))


def test_an_unwritable_folder_is_worked_in_unclaimed(tmp_path, monkeypatch):
    _litter(tmp_path)
    _dead_lock(tmp_path)

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(leftovers.tempfile, "mkstemp", refuse)
    claim = FolderClaim(tmp_path, PATTERNS)
    assert claim.lock is None and claim.removed == []  # unclaimed: nothing is removed, nothing is raised
    claim.release()
    assert (tmp_path / f".export.dronseg-{DEAD}.abcd1234").exists()
    assert len(os.listdir(tmp_path / "weights")) == 2
