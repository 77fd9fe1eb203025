"""``train`` killed at several points (SIGINT mid-epoch, SIGKILL mid-save): nothing under a final name is
partial, and ``--resume`` finishes the run (removing the hidden temporary file a killed save left)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from testkit import TINY_ARCH

from dronseg_edge.checkpoint import load_checkpoint
from dronseg_edge.cli import main
from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.fit import fit

pytestmark = pytest.mark.slow

EPOCHS = 4  # room after epoch 1 for the interrupt to land mid-run even on a fast, idle machine


def _hidden(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def _wait_for(condition, what: str, alive=lambda: True, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert alive(), f"train exited before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.002)


def test_train_interrupted_then_killed_mid_save_resumes_to_the_end(synth_root, tmp_path, capsys, request):
    run = tmp_path / "run"
    weights = run / "weights"
    last = weights / "last.pt"

    # 1. Ctrl-C (a real SIGINT, to this process) once epoch 1 is saved: "interrupted", exit 130, no temporary file.
    def interrupt_after_epoch_1():
        try:
            _wait_for(last.exists, "weights/last.pt")
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    # Python's own Ctrl-C handler, whatever an earlier test in this process may have left installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    watcher = threading.Thread(target=interrupt_after_epoch_1, daemon=True)
    watcher.start()
    with pytest.raises(SystemExit) as stopped:
        main([str(a) for a in ["train", "--data", synth_root, "--out", run, "--model", TINY_ARCH, "--weights", "none",
                               "--size", "96x64", "--epochs", EPOCHS, "--batch", 2, "--max-steps-per-epoch", 1,
                               "--val-fraction", 0.1, "--optimizer", "adamw", "--device", "cpu", "--workers", 0,
                               "--no-tensorboard"]])
    watcher.join()
    assert stopped.value.code == 130
    assert capsys.readouterr().err.rstrip().endswith("interrupted")
    assert _hidden(weights) == []
    assert 1 <= load_checkpoint(last)["epoch"] < EPOCHS  # stopped mid-run, the last epoch saved whole

    # 2. --resume in a process killed (SIGKILL) while it writes a checkpoint: its hidden temporary file stays behind.
    with open(tmp_path / "resume.log", "w") as log:  # a file: tqdm writes to stderr, and an unread pipe would block
        proc = subprocess.Popen([sys.executable, "-m", "dronseg_edge", "train", "--data", str(synth_root),
                                 "--resume", str(last), "--device", "cpu", "--workers", "0"],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        _wait_for(lambda: _hidden(weights), "checkpoint being written", alive=lambda: proc.poll() is None)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    left = _hidden(weights)
    assert all(name.startswith((".last.pt.", ".best.pt.")) and name.endswith(".tmp") for name in left), left
    assert load_checkpoint(last)["epoch"] >= 1  # whole, never half a file (load_checkpoint reads it all)

    # 3. --resume again: it removes the dead run's leftovers and finishes the run.
    messages = []
    result = fit(TrainConfig(data=str(synth_root), device="cpu", workers=0), resume=last, log=messages.append)
    assert _hidden(weights) == []
    if left:  # the kill landed mid-save (nearly always: the save is what it waited for)
        assert any(m.startswith("removed 1 leftover of an interrupted run") for m in messages), messages
    assert load_checkpoint(result.last)["epoch"] == EPOCHS
    assert [int(r["epoch"]) for r in result.history] == list(range(1, EPOCHS + 1))
    assert not [name for name in os.listdir(run) if name.startswith(".")]  # no lock file of a live run either
