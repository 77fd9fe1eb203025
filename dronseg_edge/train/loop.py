"""One training epoch and one evaluation pass, read top to bottom (torchvision references style)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dronseg_edge.classes import IMAGENET_MEAN, IMAGENET_STD
from dronseg_edge.models import keep_frozen_norms_in_eval
from dronseg_edge.train.distributed import all_reduce_sum
from dronseg_edge.metrics import SegmentationMetrics


@dataclass
class StepContext:
    """What every step needs besides the model: device, precision and normalisation."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32
    mean: torch.Tensor | Sequence[float] = IMAGENET_MEAN  # 3 values, 0..1 scale; kept as (1, 3, 1, 1) on device
    std: torch.Tensor | Sequence[float] = IMAGENET_STD
    channels_last: bool = False

    def __post_init__(self):
        self.mean, self.std = (torch.as_tensor(v, device=self.device).view(1, 3, 1, 1) for v in (self.mean, self.std))

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def images(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) RGB -> normalised float32 on the device (uploads 1 byte per value, not 4)."""
        x = images_u8.to(self.device, non_blocking=True).float().div_(255.0).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def targets(self, masks_u8: torch.Tensor) -> torch.Tensor:
        return masks_u8.to(self.device, non_blocking=True).long()


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    scaler: torch.amp.GradScaler, loader: Iterable, ctx: StepContext, *, accumulate: int = 1,
                    grad_clip: float = 0.0, aux_weight: float = 0.4, max_steps: int = 0,
                    description: str = "train", show_progress: bool = True,
                    on_step: Callable[[int, torch.Tensor, int], None] | None = None) -> dict[str, float]:
    """Train for one pass over ``loader``; returns loss, images, seconds, data_wait_s, steps.

    Gradients accumulate over ``accumulate`` micro-batches, each micro-loss divided by its group's size
    (the last, partial group included); the scheduler steps once per optimiser step, after which
    ``on_step(steps, loss_sum, images)`` gets this rank's running totals.
    """
    model.train()
    # train() flips every BatchNorm back to batch statistics; frozen stages must keep their running ones,
    # and this is the one place every epoch (after evaluate's eval()) passes through.
    keep_frozen_norms_in_eval(model)
    num_batches = min(len(loader), max_steps * accumulate) if max_steps else len(loader)
    loss_sum = torch.zeros((), device=ctx.device)
    images = steps = data_wait = 0
    start = time.perf_counter()
    bar = tqdm(total=num_batches, desc=description, disable=not show_progress, mininterval=1.0, leave=False, dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]  # the rate of the epoch's last step (metrics.csv), not the next one's
    t0 = time.perf_counter()
    for index, (images_u8, masks_u8) in zip(range(num_batches), loader):  # range first: no batch drawn past the end
        data_wait += time.perf_counter() - t0
        group_start = index - index % accumulate
        group_size = min(accumulate, num_batches - group_start)
        last_in_group = index - group_start == group_size - 1
        x, y = ctx.images(images_u8), ctx.targets(masks_u8)
        sync = contextlib.nullcontext() if last_in_group or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with ctx.autocast():
                outputs = model(x)
                loss = criterion(outputs["out"], y)
                if outputs.get("aux") is not None:  # the aux head, when the model has one, adds aux_weight x its loss
                    loss = loss + aux_weight * criterion(outputs["aux"], y)
            scaler.scale(loss / group_size).backward()
        loss_sum += loss.detach() * x.shape[0]
        images += x.shape[0]
        if last_in_group:  # one optimiser step on the accumulated gradients, then the schedule's
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            steps += 1
            if on_step is not None:
                on_step(steps, loss_sum, images)
        bar.update(1)
        if show_progress and (index % 10 == 0 or index == num_batches - 1):
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{(loss_sum / max(images, 1)).item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{images / max(elapsed, 1e-9):.3g}", wait=f"{100 * data_wait / max(elapsed, 1e-9):.0f}%")
        t0 = time.perf_counter()
    bar.close()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    totals = all_reduce_sum(torch.stack([loss_sum.float(), torch.tensor(float(images), device=ctx.device)]))
    return {"loss": (totals[0] / totals[1].clamp(min=1)).item(), "images": int(totals[1].item()),
            "seconds": time.perf_counter() - start, "data_wait_s": data_wait, "steps": steps, "lr": lr}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module | None, loader: Iterable, ctx: StepContext,
             metrics: SegmentationMetrics, *, description: str = "val", show_progress: bool = True) -> dict:
    """Loss and scores over ``loader`` (reduced over ranks). Logits are resized to the mask size when they differ
    (evaluation at native resolution), so metrics are always computed at the ground truth's own size."""
    model.eval()
    metrics.reset(ctx.device)
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)
    count = 0
    for images_u8, masks_u8 in tqdm(loader, desc=description, disable=not show_progress, leave=False, mininterval=1.0):
        x, y = ctx.images(images_u8), ctx.targets(masks_u8)
        with ctx.autocast():
            logits = model(x)["out"]
        logits = logits.float()
        if logits.shape[-2:] != y.shape[-2:]:
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        if criterion is not None:
            loss_sum += criterion(logits, y).double() * x.shape[0]
        count += x.shape[0]
        metrics.update(logits.argmax(dim=1), y)
    totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(count), device=ctx.device, dtype=torch.float64)]))
    metrics.all_reduce(ctx.device)
    result = metrics.compute()
    result["loss"] = (totals[0] / totals[1].clamp(min=1)).item() if criterion is not None else float("nan")
    return result
