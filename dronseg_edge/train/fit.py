"""``fit``: set up a run (train/setup.py), run its epochs, write checkpoints that resume exactly."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from dronseg_edge.checkpoint import (TrainingState, load_checkpoint, model_state, nonfinite_weight, recorded_data_root,
                                     save_checkpoint)
from dronseg_edge.classes import CLASS_NAMES, IGNORE_INDEX
from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.leftovers import RANDOM, TAGGED
from dronseg_edge.train import plots
from dronseg_edge.train.config import RESUME_OPTIONS, TrainConfig
from dronseg_edge.train.distributed import DistContext, all_reduce_sum, barrier, cleanup_distributed, setup_distributed
from dronseg_edge.train.loop import evaluate, train_one_epoch
from dronseg_edge.train.mosaics import ValidationMosaic
from dronseg_edge.metrics import SegmentationMetrics
from dronseg_edge.models import freeze_backbone_stages, is_weights_path, read_weights_file
from dronseg_edge.train.precision import check_amp
from dronseg_edge.train.rng import capture_rng_state, seed_everything
from dronseg_edge.train.setup import (DataSetup, ModelSetup, build_criterion, build_loaders, check_batch_of_one,
                                      optimizer_steps_per_epoch, prepare_data, prepare_model, prepare_run_dir,
                                      step_context)
from dronseg_edge.train.tracking import MetricsLog

# Hidden temporary files of the run folder's atomic writes: what a killed run may leave behind. Each
# carries the package tag and its process's claim token (TAGGED): other programs' files never match.
RUN_LEFTOVERS = (
    ("weights", re.compile(rf"^\.(last|best)\.pt\.{TAGGED}\.{RANDOM}\.tmp$")),
    (".", re.compile(rf"^\.(metrics\.csv|split\.json|config\.json|curves\.png|per_class\.png|confusion_matrix\.png)"
                     rf"\.{TAGGED}\.{RANDOM}\.tmp$")),
    ("mosaics", re.compile(rf"^\.epoch_\d+\.png\.{TAGGED}\.{RANDOM}\.tmp$")),
)


@dataclass
class FitResult:
    """``best_metric``: the ``--best-metric`` value of ``best``'s epoch (a checkpoint stores its score,
    higher is better: the loss negated for val_loss)."""

    run_dir: Path
    best: Path
    last: Path
    best_metric: float
    history: list[dict]


@dataclass
class Progress:
    """Where a run stands: ``epoch`` finished epochs, ``step`` optimiser steps, the best score so far."""

    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    partial: dict | None = None  # what of epoch ``epoch`` + 1 a mid-epoch checkpoint had already trained
    val_result: dict = field(default_factory=dict)  # the latest validation scores

    @classmethod
    def of(cls, ckpt: dict | None) -> "Progress":
        if ckpt is None:
            return cls()
        state = TrainingState.from_checkpoint(ckpt)
        return cls(state.epoch, state.step, state.best_metric, state.epoch_progress)


def fit(cfg: TrainConfig, resume: Path | None = None, log: Callable[[str], None] = print) -> FitResult:
    """Train ``cfg`` (or continue the run of checkpoint ``resume``); returns where the results are."""
    ckpt = load_checkpoint(resume, num_classes=len(CLASS_NAMES)) if resume else None
    if ckpt is not None:
        cfg = _resumed_config(cfg, ckpt, resume)
    if cfg.data:  # recorded in the checkpoints, for eval, export and --resume run from any folder
        cfg.data = str(Path(os.path.expanduser(cfg.data)).resolve())
    cfg.validate(new_run=ckpt is None)
    # A --weights file is read before any other work: a file that is not plain data is refused before the
    # data check, and before a run folder, split.json or config.json exists.
    weights = read_weights_file(Path(cfg.weights)) if ckpt is None and is_weights_path(cfg.weights) else None
    dist_ctx = setup_distributed(cfg.device)
    try:
        return _fit(cfg, ckpt, resume, dist_ctx, log if dist_ctx.is_main else (lambda _msg: None), weights)
    finally:
        cleanup_distributed()


def _resumed_config(cfg: TrainConfig, ckpt: dict, resume: Path) -> TrainConfig:
    """The run's own config from its checkpoint, with what a resume may change: the device, the
    loader workers, and (when given, ``cfg.data`` / ``cfg.max_pixels``) the data folder and pixel limit.
    The data folder the checkpoint records must still exist, or be given anew."""
    default = TrainConfig()  # fit(TrainConfig(epochs=50), resume=...) ran the run's own epochs without a word
    changed = [f.name for f in fields(cfg) if f.name not in RESUME_OPTIONS and getattr(cfg, f.name) != getattr(default, f.name)]
    if changed:
        raise DronsegError(f"{', '.join(changed)}: the resumed run's own (it takes only data, device, workers and "
                           "max_pixels anew): leave them at their defaults")
    overrides = {"device": cfg.device, "workers": cfg.workers, "data": cfg.data or str(recorded_data_root(ckpt) or ""),
                 **({"max_pixels": cfg.max_pixels} if cfg.max_pixels is not None else {})}
    resumed = TrainConfig.from_dict({**TrainingState.from_checkpoint(ckpt).config, **overrides})
    weights = Path(resume).resolve().parent  # the run folder is the one above it (setup.prepare_run_dir): ~ for ~/Downloads/last.pt
    if weights.name != "weights":
        raise DronsegError(f"{resume} is not in a run's weights/ folder, and a resumed run writes into the folder above "
                           f"its own ({weights.parent}): copy it to RUN/weights/last.pt and resume that")
    if not cfg.data and not (resumed.data and Path(resumed.data).is_dir()):
        raise DronsegError(f"the data folder {resumed.data or '(none recorded)'} that {resume} trained on does not "
                           "exist here: pass --data DIR (the same data set, the run's split names its images)")
    return resumed


def _fit(cfg: TrainConfig, ckpt: dict | None, resume: Path | None, dist_ctx: DistContext, log, weights=None) -> FitResult:
    device, is_main = dist_ctx.device, dist_ctx.is_main
    check_amp(cfg.amp, device, resumed=ckpt is not None)
    seed_everything(cfg.seed + dist_ctx.rank, cfg.deterministic)
    check_batch_of_one(cfg)  # needs no data: before the data checks
    data = prepare_data(cfg, ckpt, log)
    # Claimed before split.json is written: another run working there (a second `train --out` of the same
    # folder, a --resume of a run still training) is refused, and cannot take our temporary files for a killed run's.
    run_dir, claim = prepare_run_dir(cfg, resume, data, dist_ctx, RUN_LEFTOVERS)
    history = None
    try:
        log(f"run: {run_dir}  (train {len(data.train_ids)} / val {len(data.val_ids)} images, {dist_ctx.world_size} process(es) on {device})")
        loaders = build_loaders(cfg, data, dist_ctx)
        per_epoch = optimizer_steps_per_epoch(cfg, len(loaders.train))
        setup = prepare_model(cfg, device, per_epoch, ckpt, distributed=dist_ctx.enabled, weights=weights)
        progress = Progress.of(ckpt)
        if ckpt is not None:
            within = f" (+{progress.partial['batches']} batches of epoch {progress.epoch + 1})" if progress.partial else ""
            log(f"resumed from {resume}: epoch {progress.epoch}/{cfg.epochs}{within}, step {progress.step}")
        net = _data_parallel(setup.compiled, dist_ctx)
        criterion = build_criterion(cfg, device, data)
        ctx = step_context(setup, device)
        metrics = SegmentationMetrics(len(CLASS_NAMES), IGNORE_INDEX)
        history = MetricsLog(run_dir, tensorboard=cfg.tensorboard) if is_main else None
        if history is not None:
            history.resume_from(progress.epoch if ckpt is not None else -1)  # a new run: no row of one stopped early
        writer = CheckpointWriter(run_dir, is_main, cfg, setup, data)
        if claim is not None and claim.note("run"):
            log(claim.note("run"))
        mosaic = ValidationMosaic(loaders.val.dataset, run_dir / "mosaics", cfg.mosaic_every) if is_main and cfg.mosaic_every else None
        if cfg.val_at_start and progress.epoch == 0 and progress.partial is None:  # the initial weights as epoch 0
            scores = evaluate(setup.model, criterion, loaders.val, ctx, metrics, show_progress=is_main)
            if history is not None:
                history.log({"epoch": 0, "step": 0, **_val_columns(scores)})
                log(f"epoch 0 (initial weights): mIoU {scores['miou']:.4f}  mDice {scores['mdice']:.4f}  "
                    f"competition {scores['competition']:.4f}")
        for epoch in range(progress.epoch, cfg.epochs):
            loaders.generator.manual_seed(cfg.seed * 100_003 + epoch)  # same order per epoch, resumed or not
            # What of this epoch is already trained: all zeros unless resuming mid-epoch.
            done = progress.partial or {"batches": 0, "steps": 0, "loss_sum": 0.0, "images": 0}
            loaders.train_sampler.set_epoch(epoch, skip=done["batches"] * cfg.batch)
            if setup.frozen and cfg.unfreeze_epoch and epoch >= cfg.unfreeze_epoch:
                freeze_backbone_stages(setup.model, 0)  # the optimiser holds the frozen parameters too
                setup.frozen = False
                del net  # DDP all-reduces only the parameters that required grad when it was built: wrap again
                net = _data_parallel(setup.compiled, dist_ctx)
            result = train_one_epoch(net, criterion, setup.optimizer, setup.scheduler, setup.scaler, loaders.train, ctx,
                                     accumulate=cfg.accumulate, grad_clip=cfg.grad_clip, aux_weight=cfg.aux_weight,
                                     max_steps=cfg.max_steps_per_epoch - done["steps"] if cfg.max_steps_per_epoch else 0,
                                     description=f"epoch {epoch + 1}/{cfg.epochs}", show_progress=is_main,
                                     on_step=writer.mid_epoch_saver(progress, done, per_epoch))
            progress.epoch, progress.step, progress.partial = epoch + 1, progress.step + result["steps"], None
            row = _train_row(progress, done, result, result["lr"])
            _check_finite(setup.model, f"epoch {epoch + 1} (train_loss {row['train_loss']:.4g})", writer.last)
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
                progress.val_result = evaluate(setup.model, criterion, loaders.val, ctx, metrics, show_progress=is_main)
                row.update(_val_columns(progress.val_result))
            if mosaic is not None and mosaic.due(epoch + 1, cfg.epochs):
                mosaic.write(setup.model, ctx, epoch + 1)
            score = _score(row, cfg.best_metric)
            improved = score is not None and score > progress.best
            progress.best = score if improved else progress.best
            if history is not None:
                history.log(row)
                writer.save_epoch(progress, improved)
                log(_epoch_line(row, cfg))
            barrier()
        if cfg.plots and not progress.val_result and progress.epoch == cfg.epochs:  # a finished run resumed (its plots were cut)
            progress.val_result = evaluate(setup.model, criterion, loaders.val, ctx, metrics, show_progress=is_main)
    finally:
        if history is not None:
            history.close()
        if claim is not None:
            claim.release()
    if is_main and cfg.plots and history is not None and history.rows:
        _write_plots(run_dir, history.rows, progress.val_result, writer)
    best = -progress.best if cfg.best_metric == "val_loss" else progress.best  # the loss itself, not its score
    log(f"done: best {cfg.best_metric} {best:.4f} -> {writer.best}; last -> {writer.last}; metrics -> {run_dir / 'metrics.csv'}")
    return FitResult(run_dir, writer.best, writer.last, best, history.rows if history else [])


class CheckpointWriter:
    """weights/last.pt after every epoch (and every ``cfg.save_every_steps`` optimiser steps within one),
    weights/best.pt when the epoch's score improved; only rank 0 writes."""

    def __init__(self, run_dir: Path, is_main: bool, cfg: TrainConfig, setup: ModelSetup, data: DataSetup):
        self.last, self.best = run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"
        self.is_main, self.cfg, self.setup = is_main, cfg, setup
        self.split = {"train": list(data.train_ids), "val": list(data.val_ids)}

    def state(self, progress: Progress, step: int | None = None, epoch_progress: dict | None = None) -> dict:
        """The whole checkpoint: the model part and what resumes the run at ``progress`` (``step``, if given, instead)."""
        setup = self.setup
        training = TrainingState(
            optimizer=setup.optimizer.state_dict(), scheduler=setup.scheduler.state_dict(), scaler=setup.scaler.state_dict(),
            epoch=progress.epoch, step=progress.step if step is None else step, best_metric=progress.best,
            best_metric_name=self.cfg.best_metric, metrics={k: v for k, v in progress.val_result.items() if k != "confusion"},
            rng=capture_rng_state(), config=self.cfg.to_dict(), split=self.split, epoch_progress=epoch_progress)
        return {**model_state(setup.model, self.cfg.model, self.cfg.size), **training.to_dict()}

    def save_epoch(self, progress: Progress, improved: bool) -> None:
        """best.pt first, then last.pt: when a save fails (a full disk), last.pt still holds the epoch before,
        so ``--resume last.pt`` trains this epoch again and writes both; the other order would resume
        past an improvement that best.pt never received."""
        if not self.is_main:
            return
        state = self.state(progress)
        if improved or not self.best.exists():
            save_checkpoint(self.best, state)
        save_checkpoint(self.last, state)

    def mid_epoch_saver(self, progress: Progress, done: dict, per_epoch: int) -> Callable[[int, torch.Tensor, int], None]:
        """``train_one_epoch``'s ``on_step``: saves last.pt with the epoch's progress so far (``done``: what of
        this epoch an earlier run had trained). Every rank must call it: the loss totals are all-reduced."""
        every, accumulate, first_step = self.cfg.save_every_steps, self.cfg.accumulate, progress.step

        def on_step(steps: int, loss_sum: torch.Tensor, images: int) -> None:
            # The epoch's last step is left to save_epoch, which follows it.
            if not every or (first_step + steps) % every or done["steps"] + steps >= per_epoch:
                return
            _check_finite(self.setup.model, f"step {first_step + steps}", self.last)
            totals = all_reduce_sum(torch.stack([loss_sum.detach().float(), torch.tensor(float(images), device=loss_sum.device)]))
            if self.is_main:
                so_far = {"batches": done["batches"] + steps * accumulate, "steps": done["steps"] + steps,
                          "loss_sum": done["loss_sum"] + totals[0].item(), "images": done["images"] + int(totals[1].item())}
                save_checkpoint(self.last, self.state(progress, step=first_step + steps, epoch_progress=so_far))

        return on_step


def _check_finite(model: torch.nn.Module, when: str, last: Path) -> None:
    """Stop a diverged run (every rank alike: DDP keeps their weights equal) before its NaN weights are saved:
    they would make every pixel one class, and `train` said "done"."""
    bad = nonfinite_weight(model.state_dict())
    if bad is not None:
        raise DronsegError(f"the training diverged: after {when} weight {bad} holds NaN or Inf; retrain with a lower "
                           f"--lr ({last} keeps the weights saved before, if any)")


def _train_row(progress: Progress, done: dict, result: dict, lr: float) -> dict:
    """The metrics.csv row of an epoch just trained (its loss joins the part a resumed run had trained before)."""
    images = done["images"] + result["images"]
    return {"epoch": progress.epoch, "step": progress.step, "lr": lr,
            "train_loss": (done["loss_sum"] + result["loss"] * result["images"]) / max(images, 1),
            "train_img_per_s": result["images"] / max(result["seconds"], 1e-9),
            "data_wait_frac": result["data_wait_s"] / max(result["seconds"], 1e-9),
            "epoch_s": result["seconds"]}


def _data_parallel(module: torch.nn.Module, dist_ctx: DistContext) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when distributed (it broadcasts rank 0's weights), else itself."""
    if not dist_ctx.enabled:
        return module
    cuda = dist_ctx.device.type == "cuda"
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[dist_ctx.device.index] if cuda else None)


def _val_columns(result: dict) -> dict:
    row = {f"val_{key}": result[key] for key in ("loss", "miou", "mdice", "competition", "pixel_acc")}
    return row | {f"{key}_{name}": result[key][i] for i, name in enumerate(CLASS_NAMES) for key in ("iou", "dice")}


def _score(row: dict, metric: str) -> float | None:
    """The ``--best-metric`` score of an epoch's row, higher is better; None for an epoch without validation."""
    key = metric if metric == "val_loss" else f"val_{metric}"
    return None if key not in row else -row[key] if metric == "val_loss" else row[key]


def _epoch_line(row: dict, cfg: TrainConfig) -> str:
    parts = [f"epoch {row['epoch']}/{cfg.epochs}", f"step {row['step']}", f"train_loss {row['train_loss']:.4f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"mIoU {row['val_miou']:.4f}", f"mDice {row['val_mdice']:.4f}",
                  f"competition {row['val_competition']:.4f}"]
    parts += [f"{row['train_img_per_s']:.3g} img/s", f"data wait {100 * row['data_wait_frac']:.0f}%"]
    return "  ".join(parts)


def _write_plots(run_dir: Path, rows: list[dict], val_result: dict, writer: "CheckpointWriter") -> None:
    """curves.png, per_class.png, confusion_matrix.png; a failure says the checkpoints are complete."""
    try:
        plots.plot_curves(rows, run_dir / "curves.png")
        if val_result:
            plots.plot_per_class(list(CLASS_NAMES), val_result["iou"], val_result["dice"], run_dir / "per_class.png")
            plots.plot_confusion(list(CLASS_NAMES), val_result["confusion"], run_dir / "confusion_matrix.png")
    except RuntimeFailure as exc:
        raise RuntimeFailure(f"{exc} (training finished: {writer.last} and {writer.best} are complete, "
                             "only the plots are missing)") from None
