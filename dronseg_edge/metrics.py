"""Segmentation metrics: accumulate a confusion matrix once, reduce at the end.

Conventions: confusion rows are ground truth, columns are prediction. Pixels whose truth equals
``ignore_index``, or whose truth or prediction lies outside 0..C-1, count nowhere (the dataset
reader rejects masks with out-of-range values before training starts).

Two Dice flavours exist and both are reported:
- ``dice`` / ``mdice``: per class over all pixels of all images (NaN when a class is absent from
  both truth and prediction; nan-mean over classes);
- ``competition``: the Kaggle metric, Dice per (image, class) pair with 1.0 when the class is
  absent from both, averaged over every pair (docs/facts.md#kaggle-format).
"""

from __future__ import annotations

import math

import torch

from dronseg_edge.classes import CLASS_NAMES, IGNORE_INDEX


def image_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Confusion matrix per image (N, C, C) int64 on the inputs' device from (N, H, W) or (H, W) class maps."""
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("metrics take class maps (integer tensors); apply argmax(dim=1) to the logits first")
    pred, target = (t.unsqueeze(0) if t.ndim == 2 else t for t in (pred, target))
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"expected pred and target (N, H, W) of the same shape; got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.long(), target.to(device=pred.device, dtype=torch.long)
    n, c = pred.shape[0], num_classes
    valid = (target != ignore_index) & (target >= 0) & (target < c) & (pred >= 0) & (pred < c)
    image = torch.arange(n, device=pred.device).view(n, 1, 1)
    # Invalid pixels go to one overflow bin past the end instead of being removed by boolean
    # indexing, which would need a host sync to size its result.
    index = torch.where(valid, image * (c * c) + target * c + pred, torch.full_like(target, n * c * c))
    counts = torch.bincount(index.reshape(-1), minlength=n * c * c + 1)
    return counts[: n * c * c].view(n, c, c)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(C, C) int64 confusion matrix on the inputs' device from (N, H, W) or (H, W) class maps."""
    return image_confusion(pred, target, num_classes, ignore_index).sum(0)


def _true_pred_positives(cm: torch.Tensor):
    """Diagonal, truth totals and prediction totals (float64) of (..., C, C) confusion matrices."""
    cm = cm.double()
    return cm.diagonal(dim1=-2, dim2=-1), cm.sum(-1), cm.sum(-2)


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """IoU per class (C,) float64 = TP / (TP + FP + FN); NaN where the class is absent from truth and prediction."""
    tp, truth, predicted = _true_pred_positives(cm)
    union = truth + predicted - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def dice_from_confusion(cm: torch.Tensor, absent: float = math.nan) -> torch.Tensor:
    """Dice per class (..., C) float64 = 2TP / (2TP + FP + FN) from (..., C, C); ``absent`` where the class is
    absent from truth and prediction (NaN; 1.0 for the competition's per-image Dice)."""
    tp, truth, predicted = _true_pred_positives(cm)
    total = truth + predicted
    return torch.where(total > 0, 2 * tp / total.clamp_min(1), torch.full_like(tp, absent))


def reduce_device(current: torch.device, backend: str, device: torch.device | str | None = None) -> torch.device:
    """Where metric state must be to be all-reduced: ``device`` when given, else a CUDA device for NCCL
    (a rank that saw no image still holds the CPU state it was created with), else where it is."""
    if device is not None:
        return torch.device(device)
    if backend == "nccl" and current.type != "cuda":
        return torch.device("cuda")  # the current CUDA device, which torchrun code sets per rank
    return current


class SegmentationMetrics:
    """Accumulates a confusion matrix and competition-Dice sums over batches; ``compute()`` reduces.

    State lives on the device of the tensors given to ``update`` (no host sync besides ``torch.bincount``'s
    on CUDA). In DDP call ``all_reduce()`` once on every rank before ``compute()``.
    """

    def __init__(self, num_classes: int = len(CLASS_NAMES), ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset("cpu")

    def reset(self, device: torch.device | str | None = None) -> None:
        """Forget all batches; the state stays on its device unless ``device`` is given."""
        device = device if device is not None else self.confusion.device
        c = self.num_classes
        self.confusion = torch.zeros(c, c, dtype=torch.int64, device=device)
        # Sum over images of the competition Dice per class, then the image count: float64, so one all_reduce sums both.
        self.image_stats = torch.zeros(c + 1, dtype=torch.float64, device=device)

    def _to(self, device: torch.device) -> None:
        self.confusion, self.image_stats = self.confusion.to(device), self.image_stats.to(device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: pred and target (N, H, W) (or (H, W)) integer class maps, same shape, any device."""
        self._to(pred.device)
        per_image = image_confusion(pred, target, self.num_classes, self.ignore_index)
        self.confusion += per_image.sum(0)
        self.image_stats[:-1] += dice_from_confusion(per_image, absent=1.0).sum(0)
        self.image_stats[-1] += per_image.shape[0]

    def all_reduce(self, device: torch.device | str | None = None) -> None:
        """Sum the state over torch.distributed ranks (a no-op without a process group), on ``device``
        (default: one the group's backend can reduce, ``reduce_device``)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        self._to(reduce_device(self.confusion.device, dist.get_backend(), device))
        dist.all_reduce(self.confusion, op=dist.ReduceOp.SUM)
        dist.all_reduce(self.image_stats, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        """Scores so far: miou, mdice, iou, dice, pixel_acc, competition, competition_per_class, images, confusion.
        Per-class lists hold floats (NaN: absent from truth and prediction); means are nan-means; NaN before any update."""
        cm = self.confusion.cpu()
        iou, dice = iou_from_confusion(cm), dice_from_confusion(cm)
        dice_sum, images = self.image_stats[:-1].cpu(), int(self.image_stats[-1].item())
        return {"miou": iou.nanmean().item(), "mdice": dice.nanmean().item(), "iou": iou.tolist(), "dice": dice.tolist(),
                # Before any update these are 0 / 0: NaN.
                "pixel_acc": (cm.double().trace() / cm.sum()).item(),
                "competition": (dice_sum.sum() / (images * self.num_classes)).item(),
                "competition_per_class": (dice_sum / images).tolist(), "images": images, "confusion": cm.tolist()}
