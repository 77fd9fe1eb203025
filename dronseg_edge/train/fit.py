"""``fit``: set up data, model, optimiser and run the epochs, with checkpoints that resume exactly."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, Subset
from torch.utils.data.distributed import DistributedSampler

from dronseg_edge.atomic import ensure_writable_dir, write_json_atomic
from dronseg_edge.checkpoint import load_checkpoint, save_checkpoint
from dronseg_edge.classes import CLASS_NAMES, IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from dronseg_edge.data.aeroscapes import dataset_samples, validate_samples
from dronseg_edge.data.dataset import AugmentSeedSampler, SegmentationDataset
from dronseg_edge.data.split import save_split, stratified_split
from dronseg_edge.errors import DronsegError
from dronseg_edge.models import build_model, freeze_backbone_stages, set_bn_momentum
from dronseg_edge.runs import next_run_dir
from dronseg_edge.train import plots
from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.distributed import DistContext, all_reduce_sum, barrier, cleanup_distributed, setup_distributed
from dronseg_edge.train.loop import StepContext, evaluate, train_one_epoch
from dronseg_edge.train.losses import build_loss, class_weights_from_counts
from dronseg_edge.train.metrics import SegmentationMetrics
from dronseg_edge.train.optim import build_optimizer, build_scheduler, steps_per_epoch
from dronseg_edge.train.precision import amp_dtype, check_amp, make_scaler, restore_scaler
from dronseg_edge.train.rng import capture_rng_state, restore_rng_state, seed_everything, worker_init
from dronseg_edge.train.tracking import MetricsLog


@dataclass
class FitResult:
    run_dir: Path
    best: Path
    last: Path
    best_metric: float
    history: list[dict]


def _broadcast_path(path: Path | None, dist_ctx: DistContext) -> Path:
    if not dist_ctx.enabled:
        return path
    import torch.distributed as dist

    box = [str(path) if path is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def _loaders(cfg: TrainConfig, train_set, val_set, dist_ctx: DistContext, generator: torch.Generator):
    pin = dist_ctx.device.type == "cuda"
    common = dict(num_workers=cfg.workers, pin_memory=pin, worker_init_fn=worker_init,
                  persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers > 0 else None)
    if dist_ctx.enabled:
        train_sampler = DistributedSampler(train_set, num_replicas=dist_ctx.world_size, rank=dist_ctx.rank,
                                           shuffle=True, seed=cfg.seed)
        per_rank = math.ceil(len(train_set) / dist_ctx.world_size)
        val_set = Subset(val_set, list(range(dist_ctx.rank, len(val_set), dist_ctx.world_size)))
    else:
        train_sampler = RandomSampler(train_set, generator=generator)
        per_rank = len(train_set)
    # BatchNorm cannot train on a final batch of one image; drop it only in that case.
    drop_last = per_rank % cfg.batch == 1 and per_rank > cfg.batch
    train_sampler = AugmentSeedSampler(train_sampler, cfg.seed)  # augmentation independent of worker state
    # The loader draws its workers' base seed from its own generator (once per iterator, i.e. once per
    # run with persistent workers), so that draw cannot shift the shuffle order of a resumed run.
    train_loader = DataLoader(train_set, batch_size=cfg.batch, sampler=train_sampler, drop_last=drop_last,
                              generator=torch.Generator().manual_seed(cfg.seed), **common)
    val_loader = DataLoader(val_set, batch_size=cfg.batch, sampler=SequentialSampler(val_set), **common)
    return train_loader, val_loader, train_sampler


def fit(cfg: TrainConfig, resume: Path | None = None, log: Callable[[str], None] = print) -> FitResult:
    """Train ``cfg`` (or continue the run of checkpoint ``resume``); returns where the results are."""
    ckpt = load_checkpoint(resume, num_classes=len(CLASS_NAMES)) if resume else None
    if ckpt is not None:
        if "optimizer" not in ckpt or "config" not in ckpt:
            raise DronsegError(f"checkpoint {resume} holds no training state: resume from weights/last.pt of a run")
        overrides = {"device": cfg.device, "workers": cfg.workers}
        cfg = TrainConfig.from_dict({**ckpt["config"], **overrides})
    cfg.validate()
    dist_ctx = setup_distributed(cfg.device)
    try:
        return _fit(cfg, ckpt, resume, dist_ctx, log if dist_ctx.is_main else (lambda _msg: None))
    finally:
        cleanup_distributed()


def _fit(cfg: TrainConfig, ckpt, resume, dist_ctx: DistContext, log) -> FitResult:
    device = dist_ctx.device
    check_amp(cfg.amp, device, resumed=ckpt is not None)
    seed_everything(cfg.seed + dist_ctx.rank, cfg.deterministic)
    if cfg.model.startswith("deeplabv3") and cfg.batch < 2:
        raise DronsegError("--batch 1 cannot train DeepLabV3 (its ASPP pooling BatchNorm needs 2+ images): use --batch 2 or more, with --accumulate to save memory")

    # Data: validate everything before the first step.
    started = time.perf_counter()
    samples = dataset_samples(cfg.data, "train")
    stats = validate_samples(samples)
    log(f"data: {len(samples)} train images in {cfg.data} validated in {time.perf_counter() - started:.1f}s")
    if ckpt is not None:
        train_ids, val_ids = list(ckpt["split"]["train"]), list(ckpt["split"]["val"])
    else:
        train_ids, val_ids = stratified_split(stats.ids, stats.presence, cfg.val_fraction, cfg.seed)
    by_id = {s.image_id: s for s in samples}
    missing = [i for i in train_ids + val_ids if i not in by_id]
    if missing:
        raise DronsegError(f"the run's split names image {missing[0]} which is not in {cfg.data}: resume with the same data")

    # Run folder (rank 0 picks, the others follow).
    if ckpt is not None:
        run_dir = Path(resume).resolve().parent.parent
    elif dist_ctx.is_main:
        run_dir = ensure_writable_dir(Path(cfg.out)) if cfg.out else next_run_dir("runs/train")
    else:
        run_dir = None
    run_dir = _broadcast_path(run_dir, dist_ctx)
    cfg.out = str(run_dir)
    weights_dir = run_dir / "weights"
    if dist_ctx.is_main:
        ensure_writable_dir(weights_dir)
        save_split(run_dir / "split.json", train_ids, val_ids, seed=cfg.seed, val_fraction=cfg.val_fraction,
                   all_ids=stats.ids, presence=stats.presence)
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
    log(f"run: {run_dir}  (train {len(train_ids)} / val {len(val_ids)} images, {dist_ctx.world_size} process(es) on {device})")

    train_set = SegmentationDataset([by_id[i] for i in train_ids], cfg.size, augment=cfg.augment)
    val_set = SegmentationDataset([by_id[i] for i in val_ids], cfg.size, augment=None)
    generator = torch.Generator()
    train_loader, val_loader, train_sampler = _loaders(cfg, train_set, val_set, dist_ctx, generator)

    # Model.
    model = build_model(cfg.model, num_classes=len(CLASS_NAMES), weights=cfg.weights, aux_loss=cfg.aux_loss)
    if cfg.bn_momentum is not None:
        set_bn_momentum(model, cfg.bn_momentum)
    channels_last = cfg.channels_last and device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if cfg.sync_bn and dist_ctx.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, cfg)
    per_epoch = steps_per_epoch(len(train_loader), cfg.accumulate)
    if cfg.max_steps_per_epoch:
        per_epoch = min(per_epoch, cfg.max_steps_per_epoch)
    scheduler = build_scheduler(optimizer, cfg, cfg.epochs * per_epoch)
    dtype = amp_dtype(cfg.amp, device)
    scaler = make_scaler(dtype, device)
    start_epoch, global_step, best = 0, 0, -math.inf
    partial: dict | None = None  # the part of start_epoch a mid-epoch checkpoint had already trained
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        restore_scaler(scaler, ckpt.get("scaler"))
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["step"])
        best = float(ckpt.get("best_metric", -math.inf))
        restore_rng_state(ckpt.get("rng", {}))
        partial = ckpt.get("epoch_progress")
        within = f" (+{partial['batches']} batches of epoch {start_epoch + 1})" if partial else ""
        log(f"resumed from {resume}: epoch {start_epoch}/{cfg.epochs}{within}, step {global_step}")
    # The optimiser holds every parameter (frozen ones too), so unfreezing only changes requires_grad.
    frozen = cfg.freeze_stages > 0 and not (cfg.unfreeze_epoch and start_epoch >= cfg.unfreeze_epoch)
    if frozen:
        freeze_backbone_stages(model, cfg.freeze_stages)
    compiled = torch.compile(model) if cfg.compile else model
    net = _data_parallel(compiled, dist_ctx)

    weights = None
    if cfg.class_weights != "none":
        weights = class_weights_from_counts(stats.counts_for(train_ids), method=cfg.class_weights).to(device)
    criterion = build_loss(
        cfg.loss, class_weights=weights, ignore_index=IGNORE_INDEX, label_smoothing=cfg.label_smoothing,
        focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha, dice_smooth=cfg.dice_smooth, dice_log=cfg.dice_log,
        focal_weight=cfg.focal_weight, dice_weight=cfg.dice_weight, tversky_alpha=cfg.tversky_alpha,
        tversky_beta=cfg.tversky_beta,
    )
    ctx = StepContext(device, dtype, torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
                      torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1), channels_last)
    metrics = SegmentationMetrics(len(CLASS_NAMES), IGNORE_INDEX, class_names=list(CLASS_NAMES))
    history = MetricsLog(run_dir, tensorboard=cfg.tensorboard) if dist_ctx.is_main else None
    if history is not None:
        history.resume_from(start_epoch)

    last_path, best_path = weights_dir / "last.pt", weights_dir / "best.pt"
    val_result: dict = {}
    if cfg.val_at_start and start_epoch == 0 and partial is None:
        start_scores = evaluate(model, criterion, val_loader, ctx, metrics, show_progress=dist_ctx.is_main)
        if history is not None:
            history.log({"epoch": 0, "step": 0, **_val_columns(start_scores)})
            log(f"epoch 0 (initial weights): mIoU {start_scores['miou']:.4f}  mDice {start_scores['mdice']:.4f}  "
                f"competition {start_scores['competition']:.4f}")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            generator.manual_seed(cfg.seed * 100_003 + epoch)  # same order per epoch, resumed or not
            done = partial or {"batches": 0, "steps": 0, "loss_sum": 0.0, "images": 0}
            train_sampler.set_epoch(epoch, skip=done["batches"] * cfg.batch)
            if frozen and cfg.unfreeze_epoch and epoch >= cfg.unfreeze_epoch:
                freeze_backbone_stages(model, 0)
                frozen = False
                # DDP all-reduces only the parameters that required grad when it was built: wrap again.
                del net
                net = _data_parallel(compiled, dist_ctx)

            def save_mid_epoch(steps: int, loss_sum: torch.Tensor, images: int, epoch=epoch, done=done, first_step=global_step) -> None:
                if not cfg.save_every_steps or (first_step + steps) % cfg.save_every_steps or done["steps"] + steps >= per_epoch:
                    return
                totals = all_reduce_sum(torch.stack([loss_sum.detach().float(), torch.tensor(float(images), device=device)]))
                if dist_ctx.is_main:
                    progress = {"batches": done["batches"] + steps * cfg.accumulate, "steps": done["steps"] + steps,
                                "loss_sum": done["loss_sum"] + totals[0].item(), "images": done["images"] + int(totals[1].item())}
                    save_checkpoint(last_path, _checkpoint_state(model, optimizer, scheduler, scaler, cfg, epoch, first_step + steps,
                                                                 best, train_ids, val_ids, val_result, progress))

            train_result = train_one_epoch(
                net, criterion, optimizer, scheduler, scaler, train_loader, ctx, accumulate=cfg.accumulate,
                grad_clip=cfg.grad_clip, aux_weight=cfg.aux_weight,
                max_steps=cfg.max_steps_per_epoch - done["steps"] if cfg.max_steps_per_epoch else 0,
                description=f"epoch {epoch + 1}/{cfg.epochs}", show_progress=dist_ctx.is_main, on_step=save_mid_epoch,
            )
            partial = None
            global_step += train_result["steps"]
            epoch_images = done["images"] + train_result["images"]
            epoch_loss = (done["loss_sum"] + train_result["loss"] * train_result["images"]) / max(epoch_images, 1)
            row = {"epoch": epoch + 1, "step": global_step, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": epoch_loss,
                   "train_img_per_s": train_result["images"] / max(train_result["seconds"], 1e-9),
                   "data_wait_frac": train_result["data_wait_s"] / max(train_result["seconds"], 1e-9),
                   "epoch_s": train_result["seconds"]}
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
                val_result = evaluate(model, criterion, val_loader, ctx, metrics, show_progress=dist_ctx.is_main)
                row.update(_val_columns(val_result))
            score = _score(row, cfg.best_metric)
            improved = score is not None and score > best
            if improved:
                best = score
            if dist_ctx.is_main:
                history.log(row)
                state = _checkpoint_state(model, optimizer, scheduler, scaler, cfg, epoch + 1, global_step, best,
                                          train_ids, val_ids, val_result)
                save_checkpoint(last_path, state)
                if improved or not best_path.exists():
                    save_checkpoint(best_path, state)
                log(_epoch_line(row, cfg))
            barrier()
    finally:
        if history is not None:
            history.close()
    if dist_ctx.is_main and cfg.plots and history is not None and history.rows:
        _write_plots(run_dir, history.rows, val_result)
    if dist_ctx.is_main:
        log(f"done: best {cfg.best_metric} {best:.4f} -> {best_path}; last -> {last_path}; metrics -> {run_dir / 'metrics.csv'}")
    return FitResult(run_dir, best_path, last_path, best, history.rows if history else [])


def _data_parallel(module: torch.nn.Module, dist_ctx: DistContext) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when distributed (it broadcasts rank 0's weights), else itself."""
    if not dist_ctx.enabled:
        return module
    device = dist_ctx.device
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _val_columns(result: dict) -> dict:
    row = {"val_loss": result["loss"], "val_miou": result["miou"], "val_mdice": result["mdice"],
           "val_competition": result["competition"], "val_pixel_acc": result["pixel_acc"]}
    for name, iou, dice in zip(CLASS_NAMES, result["iou"], result["dice"]):
        row[f"iou_{name}"] = iou
        row[f"dice_{name}"] = dice
    return row


def _score(row: dict, metric: str) -> float | None:
    key = {"miou": "val_miou", "mdice": "val_mdice", "competition": "val_competition", "val_loss": "val_loss"}[metric]
    if key not in row:
        return None
    return -row[key] if metric == "val_loss" else row[key]


def _epoch_line(row: dict, cfg: TrainConfig) -> str:
    parts = [f"epoch {row['epoch']}/{cfg.epochs}", f"step {row['step']}", f"train_loss {row['train_loss']:.4f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"mIoU {row['val_miou']:.4f}", f"mDice {row['val_mdice']:.4f}",
                  f"competition {row['val_competition']:.4f}"]
    parts += [f"{row['train_img_per_s']:.3g} img/s", f"data wait {100 * row['data_wait_frac']:.0f}%"]
    return "  ".join(parts)


def _checkpoint_state(model, optimizer, scheduler, scaler, cfg: TrainConfig, epoch: int, step: int, best: float,
                      train_ids, val_ids, val_result: dict, epoch_progress: dict | None = None) -> dict:
    """Everything a run needs to go on; ``epoch`` counts finished epochs, ``epoch_progress`` (mid-epoch
    saves only) what of the next one is done: batches, optimiser steps, summed train loss and images."""
    state = {
        "model": model.state_dict(),
        "arch": cfg.model,
        "aux_loss": bool(cfg.aux_loss and getattr(model, "aux_classifier", None) is not None),
        "class_names": list(CLASS_NAMES),
        "palette": [list(c) for c in PALETTE],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "input_size": list(cfg.size),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_metric": best,
        "best_metric_name": cfg.best_metric,
        "metrics": {k: v for k, v in val_result.items() if k != "confusion"},
        "rng": capture_rng_state(),
        "config": cfg.to_dict(),
        "split": {"train": list(train_ids), "val": list(val_ids)},
    }
    if epoch_progress is not None:
        state["epoch_progress"] = epoch_progress
    return state


def _write_plots(run_dir: Path, rows: list[dict], val_result: dict) -> None:
    plots.plot_curves(rows, run_dir / "curves.png")
    if val_result:
        plots.plot_per_class(list(CLASS_NAMES), val_result["iou"], val_result["dice"], run_dir / "per_class.png")
        plots.plot_confusion(list(CLASS_NAMES), val_result["confusion"], run_dir / "confusion_matrix.png")
