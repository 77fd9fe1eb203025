"""End-to-end training on synthetic data: learning happens, runs resume exactly, DDP works."""

import csv
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from ddp_probe import launch, torchrun
from testkit import write_scenes

from dronseg_edge.checkpoint import load_checkpoint
from dronseg_edge.errors import DronsegError
from dronseg_edge.train import setup
from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.fit import _resumed_config, fit

pytestmark = pytest.mark.slow


def config(root, out, **overrides) -> TrainConfig:
    values = dict(data=str(root), out=str(out), model="lraspp_mobilenet_v3_large", weights="none", size=(96, 64),
                  epochs=3, batch=4, lr=0.005, optimizer="adamw", scheduler="onecycle", device="cpu", workers=0,
                  bn_momentum=0.1,
                  seed=0, tensorboard=False, plots=False)
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_training_raises_validation_dice(trained_run):
    # The suite's one trained model (tests/conftest.py: 10 epochs of the package's loop, its initial weights
    # validated as epoch 0): trained once for the whole suite, it shows the learning here too. It goes from
    # mDice 0 to 0.78 (2-core AMD EPYC, 2026-12-07): far above the margin, which rounding cannot bridge.
    rows = read_metrics(trained_run.run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(0, 11))
    start, final = float(rows[0]["val_mdice"]), float(rows[-1]["val_mdice"])
    assert final > start + 0.15, (start, final)
    assert float(rows[-1]["val_miou"]) > float(rows[0]["val_miou"])
    assert float(rows[-1]["train_loss"]) < float(rows[1]["train_loss"])
    # lr: the rate of each epoch's last step; the last row ends OneCycle at lr / div / final_div (it showed
    # the rate one step past the schedule's end, where torch's cosine rises again)
    cfg = TrainConfig.from_dict(json.loads((trained_run.run_dir / "config.json").read_text()))
    assert cfg.scheduler == "onecycle"
    assert float(rows[-1]["lr"]) == pytest.approx(cfg.lr / cfg.div_factor / cfg.final_div_factor, rel=1e-3)
    assert (trained_run.run_dir / "split.json").is_file()
    best = load_checkpoint(trained_run.best)
    assert best["split"]["val"] and set(best["split"]["val"]).isdisjoint(best["split"]["train"])
    assert best["best_metric"] == pytest.approx(max(float(r["val_miou"]) for r in rows[1:]), rel=1e-5)


def test_a_run_writes_its_plots_tensorboard_and_per_class_scores(synth_root, tmp_path):
    # What the learning run above leaves out (it trains for the other tests, without augmentation, plots or
    # TensorBoard): an augmented run of 2 one-step epochs, validated at the start, draws and logs all of it.
    cfg = config(synth_root, tmp_path / "run", epochs=2, max_steps_per_epoch=1, val_at_start=True, plots=True,
                 tensorboard=True)
    result = fit(cfg, log=lambda _m: None)
    rows = read_metrics(result.run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for name in ("background", "boat", "sky"):
        assert f"iou_{name}" in rows[-1] and f"dice_{name}" in rows[-1]
    for png in ("curves.png", "per_class.png", "confusion_matrix.png"):
        assert (result.run_dir / png).stat().st_size > 1000
    assert any((result.run_dir / "tensorboard").iterdir())
    assert (result.run_dir / "split.json").is_file()


def test_the_data_and_run_folders_are_recorded_as_absolute_paths(synth_root, tmp_path, monkeypatch):
    # `train --data data` recorded "data": eval, export and --resume from another folder read that folder's data;
    # `--out run` recorded "run", where a resumed run records its absolute folder
    monkeypatch.chdir(tmp_path)
    # and a run stopped there before its first checkpoint left its epoch 0 row (--val-at-start), which a new run kept
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("epoch,val_miou\n0,0.123\n")
    result = fit(config(os.path.relpath(synth_root, tmp_path), "run", epochs=1, max_steps_per_epoch=1), log=lambda _m: None)
    assert [row["epoch"] for row in read_metrics(result.run_dir)] == ["1"]
    recorded = json.loads((result.run_dir / "config.json").read_text())
    assert (recorded["data"], recorded["out"]) == (str(synth_root.resolve()), str((tmp_path / "run").resolve()))
    assert load_checkpoint(result.last)["config"]["data"] == str(synth_root.resolve())


def test_a_resume_of_an_older_version_s_run_reads_the_data_it_trained_on(tmp_path, monkeypatch):
    # Before 2026-12-07 --data and --out were recorded as typed: --resume from another folder trained on its data/
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere" / "data").mkdir(parents=True)
    last = tmp_path.resolve() / "project" / "run" / "weights" / "last.pt"
    ckpt = {"path": str(last), "optimizer": {}, "scheduler": {}, "epoch": 1, "step": 1, "config": {"data": "data", "out": "run"}}
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert _resumed_config(TrainConfig(), ckpt, last).data == str(tmp_path.resolve() / "project" / "data")


def test_best_val_loss_is_reported_as_the_loss(synth_root, tmp_path):
    # The score is the loss negated (higher is better); "done: best val_loss -2.83" showed that score
    said = []
    result = fit(config(synth_root, tmp_path / "run", epochs=2, best_metric="val_loss", max_steps_per_epoch=2),
                 log=said.append)
    lowest = min(float(r["val_loss"]) for r in read_metrics(result.run_dir))
    assert result.best_metric == pytest.approx(lowest, rel=1e-5) and lowest > 0
    assert any(line.startswith(f"done: best val_loss {lowest:.4f} ") for line in said), said[-1]


def _train_cmd(root, out, epochs, workers=0, max_steps=0):
    return [sys.executable, "-m", "dronseg_edge", "train", "--data", str(root), "--out", str(out),
            "--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--size", "96x64", "--epochs", str(epochs),
            "--batch", "4", "--lr", "0.005", "--optimizer", "adamw", "--bn-momentum", "0.1", "--device", "cpu", "--workers", str(workers),
            "--no-tensorboard", "--seed", "0", "--max-steps-per-epoch", str(max_steps)]


def test_resume_after_kill_continues_exactly(synth_root, tmp_path, monkeypatch):
    # 4 epochs of 2 steps (of the 7 batches): each epoch still shuffles and augments anew, in both workers.
    epochs, max_steps = 4, 2
    reference = fit(config(synth_root, tmp_path / "ref", epochs=epochs, max_steps_per_epoch=max_steps), log=lambda _m: None)

    run = tmp_path / "killed"
    # The killed and resumed runs load with 2 persistent workers, the reference in-process: the weights
    # still match, so neither the resume nor the worker count changes shuffling or augmentation. The
    # killed run forks its workers; the resumed one starts them by forkserver (Python 3.14's default on
    # Linux; macOS spawns), so what a worker is handed must pickle and seed itself the same way. The fork
    # server imports the package once (a fresh interpreter still), not each of the 4 workers on its own.
    multiprocessing.set_forkserver_preload(["__main__", "dronseg_edge.train.setup"])
    options = setup.loader_options
    monkeypatch.setattr(setup, "loader_options", lambda *a: {**options(*a), "multiprocessing_context": "forkserver"})
    proc = subprocess.Popen(_train_cmd(synth_root, run, epochs, workers=2, max_steps=max_steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "weights" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)["epoch"]
    assert 1 <= killed_at < epochs, "the run was not interrupted mid-way"

    resumed = fit(TrainConfig(data=str(synth_root), device="cpu", workers=2), resume=last, log=lambda _m: None)
    assert resumed.run_dir == run.resolve()
    final, ref = load_checkpoint(resumed.last), load_checkpoint(reference.last)
    assert final["epoch"] == epochs and final["step"] == ref["step"]
    assert [int(r["epoch"]) for r in read_metrics(run)] == list(range(1, epochs + 1))
    # Optimiser moments and the weights match an uninterrupted run of the same seed.
    assert final["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()
    first = next(iter(final["optimizer"]["state"]))
    torch.testing.assert_close(final["optimizer"]["state"][first]["exp_avg"], ref["optimizer"]["state"][first]["exp_avg"])
    for key, value in ref["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


class Interrupted(Exception):
    """Stands in for a kill right after a mid-epoch checkpoint was written."""


def test_resume_mid_epoch_from_a_step_checkpoint_matches_an_uninterrupted_run(synth_root, tmp_path, monkeypatch):
    import dronseg_edge.train.fit as fit_module

    settings = dict(epochs=3, batch=3, accumulate=3, save_every_steps=1)  # 8 batches: groups of 3, 3 and a partial 2
    reference = fit(config(synth_root, tmp_path / "ref", **settings), log=lambda _m: None)

    real_save = fit_module.save_checkpoint
    mid_epoch_saves = []

    def save_then_die(path, state):
        real_save(path, state)
        if "epoch_progress" in state:
            mid_epoch_saves.append(dict(state["epoch_progress"], epoch=state["epoch"], step=state["step"]))
            if state["step"] == 5:
                raise Interrupted

    monkeypatch.setattr(fit_module, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        fit(config(synth_root, tmp_path / "run", **settings), log=lambda _m: None)
    monkeypatch.setattr(fit_module, "save_checkpoint", real_save)
    # Steps 1-2 of each 3-step epoch are saved mid-epoch; step 3 ends the epoch (an ordinary save).
    assert [(s["epoch"], s["steps"], s["batches"], s["step"]) for s in mid_epoch_saves] == [
        (0, 1, 3, 1), (0, 2, 6, 2), (1, 1, 3, 4), (1, 2, 6, 5)]

    messages = []
    resumed = fit(TrainConfig(data=str(synth_root), device="cpu", workers=0), resume=tmp_path / "run" / "weights" / "last.pt",
                  log=messages.append)
    assert any("epoch 1/3 (+6 batches of epoch 2), step 5" in m for m in messages), messages
    final, ref = load_checkpoint(resumed.last), load_checkpoint(reference.last)
    assert final["epoch"] == 3 and final["step"] == ref["step"] == 9 and "epoch_progress" not in final
    for key, value in ref["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    rows, ref_rows = read_metrics(resumed.run_dir), read_metrics(reference.run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row, ref_row in zip(rows, ref_rows):  # epoch 2's loss joins its part before and after the interruption
        assert float(row["train_loss"]) == pytest.approx(float(ref_row["train_loss"]), rel=1e-4)


@pytest.fixture(scope="module")
def one_step_run(synth_root, tmp_path_factory):
    """A finished run of one epoch of one step, for the tests that resume it (read it, never change it)."""
    return fit(config(synth_root, tmp_path_factory.mktemp("one_step") / "run", epochs=1, max_steps_per_epoch=1),
               log=lambda _m: None)


def test_a_checkpoint_outside_a_weights_folder_is_not_resumed_into_the_folder_above(one_step_run, tmp_path):
    """`train --resume ~/Downloads/last.pt` (a copied checkpoint) made ~ the run folder: its config.json replaced,
    its metrics.csv read as the run's (a KeyError traceback), weights/ and split.json written there."""
    copy = tmp_path / "Downloads" / "last.pt"
    copy.parent.mkdir()
    shutil.copy2(one_step_run.last, copy)
    (tmp_path / "config.json").write_text("the user's own")
    with pytest.raises(DronsegError, match=f"{copy} is not in a run's weights/ folder.* above its own \\({tmp_path}\\)"):
        fit(TrainConfig(device="cpu", workers=0), resume=copy, log=lambda _m: None)
    assert (tmp_path / "config.json").read_text() == "the user's own" and not (tmp_path / "weights").exists()


def test_one_image_batches_on_a_1x1_deepest_feature_map_are_refused_before_the_data_and_run_folder(tmp_path):
    """`train --model lraspp_mobilenet_v3_large --size 16x16 --batch 1` was refused only after the run folder
    (config.json, split.json) was made; it needs no data (the data folder here does not exist)."""
    cfg = TrainConfig(data=str(tmp_path / "none"), model="lraspp_mobilenet_v3_large", weights="none", size=(16, 16),
                      batch=1, device="cpu", workers=0, out=str(tmp_path / "run"))
    with pytest.raises(DronsegError, match=r"^--size 16x16 leaves lraspp_mobilenet_v3_large a 1x1 deepest feature map "
                                           r"\(stride 16\).* \(32x16\), or --batch 2 or more$"):
        fit(cfg)
    assert not (tmp_path / "run").exists()


def test_a_resume_refuses_options_of_the_run_it_would_ignore(one_step_run):
    """fit(TrainConfig(epochs=3), resume=last) trained the run's own epochs, without a word."""
    run = one_step_run
    saved = run.last.stat().st_mtime_ns
    with pytest.raises(DronsegError, match="^epochs, seed: the resumed run's own .*data, device, workers and max_pixels"):
        fit(TrainConfig(epochs=3, seed=1, device="cpu", workers=0), resume=run.last, log=lambda _m: None)
    assert run.last.stat().st_mtime_ns == saved


def test_ddp_two_gloo_processes(synth_root, tmp_path):
    run = tmp_path / "ddp"
    cmd = torchrun("-m", "dronseg_edge", *_train_cmd(synth_root, run, 2)[3:])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es)" in proc.stdout
    assert proc.stdout.count("epoch 2/2") == 1  # only rank 0 prints (and writes)
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    # Validation metrics are reduced over both ranks: every validation image counted once.
    assert ckpt["metrics"]["images"] == len(ckpt["split"]["val"])
    assert not any(k.startswith("module.") for k in ckpt["model"])


def test_ddp_ranks_stay_identical_after_unfreezing(synth_root, tmp_path):
    epochs = launch("unfreeze", tmp_path / "seen.json", str(synth_root), str(tmp_path / "run"))
    frozen, unfrozen = epochs
    assert not frozen["requires_grad"] and unfrozen["requires_grad"]
    assert unfrozen["value"] != frozen["value"]  # the unfrozen stem is optimised...
    assert frozen["rank_gap"] == unfrozen["rank_gap"] == 0.0  # ...with gradients averaged over the ranks


def test_accumulation_aux_head_freezing_and_bf16(tmp_path):
    """Options that change the step: 3-batch accumulation (last group partial), the DeepLabV3 aux head,
    frozen-then-unfrozen backbone stages, class weights, Tversky, poly schedule, SGD, bf16 autocast."""
    write_scenes(tmp_path / "data", count=10, frames=0)  # 8 train images: 4 batches of 2, stepped as 3 and a partial 1
    cfg = config(tmp_path / "data", tmp_path / "opts", model="deeplabv3_mobilenet_v3_large", epochs=2, batch=2,
                 accumulate=3, aux_loss=True, freeze_stages=2, unfreeze_epoch=1, class_weights="inverse_sqrt",
                 loss="tversky", scheduler="poly", optimizer="sgd", lr=0.01, amp="bf16", grad_clip=1.0,
                 max_steps_per_epoch=0)
    result = fit(cfg, log=lambda _m: None)
    ckpt = load_checkpoint(result.last)
    batches = -(-len(ckpt["split"]["train"]) // 2)  # DataLoader batches per epoch (no drop_last at batch 2)
    if len(ckpt["split"]["train"]) % 2 == 1:
        batches -= 1  # a trailing batch of one image is dropped (BatchNorm)
    assert ckpt["step"] == 2 * -(-batches // 3)  # the partial last group is stepped too
    assert ckpt["scheduler"]["last_epoch"] == ckpt["step"]
    assert ckpt["aux_loss"] is True and any(k.startswith("aux_classifier.") for k in ckpt["model"])
    rows = read_metrics(result.run_dir)
    assert all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows)  # finite, not NaN
    # The first two backbone stages were frozen in epoch 1 and trained from epoch 2 on: their weights moved.
    from dronseg_edge.checkpoint import model_from_checkpoint
    from dronseg_edge.models import backbone_stages, build_model

    torch.manual_seed(0)
    trained = model_from_checkpoint(ckpt)
    stem = backbone_stages(trained)[0][0]
    initial = backbone_stages(build_model("deeplabv3_mobilenet_v3_large", weights="none", aux_loss=True))[0][0]
    assert any(not torch.equal(a, b) for a, b in zip(stem.state_dict().values(), initial.state_dict().values()))


@pytest.mark.parametrize("save_every_steps", [0, 1])
def test_a_diverged_run_stops_before_its_nan_weights_are_saved(synth_root, tmp_path, save_every_steps):
    """--lr 1e6 trained to NaN weights (every pixel one class), saved them, and `train` said "done" (exit 0).

    At 1e6 the weights turned NaN only after about 5 steps (of 7 in epoch 1), a step that rounding may move;
    at 1e15 the first AdamW step moves the weights by about lr / 25 whatever the rounding, and step 2 overflows."""
    cfg = config(synth_root, tmp_path / "run", epochs=2, lr=1e15, max_steps_per_epoch=3, save_every_steps=save_every_steps)
    with pytest.raises(DronsegError, match=r"the training diverged: after (epoch 1 \(train_loss|step \d).*holds NaN or Inf; "
                                           r"retrain with a lower --lr") as info:
        fit(cfg, log=lambda _m: None)
    assert info.value.exit_code == 2
    for saved in (tmp_path / "run" / "weights").glob("*.pt"):  # none, or weights from before the divergence
        assert load_checkpoint(saved)["model"]


def test_a_finished_run_resumed_after_its_plots_were_cut_draws_them_all(synth_root, tmp_path, monkeypatch):
    # Ctrl-C (or a full disk) while the plots were drawn after the last epoch: --resume said "done" and wrote
    # curves.png only; per_class.png and confusion_matrix.png need the last validation, which it had not run
    from dronseg_edge.train import plots

    def cut(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_curves", cut)
    with pytest.raises(KeyboardInterrupt):
        fit(config(synth_root, tmp_path / "run", epochs=1, max_steps_per_epoch=1, plots=True), log=lambda _m: None)
    monkeypatch.undo()
    fit(TrainConfig(data=str(synth_root), device="cpu", workers=0), resume=tmp_path / "run" / "weights" / "last.pt",
        log=lambda _m: None)
    for png in ("curves.png", "per_class.png", "confusion_matrix.png"):
        assert (tmp_path / "run" / png).stat().st_size > 1000, png
