"""train/setup: what the loaders take from the global RNG (exact resume depends on it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dronseg_edge.data.augment import AugmentConfig
from dronseg_edge.errors import DronsegError
from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.distributed import DistContext
from dronseg_edge.train.setup import build_loaders, prepare_data, prepare_model


def test_starting_the_loaders_workers_leaves_the_global_rng_alone(synth_root, tmp_path):
    # With persistent workers each loader draws its base seed once per run: from the global RNG, a resumed
    # run would draw once more than an uninterrupted one, and dropout on the CPU would then differ.
    cfg = TrainConfig(data=str(synth_root), out=str(tmp_path / "run"), model="lraspp_mobilenet_v3_large",
                      weights="none", size=(96, 64), batch=4, device="cpu", workers=1, seed=0, tensorboard=False,
                      plots=False)
    loaders = build_loaders(cfg, prepare_data(cfg, None, lambda _m: None), DistContext())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for loader in (loaders.train, loaders.val):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_the_training_size_is_checked_when_the_config_is_made(tmp_path):
    # (0, 64) was OpenCV's resize assertion, (96,) and "96x64" TypeErrors, each after the run folder was made
    for size in ((0, 64), (96,)):
        with pytest.raises(DronsegError, match="--size '.*' is"):
            TrainConfig(data=str(tmp_path), size=size).validate()
    assert TrainConfig(data=str(tmp_path), size="96x64").validate().to_dict()["size"] == [96, 64]


@pytest.mark.parametrize("option, value, message", [
    ("momentum", -0.5, "--momentum -0.5: must be 0 or more and below 1"),
    ("div_factor", 0.0, "--div-factor 0.0: must be positive"),
    ("final_div_factor", 0.0, "--final-div-factor 0.0: must be positive"),
    ("poly_power", -1.0, "--poly-power -1.0: must be 0 or more"),
    ("weight_decay", -1e-4, "--weight-decay -0.0001: must be 0 or more"),
    ("focal_gamma", -1.0, "focal gamma=-1.0 is out of range"),
    ("label_smoothing", 1.0, "label_smoothing=1.0 is out of range"),
    # inf passed every range: --lr inf trained to NaN with exit 0; --seed -1 was scikit-learn's traceback
    ("lr", float("inf"), "--lr inf: must be a finite number"),
    ("focal_alpha", float("inf"), "--focal-alpha inf: must be a finite number"),
    ("seed", -1, "--seed -1 must be a whole number, at least 0"),
    ("seed", 2**32, "--seed 4294967296: must be 0..4294967295"),
    ("val_every", 0, "val_every 0 must be a whole number, at least 1"),
    ("epochs", 2.5, "--epochs 2.5 must be a whole number"),  # range()'s TypeError once the run folder existed
    ("batch", 2.5, "--batch 2.5 must be a whole number"),  # the DataLoader's ValueError, the same  # 0 (as mosaic_every=0 is "never"): ZeroDivisionError after epoch 1
    ("epochs", "2", "--epochs '2' must be a whole number"),  # "2" >= 1: a TypeError traceback
    ("seed", "2", "--seed '2' must be a whole number"),
    ("workers", True, "--workers True must be a whole number"),  # was taken as 1, as whole() refuses it elsewhere
    ("mosaic_every", -1, "--mosaic-every -1 must be a whole number, at least 0"),
    ("lr", "0.1", "--lr '0.1' must be a number"),  # text where a float belongs: a TypeError ('>' str and int)
    ("bn_momentum", "x", "--bn-momentum 'x' must be a number"),
    ("lr", None, "--lr None must be a number"),
    ("focal_alpha", [1], "--focal-alpha [1] must be a number"),  # was taken
    ("lr", True, "--lr True must be a number"),  # was taken as 1.0
])
def test_out_of_range_settings_are_refused_when_the_config_is_made(tmp_path, option, value, message):
    # Before: a traceback once the run folder existed (momentum, div factors, loss settings), a crash at
    # the last step (poly power), or silently taken (weight decay).
    with pytest.raises(DronsegError, match=re.escape(message)):
        TrainConfig(data=str(tmp_path), **{option: value}).validate()


def test_numpy_numbers_become_python_numbers_a_checkpoint_can_hold(tmp_path):
    # fit(TrainConfig(lr=np.float64(0.01))) (a sweep over np.logspace) trained, then no checkpoint it wrote would load:
    # weights_only refuses numpy scalars ("it is damaged or not a checkpoint written by `dronseg-edge train`")
    cfg = TrainConfig(data=str(tmp_path), epochs=np.int64(2), lr=np.float64(0.01), momentum=np.float32(0.5),
                      augment=AugmentConfig(hflip=np.float64(0.25))).validate()
    torch.save(cfg.to_dict(), tmp_path / "config.pt")
    loaded = torch.load(tmp_path / "config.pt", weights_only=True)
    assert (loaded["epochs"], loaded["lr"], loaded["momentum"], loaded["augment"]["hflip"]) == (2, 0.01, 0.5, 0.25)


@pytest.mark.parametrize("option, value", [("hflip", 1.5), ("shift", -0.1), ("blur_p", 2.0), ("noise_p", -1.0),
                                           ("scale", -0.2), ("rotate", -5.0), ("brightness", -0.1),
                                           ("rotate", float("inf")), ("scale", float("nan"))])  # inf: the loader crashed
def test_out_of_range_augmentation_is_refused(tmp_path, option, value):
    with pytest.raises(DronsegError, match=f"{value}: must be"):
        TrainConfig(data=str(tmp_path), augment=AugmentConfig(**{option: value})).validate()


@pytest.mark.parametrize("scheduler", ["onecycle", "poly"])
def test_a_resume_that_would_step_another_schedule_is_refused(tmp_path, scheduler):
    # A 2-process run resumed as 1 makes twice the steps per epoch: OneCycleLR raised past its end.
    cfg = TrainConfig(data=str(tmp_path), model="lraspp_mobilenet_v3_large", weights="none", epochs=2, device="cpu",
                      scheduler=scheduler, optimizer="adamw")
    saved = prepare_model(cfg, torch.device("cpu"), steps_per_epoch=10)
    for _ in range(10):  # one epoch
        saved.optimizer.step(), saved.scheduler.step()
    ckpt = {"model": saved.model.state_dict(), "optimizer": saved.optimizer.state_dict(),
            "scheduler": saved.scheduler.state_dict(), "config": cfg.to_dict(), "epoch": 1, "step": 10,
            "split": {"train": ["a"], "val": ["b"]}}
    with pytest.raises(DronsegError, match="planned for 20 optimiser steps and would now make 40"):
        prepare_model(cfg, torch.device("cpu"), steps_per_epoch=20, ckpt=ckpt)
    assert prepare_model(cfg, torch.device("cpu"), steps_per_epoch=10, ckpt=ckpt).scheduler.last_epoch == 10


def test_a_resume_does_not_read_the_runs_starting_weights_again(tmp_path):
    # `train --weights init.pt` recorded init.pt as typed: --resume from another folder, or once init.pt was
    # moved, stopped with "--weights init.pt: no such file", an option --resume does not take
    cfg = TrainConfig(data=str(tmp_path), model="lraspp_mobilenet_v3_large", weights="none", epochs=2, device="cpu")
    saved = prepare_model(cfg, torch.device("cpu"), steps_per_epoch=10)
    ckpt = {"model": saved.model.state_dict(), "optimizer": saved.optimizer.state_dict(),
            "scheduler": saved.scheduler.state_dict(), "config": cfg.to_dict(), "epoch": 1, "step": 10,
            "split": {"train": ["a"], "val": ["b"]}}
    cfg.weights = str(tmp_path / "moved.pt")
    resumed = prepare_model(cfg, torch.device("cpu"), steps_per_epoch=10, ckpt=ckpt)
    assert all(torch.equal(value, resumed.model.state_dict()[key]) for key, value in ckpt["model"].items())


def test_a_run_folder_another_live_run_works_in_is_refused_before_anything_is_written(synth_root, tmp_path):
    """The same `train --out RUN` started twice (a fleet script, a second terminal) before the first wrote
    weights/last.pt: both trained into RUN, exit 0, and the first run's checkpoints, split and metrics were
    replaced by the second's, while it said "done: best ... -> RUN/weights/best.pt". A --resume of a run
    still training did the same. A live run holds its folder's claim (leftovers.FolderClaim): stand-in here."""
    from dronseg_edge.train.fit import fit

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from dronseg_edge.leftovers import FolderClaim\n"
        f"claim = FolderClaim({str(run)!r}, ())\n"
        "print('held', flush=True); sys.stdin.readline()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = TrainConfig(data=str(synth_root), out=str(run), model="lraspp_mobilenet_v3_large", weights="none",
                          size=(96, 64), epochs=1, max_steps_per_epoch=1, batch=4, device="cpu", workers=0,
                          tensorboard=False, plots=False)
        with pytest.raises(DronsegError, match=rf"{re.escape(str(run))} is in use by another dronseg-edge process "
                                               rf"\(pid {holder.pid}\): wait for that run to end"):
            fit(cfg, log=lambda _m: None)
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in run.iterdir() if not p.name.startswith(".dronseg-lock-")] == []  # no split.json, no weights


@pytest.mark.parametrize("data", ["", None])
def test_a_config_without_data_names_the_data_option(data):
    """fit(TrainConfig()) said 'imgs/imgs is missing' of the current folder; data=None raised a TypeError."""
    with pytest.raises(DronsegError, match=r"^--data DIR is needed: the data set root .* `dronseg-edge synth DIR`"):
        TrainConfig(data=data).validate()


def test_a_one_image_train_split_is_refused_for_deeplabv3(tmp_path):
    """Two labelled images split 1/1: DeepLabV3's ASPP pooling BatchNorm got a batch of one image, and `train`
    stopped in its first step with a ValueError traceback (exit 1) after making the run folder."""
    from dronseg_edge.data.synthetic import synthesize

    synthesize(tmp_path / "data", images=2, size=(96, 64), video_frames=0, seed=0, test_fraction=0.0)
    cfg = TrainConfig(data=str(tmp_path / "data"), model="deeplabv3_mobilenet_v3_large", weights="none", size=(96, 64),
                      batch=2, device="cpu", workers=0)
    data = prepare_data(cfg, None, lambda _m: None)
    assert len(data.train_ids) == 1
    with pytest.raises(DronsegError, match=r"^the train split has 1 image, and DeepLabV3's .* add images"):
        build_loaders(cfg, data, DistContext())
    cfg.model = "lraspp_mobilenet_v3_large"  # no pooling BatchNorm: trains on one image
    assert len(build_loaders(cfg, data, DistContext()).train) == 1


def test_batch_1_is_refused_for_deeplabv3_before_any_data_is_read():
    from dronseg_edge.train.setup import check_batch_of_one

    with pytest.raises(DronsegError, match=r"^--batch 1 cannot train DeepLabV3 .*use --batch 2 or more"):
        check_batch_of_one(TrainConfig(model="deeplabv3_mobilenet_v3_large", batch=1, size=(96, 64)))


def test_a_resumed_split_naming_images_the_data_lacks_is_refused(tmp_path):
    from dronseg_edge.data.synthetic import synthesize

    synthesize(tmp_path / "data", images=2, size=(96, 64), video_frames=0, seed=0, test_fraction=0.0)
    cfg = TrainConfig(data=str(tmp_path / "data"), size=(96, 64), device="cpu", workers=0)
    split = {"train": [p.stem for p in (tmp_path / "data" / "imgs" / "imgs").iterdir()], "val": ["other_set_1"]}
    with pytest.raises(DronsegError, match="split names image other_set_1 which is not in .*: resume with the same data"):
        prepare_data(cfg, {"path": "last.pt", "split": split}, lambda _m: None)


def test_a_1x1_deepest_feature_map_of_a_one_image_split_is_refused(tmp_path):
    """LR-ASPP at --size 16x16 on a one-image train split: BatchNorm's "Expected more than 1 value per channel"
    traceback (exit 1) in the first step; its stride-16 map must be over 1x1 (--batch 1 is refused earlier, by fit)."""
    from dronseg_edge.data.synthetic import synthesize

    synthesize(tmp_path / "data", images=2, size=(96, 64), video_frames=0, seed=0, test_fraction=0.0)
    cfg = TrainConfig(data=str(tmp_path / "data"), model="lraspp_mobilenet_v3_large", weights="none", size=(16, 16),
                      batch=2, device="cpu", workers=0)
    data = prepare_data(cfg, None, lambda _m: None)
    with pytest.raises(DronsegError, match=r"^--size 16x16 leaves lraspp_mobilenet_v3_large a 1x1 deepest feature map "
                                           r"\(stride 16\).* \(32x16\), or add images, or lower --val-fraction$"):
        build_loaders(cfg, data, DistContext())
    for cfg.size in ((17, 16), (16, 32)):  # accepted: a map of 2+ values
        build_loaders(cfg, data, DistContext())


@pytest.mark.parametrize("settings, reader, message", [
    ({"label_smoothing": 0.1}, {"loss": "ce"}, "--label-smoothing has no effect with --loss focal+dice (only with ce)"),
    ({"loss": "ce", "focal_gamma": 3.0}, {"loss": "focal"}, "--focal-gamma has no effect with --loss ce (only with focal or "
                                                              "focal+dice)"),
    ({"loss": "dice", "tversky_beta": 0.9}, {"loss": "tversky"}, "--tversky-beta has no effect with --loss dice (only with "
                                                                  "tversky)"),
    ({"optimizer": "adamw", "nesterov": False}, {"optimizer": "sgd"}, "--no-nesterov has no effect with --optimizer adamw"),
    ({"scheduler": "poly", "pct_start": 0.3}, {"scheduler": "onecycle"}, "--pct-start has no effect with --scheduler poly"),
    ({"model": "lraspp_mobilenet_v3_large", "aux_loss": True}, {"model": "deeplabv3_mobilenet_v3_large"},
     "--aux-loss has no effect with --model lraspp_mobilenet_v3_large"),
    ({"augment": AugmentConfig(enabled=False, brightness=0.5)}, {"augment": AugmentConfig(brightness=0.5)},
     "--color has no effect with --no-augment (only with --augment): drop it"),
    ({"unfreeze_epoch": 2}, {"freeze_stages": 2}, "--unfreeze-epoch 2 has no effect without --freeze-stages"),
    ({"model": "lraspp_mobilenet_v3_large", "freeze_stages": 5}, {"freeze_stages": 4},
     "--freeze-stages 5: the backbone of lraspp_mobilenet_v3_large has 4 stages: give 1 to 4"),
    ({"freeze_stages": 6}, {"freeze_stages": 5}, "--freeze-stages 6: the backbone of deeplabv3_resnet101 has 5 stages"),
])
def test_a_setting_the_run_would_not_read_is_refused(tmp_path, settings, reader, message):
    """--label-smoothing 0.1 (read by --loss ce only) trained the default focal+dice exactly as without it, exit 0;
    likewise the other losses', optimisers' and schedules' own settings, --aux-loss on LR-ASPP (no aux head),
    augmentation settings with --no-augment, --unfreeze-epoch without --freeze-stages, and --freeze-stages beyond the
    backbone's stages (9 froze the 5 a ResNet has)."""
    with pytest.raises(DronsegError, match=f"^{re.escape(message)}"):
        TrainConfig(data=str(tmp_path), **settings).validate()
    TrainConfig(data=str(tmp_path), **settings).validate(new_run=False)  # a resumed run's own, accepted by older versions
    TrainConfig(data=str(tmp_path), **{**settings, **reader}).validate()


def test_sync_bn_on_cpu_processes_is_refused(tmp_path):
    """`torchrun --nproc-per-node 2 ... train --device cpu --sync-bn` stopped on every rank with torch's ValueError
    traceback ('SyncBatchNorm layers only work with GPU modules'), after the run folder was made."""
    cfg = TrainConfig(data=str(tmp_path), model="lraspp_mobilenet_v3_large", weights="none", size=(96, 64), sync_bn=True)
    with pytest.raises(DronsegError, match=r"^--sync-bn needs CUDA GPUs \(torch's SyncBatchNorm\), not the cpu: drop it"):
        prepare_model(cfg, torch.device("cpu"), steps_per_epoch=10, distributed=True)
    prepare_model(cfg, torch.device("cpu"), steps_per_epoch=10, distributed=False)  # one process: plain BatchNorm
