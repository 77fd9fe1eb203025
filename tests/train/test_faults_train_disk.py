"""A full or unwritable disk while training: one line, exit code 5, the last whole checkpoint kept,
and ``--resume`` finishing the run. Faults injected at the N-th write, and on a real small file system."""

import errno
import io
import os
import re

import pytest
import torch
from testkit import TINY_ARCH, TINY_SIZE, mount_tmpfs, run_cli

import dronseg_edge.checkpoint as checkpoint_module
import dronseg_edge.train.tracking as tracking_module
import dronseg_edge.train.plots as plots_module
from dronseg_edge.atomic import storage_failure
from dronseg_edge.checkpoint import load_checkpoint, save_checkpoint
from dronseg_edge.errors import RuntimeFailure
from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.fit import fit
from dronseg_edge.train.tracking import MetricsLog

pytestmark = pytest.mark.slow

ERRORS = {
    "ENOSPC": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    "EDQUOT": OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
    "EROFS": OSError(errno.EROFS, os.strerror(errno.EROFS)),
    "EACCES": PermissionError(errno.EACCES, os.strerror(errno.EACCES)),
}


class FillingFile(io.FileIO):
    """A file whose ``fail_at``-th write (1-based) and every later one raise ``error``: a disk filling up."""

    def __init__(self, path, mode, error: BaseException, fail_at: int = 1):
        super().__init__(path, mode.replace("b", ""))
        self.error, self.fail_at, self.writes = error, fail_at, 0

    def write(self, data):
        self.writes += 1
        if self.writes >= self.fail_at:
            raise self.error
        return super().write(data)


def fail_nth_open(monkeypatch, module, n: int, error: BaseException, fail_at_write: int = 1) -> list:
    """The ``n``-th file ``module`` opens fails at its ``fail_at_write``-th write (0: at the open itself)."""
    opened = []

    def fake_open(path, mode="r", *args, **kwargs):
        opened.append(path)
        if len(opened) == n:
            if fail_at_write == 0:
                raise error
            return FillingFile(path, mode, error, fail_at_write)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", fake_open, raising=False)
    return opened


def config(root, out, **overrides) -> TrainConfig:
    values = dict(data=str(root), out=str(out), model=TINY_ARCH, weights="none", size=TINY_SIZE, epochs=2, batch=2,
                  max_steps_per_epoch=1, val_fraction=0.1, lr=0.005, optimizer="adamw", device="cpu", workers=0, seed=0,
                  tensorboard=False, plots=False)
    values.update(overrides)
    return TrainConfig(**values)


def error_line(stderr: str) -> str:
    """The one ``error:`` line (progress bars share stderr), and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("name", list(ERRORS))
@pytest.mark.parametrize("fail_at_write", [0, 1, 3])
def test_a_failed_checkpoint_save_keeps_the_file_it_would_replace(tmp_path, monkeypatch, name, fail_at_write):
    path = tmp_path / "weights" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1})
    before = path.read_bytes()
    fail_nth_open(monkeypatch, checkpoint_module, 1, ERRORS[name], fail_at_write)
    with pytest.raises(RuntimeFailure) as caught:
        save_checkpoint(path, {"model": {"w": torch.zeros(10_000)}, "epoch": 2})
    message = str(caught.value)
    assert caught.value.exit_code == 5 and "\n" not in message
    assert message.startswith(f"cannot write {path}: {ERRORS[name].strerror} (") and " free): " in message
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["last.pt"]  # the partial temporary file is gone


def test_the_nth_save_failing_stops_the_run_and_resume_finishes_it(synth_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # One epoch of 2 steps, last.pt saved after step 1 too: saves are last.pt (step 1), best.pt, last.pt (epoch end).
    opened = fail_nth_open(monkeypatch, checkpoint_module, 3, ERRORS["ENOSPC"], fail_at_write=2)
    settings = dict(epochs=1, max_steps_per_epoch=2, save_every_steps=1, plots=True)
    with pytest.raises(RuntimeFailure, match=rf"^cannot write {re.escape(str(run / 'weights' / 'last.pt'))}: "
                                             r"No space left on device \(.+ free\): free some space"):
        fit(config(synth_root, run, **settings), log=lambda _m: None)
    assert len(opened) == 3
    monkeypatch.undo()
    assert sorted(os.listdir(run / "weights")) == ["best.pt", "last.pt"]
    kept = load_checkpoint(run / "weights" / "last.pt")
    assert (kept["epoch"], kept["step"], kept["epoch_progress"]["steps"]) == (0, 1, 1)  # the last one written whole

    # The resumed run finishes; then its plots meet a full disk: the line says the checkpoints are complete.
    def full_disk(_rows, path):
        raise storage_failure(ERRORS["ENOSPC"], path)

    monkeypatch.setattr(plots_module, "plot_curves", full_disk)
    messages = []
    with pytest.raises(RuntimeFailure, match=r"curves\.png: No space left on device .*\(training finished: .*last\.pt and "
                                             r".*best\.pt are complete, only the plots are missing\)$"):
        fit(TrainConfig(data=str(synth_root), device="cpu", workers=0), resume=run / "weights" / "last.pt",
            log=messages.append)
    assert any("resumed from" in m and "(+1 batches of epoch 1), step 1" in m for m in messages), messages
    final = load_checkpoint(run / "weights" / "last.pt")
    assert final["epoch"] == 1 and final["step"] == 2 and "epoch_progress" not in final
    assert [r["epoch"] for r in MetricsLog(run, tensorboard=False).rows] == [1]
    assert load_checkpoint(run / "weights" / "best.pt")["step"] == 2


def test_a_tensorboard_write_failure_warns_once_and_metrics_go_on(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    fail_nth_open(monkeypatch, tracking_module, 1, ERRORS["ENOSPC"], fail_at_write=3)  # header, epoch 1, then full
    warnings = []
    log = MetricsLog(tmp_path, tensorboard=True, warn=warnings.append)
    for epoch in (1, 2, 3):
        log.log({"epoch": epoch, "train_loss": 1.0 / epoch, "val_miou": 0.1 * epoch})
    log.close()
    assert len(warnings) == 1
    assert re.fullmatch(r"warning: TensorBoard logging stopped, training goes on \(cannot write .*events\.out\.tfevents"
                        r"[^ ]*: No space left on device \(.+ free\): .*\); metrics\.csv still gets every epoch",
                        warnings[0]), warnings[0]
    assert [r["epoch"] for r in MetricsLog(tmp_path, tensorboard=False).rows] == [1, 2, 3]
    event_file = next((tmp_path / "tensorboard").iterdir())
    scalars = {(v.tag, e.step): v.simple_value for e in LegacyEventFileLoader(str(event_file)).Load() for v in e.summary.value}
    assert scalars == {("train/loss", 1): pytest.approx(1.0), ("val/miou", 1): pytest.approx(0.1)}


def test_an_unwritable_tensorboard_folder_warns_at_the_start(tmp_path):
    (tmp_path / "tensorboard").write_text("a file where the folder should be")
    warnings = []
    log = MetricsLog(tmp_path, tensorboard=True, warn=warnings.append)
    log.log({"epoch": 1, "train_loss": 0.5})
    log.close()
    assert len(warnings) == 1 and "TensorBoard logging stopped" in warnings[0]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("1,")


def test_torch_save_on_a_real_full_disk_keeps_the_file_it_would_replace(tmp_path):
    with mount_tmpfs(tmp_path / "disk", size="3m") as disk:
        path = disk / "last.pt"
        save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1})
        before = path.read_bytes()
        with pytest.raises(RuntimeFailure, match=rf"^cannot write {re.escape(str(path))}: No space left on device "
                                                 r"\([0-9.]+ [kM]?B free\): free some space or choose another output folder$"):
            save_checkpoint(path, {"model": {"w": torch.zeros(1_000_000)}, "epoch": 2})  # 4 MB
        assert path.read_bytes() == before and os.listdir(disk) == ["last.pt"]


def test_train_on_a_real_full_disk_exits_5_with_one_line(synth_root, tmp_path, capsys):
    with mount_tmpfs(tmp_path / "disk", size="3m") as disk:
        run = disk / "run"
        code, stderr = run_cli(capsys, "train", "--data", synth_root, "--out", run, "--model", TINY_ARCH, "--weights",
                               "none", "--size", "96x64", "--epochs", 1, "--batch", 2, "--max-steps-per-epoch", 1,
                               "--val-fraction", 0.1, "--device", "cpu", "--workers", 0)
        assert code == 5
        assert re.fullmatch(rf"error: cannot write {re.escape(str(run / 'weights' / 'best.pt'))}: No space left on "
                            r"device \([0-9.]+ [kM]?B free\): free some space or choose another output folder", error_line(stderr))
        assert os.listdir(run / "weights") == []  # no half checkpoint, under any name
        assert (run / "metrics.csv").read_text().splitlines()[1].startswith("1,")  # what was written is whole


def test_ctrl_c_during_a_save_is_an_interruption_and_keeps_the_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1})
    before = path.read_bytes()
    fail_nth_open(monkeypatch, checkpoint_module, 1, KeyboardInterrupt(), fail_at_write=2)
    with pytest.raises(KeyboardInterrupt):  # not a "disk full" RuntimeFailure: torch wrapped it in a RuntimeError
        save_checkpoint(path, {"model": {"w": torch.zeros(10_000)}, "epoch": 2})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]
