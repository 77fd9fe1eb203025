"""Setting up a training run, in the order ``fit`` calls it: data and its split, the run folder, the
loaders, then the model with its optimiser, schedule and scaler (restored when resuming).

Each step is a small function returning a small dataclass, so the training-throughput benchmark
(benchmarks/train_throughput.py) builds its model, optimiser and loader with the same code as a run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler, Subset
from torch.utils.data.distributed import DistributedSampler

from dronseg_edge.atomic import ensure_writable_dir, write_json_atomic
from dronseg_edge.checkpoint import TrainingState, recorded_split
from dronseg_edge.classes import CLASS_NAMES, IGNORE_INDEX
from dronseg_edge.data.aeroscapes import DatasetStats, Sample, dataset_samples, validate_samples
from dronseg_edge.data.dataset import AugmentSeedSampler, SegmentationDataset
from dronseg_edge.data.split import save_split, stratified_split
from dronseg_edge.errors import DronsegError
from dronseg_edge.leftovers import FolderClaim
from dronseg_edge.models import build_model, check_output_stride, freeze_backbone_stages, set_bn_momentum
from dronseg_edge.runs import TRAIN_RUNS, next_run_dir
from dronseg_edge.sizes import format_size
from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.distributed import DistContext
from dronseg_edge.train.loop import StepContext
from dronseg_edge.train.losses import build_loss, class_weights_from_counts
from dronseg_edge.train.optim import build_optimizer, build_scheduler
from dronseg_edge.train.precision import amp_dtype, make_scaler, restore_scaler
from dronseg_edge.train.rng import restore_rng_state, worker_init


@dataclass
class DataSetup:
    """The validated samples of ``cfg.data`` and the run's train/validation split (image IDs)."""

    by_id: dict[str, Sample]
    stats: DatasetStats
    train_ids: list[str]
    val_ids: list[str]


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    train_sampler: AugmentSeedSampler  # set_epoch(epoch, skip) before each epoch
    generator: torch.Generator  # seeds the shuffle of each epoch (``fit`` reseeds it per epoch)


@dataclass
class ModelSetup:
    """The model and what steps it; ``compiled`` is ``model`` under torch.compile when asked, else ``model``."""

    model: nn.Module
    compiled: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    channels_last: bool
    frozen: bool  # backbone stages frozen now


def prepare_data(cfg: TrainConfig, ckpt: dict[str, Any] | None, log: Callable[[str], None]) -> DataSetup:
    """Validate every sample of ``cfg.data`` before the first step; split it, or take the split of the
    checkpoint ``ckpt`` being resumed."""
    started = time.perf_counter()
    samples = dataset_samples(cfg.data, "train")
    stats = validate_samples(samples, max_pixels=cfg.pixel_limit)
    log(f"data: {len(samples)} train images in {cfg.data} validated in {time.perf_counter() - started:.1f}s")
    if ckpt is not None:
        train_ids, val_ids = recorded_split(ckpt, "train"), recorded_split(ckpt, "val")
    else:
        train_ids, val_ids = stratified_split(stats.ids, stats.presence, cfg.val_fraction, cfg.seed)
    by_id = {s.image_id: s for s in samples}
    missing = [i for i in train_ids + val_ids if i not in by_id]
    if missing:
        raise DronsegError(f"the run's split names image {missing[0]} which is not in {cfg.data}: resume with the same data")
    return DataSetup(by_id, stats, train_ids, val_ids)


def prepare_run_dir(cfg: TrainConfig, resume: Path | None, data: DataSetup, dist_ctx: DistContext,
                    leftovers=()) -> tuple[Path, FolderClaim | None]:
    """The run folder (a resumed run's own; rank 0 picks, the others follow), with its split.json and config.json,
    and rank 0's claim on it (a killed run's ``leftovers`` removed; refused while another live run claims it).

    Sets ``cfg.out`` to it. split.json is a human-readable copy: the checkpoints carry the split themselves.
    """
    if resume is not None:
        run_dir = Path(resume).resolve().parent.parent
    elif dist_ctx.is_main:
        run_dir = ensure_writable_dir(Path(cfg.out)) if cfg.out else next_run_dir(TRAIN_RUNS)
    else:
        run_dir = None
    if dist_ctx.enabled:
        box = [str(run_dir)]  # rank 0's; the others' is overwritten
        torch.distributed.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    cfg.out = str(Path(run_dir).resolve())  # recorded, as a resumed run's is: absolute, whatever the working folder
    if not dist_ctx.is_main:
        return run_dir, None
    claim = FolderClaim(run_dir, leftovers, alone="wait for that run to end (or stop it) and --resume it, or choose another --out")
    try:
        ensure_writable_dir(run_dir / "weights")
        save_split(run_dir / "split.json", data.train_ids, data.val_ids, seed=cfg.seed, val_fraction=cfg.val_fraction,
                   all_ids=data.stats.ids, presence=data.stats.presence)
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
    except BaseException:
        claim.release()
        raise
    return run_dir, claim


def loader_options(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """DataLoader settings every training loader shares: workers, pinned memory, worker seeding."""
    return dict(num_workers=cfg.workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init,
                persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers > 0 else None)


def check_batch_of_one(cfg: TrainConfig) -> None:
    """Refuse --batch 1 where BatchNorm cannot train one image a batch: DeepLabV3's ASPP pooling, a 1x1 deepest map."""
    if cfg.model.startswith("deeplabv3") and cfg.batch < 2:
        raise DronsegError("--batch 1 cannot train DeepLabV3 (its ASPP pooling BatchNorm needs 2+ images): use "
                           "--batch 2 or more, with --accumulate to save memory")
    if cfg.batch == 1:
        check_one_image_batches(cfg, "--batch 2 or more")


def check_one_image_batches(cfg: TrainConfig, fix: str) -> None:
    """Refuse training one image a batch at a --size whose deepest feature map is 1x1 (``fix``: how to avoid it)."""
    stride = check_output_stride(cfg.model, cfg.output_stride)  # BatchNorm cannot train on one value per channel
    if math.ceil(cfg.size[0] / stride) * math.ceil(cfg.size[1] / stride) == 1:
        raise DronsegError(f"--size {format_size(cfg.size)} leaves {cfg.model} a 1x1 deepest feature map (stride "
                           f"{stride}), on which BatchNorm cannot train one image a batch: give a --size over {stride} "
                           f"pixels wide or high ({2 * stride}x{stride}), or {fix}")


def build_loaders(cfg: TrainConfig, data: DataSetup, dist_ctx: DistContext) -> Loaders:
    """Train loader (shuffled, augmented, sharded over ranks) and validation loader (in order, no augmentation)."""
    train_set = SegmentationDataset([data.by_id[i] for i in data.train_ids], cfg.size, augment=cfg.augment,
                                    max_pixels=cfg.pixel_limit)
    val_set = SegmentationDataset([data.by_id[i] for i in data.val_ids], cfg.size, augment=None, max_pixels=cfg.pixel_limit)
    generator = torch.Generator()
    common = loader_options(cfg, dist_ctx.device)
    if dist_ctx.enabled:
        sampler: Sampler = DistributedSampler(train_set, num_replicas=dist_ctx.world_size, rank=dist_ctx.rank,
                                              shuffle=True, seed=cfg.seed)
        per_rank = math.ceil(len(train_set) / dist_ctx.world_size)
        val_set = Subset(val_set, list(range(dist_ctx.rank, len(val_set), dist_ctx.world_size)))
    else:
        sampler = RandomSampler(train_set, generator=generator)
        per_rank = len(train_set)
    if per_rank == 1 and cfg.model.startswith("deeplabv3"):  # one image a batch, which no batch can drop
        raise DronsegError(f"the train split has 1 image{' per process' * dist_ctx.enabled}, and DeepLabV3's ASPP pooling "
                           "BatchNorm needs 2+ a batch: add images, or lower --val-fraction")
    if per_rank == 1:  # --batch 1 is refused before the data checks (check_batch_of_one)
        check_one_image_batches(cfg, "add images, or lower --val-fraction")
    # BatchNorm cannot train on a final batch of one image; drop it only in that case.
    drop_last = per_rank % cfg.batch == 1 and per_rank > cfg.batch
    train_sampler = AugmentSeedSampler(sampler, cfg.seed)  # augmentation independent of worker state
    # Each loader draws its workers' base seed from its own generator (once per iterator, i.e. once per
    # run with persistent workers), so that draw cannot shift the global RNG of a resumed run (shuffle
    # order, dropout on the CPU).
    train_loader = DataLoader(train_set, batch_size=cfg.batch, sampler=train_sampler, drop_last=drop_last,
                              generator=torch.Generator().manual_seed(cfg.seed), **common)
    val_loader = DataLoader(val_set, batch_size=cfg.batch, sampler=SequentialSampler(val_set),
                            generator=torch.Generator().manual_seed(cfg.seed), **common)
    return Loaders(train_loader, val_loader, train_sampler, generator)


def optimizer_steps_per_epoch(cfg: TrainConfig, batches: int) -> int:
    """Optimiser steps of one epoch of ``batches`` micro-batches (the last partial group is stepped too),
    capped by ``cfg.max_steps_per_epoch``."""
    per_epoch = math.ceil(batches / cfg.accumulate)
    return min(per_epoch, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else per_epoch


def prepare_model(cfg: TrainConfig, device: torch.device, steps_per_epoch: int, ckpt: dict[str, Any] | None = None,
                  *, distributed: bool = False, weights: dict[str, torch.Tensor] | None = None) -> ModelSetup:
    """The model on ``device`` with its optimiser, schedule (``cfg.epochs * steps_per_epoch`` optimiser steps)
    and scaler; resuming from the loaded checkpoint ``ckpt`` restores their states and the RNG states.
    ``weights``: the tensors of a ``cfg.weights`` file, read already (models.read_weights_file)."""
    # A resumed run's weights are the checkpoint's: its starting --weights (a file since moved, a path typed relative
    # to another folder, a download) are not read again.
    model = build_model(cfg.model, num_classes=len(CLASS_NAMES), weights=cfg.weights if ckpt is None else "none",
                        aux_loss=cfg.aux_loss, output_stride=cfg.output_stride, state=weights)
    if cfg.bn_momentum is not None:
        set_bn_momentum(model, cfg.bn_momentum)
    channels_last = cfg.channels_last and device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if cfg.sync_bn and distributed:
        if device.type != "cuda":  # torch's DDP refuses it there: a ValueError traceback on every rank
            raise DronsegError(f"--sync-bn needs CUDA GPUs (torch's SyncBatchNorm), not the {device.type}: drop it")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, cfg.epochs * steps_per_epoch)
    dtype = amp_dtype(cfg.amp, device)
    scaler = make_scaler(dtype, device)
    start_epoch = 0
    if ckpt is not None:
        resumed = TrainingState.from_checkpoint(ckpt)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(resumed.optimizer)
        _check_same_schedule(scheduler.state_dict(), resumed.scheduler)
        scheduler.load_state_dict(resumed.scheduler)
        restore_scaler(scaler, resumed.scaler)
        # After build_model: its initialisation draws from the generators restored here.
        restore_rng_state(resumed.rng)
        start_epoch = resumed.epoch
    frozen = cfg.freeze_stages > 0 and not (cfg.unfreeze_epoch and start_epoch >= cfg.unfreeze_epoch)
    if frozen:
        freeze_backbone_stages(model, cfg.freeze_stages)
    compiled = torch.compile(model) if cfg.compile else model
    return ModelSetup(model, compiled, optimizer, scheduler, scaler, dtype, channels_last, frozen)


def _check_same_schedule(planned: dict, saved: dict) -> None:
    """A resumed run makes as many optimiser steps as the saved schedule counts on: another number of
    torchrun processes (or another data set) would step it past its end, or along the wrong curve."""
    for key in ("total_steps", "total_iters"):  # OneCycleLR's, PolynomialLR's
        if key in planned and saved.get(key) != planned[key]:
            raise DronsegError(f"cannot resume: the run was planned for {saved.get(key)} optimiser steps and would now "
                               f"make {planned[key]} (another number of processes, or other data); resume it with the "
                               "torchrun --nproc-per-node it started with")


def build_criterion(cfg: TrainConfig, device: torch.device, data: DataSetup | None = None) -> nn.Module:
    """The loss of ``cfg``; class weights (``cfg.class_weights``) come from the train split's pixel counts in ``data``."""
    weights = None  # without ``data`` (the throughput benchmark) ``cfg.class_weights`` must be "none"
    if cfg.class_weights != "none":
        weights = class_weights_from_counts(data.stats.counts_for(data.train_ids), method=cfg.class_weights).to(device)
    return build_loss(cfg.loss, class_weights=weights, ignore_index=IGNORE_INDEX, **cfg.loss_settings)


def step_context(setup: ModelSetup, device: torch.device) -> StepContext:
    """Device, autocast dtype and ImageNet normalisation for the steps of ``setup``'s model."""
    return StepContext(device, setup.amp_dtype, channels_last=setup.channels_last)
