"""Segmentation losses: pure functions, made modules by ``build_loss`` (which checks their settings once).

Every loss takes logits (N, C, H, W) of any float dtype and a target (N, H, W) of class indices,
computes in float32 (also under autocast: fp16 softmax sums lose too much), skips pixels equal to
``ignore_index`` everywhere, and returns a 0-dim float32 tensor. A batch whose pixels are all
ignored gives a finite loss and gradient, not NaN (0; Dice and Tversky with ``smooth=0`` give 1), so
one bad crop cannot poison the weights.

Soft Dice is Tversky with alpha = beta = 0.5: one formula in one place (``tversky_loss``).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dronseg_edge.classes import IGNORE_INDEX
from dronseg_edge.errors import DronsegError
from dronseg_edge.option_fields import one_of

LOSS_NAMES = ("ce", "focal", "dice", "focal+dice", "tversky")
WEIGHT_METHODS = ("inverse_sqrt", "inverse", "none")

# Smallest denominator/argument used where an exact 0 would give NaN (0/0) or -inf (log 0).
_EPS = 1e-7


def _prepare(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """float32 logits, int64 target with ignored pixels replaced by class 0, and the (N, H, W) valid mask."""
    if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"expected logits (N, C, H, W) and target (N, H, W); got {tuple(logits.shape)} and {tuple(target.shape)}")
    target = target.to(device=logits.device, dtype=torch.long)
    valid = target != ignore_index
    # Ignored pixels need *some* in-range index for gather/scatter; their contribution is masked out.
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    return logits.float(), safe_target, valid


def _per_class(values, num_classes: int, what: str, device: torch.device) -> torch.Tensor | None:
    """A (C,) float32 tensor on ``device`` from a tensor/sequence, or None."""
    if values is None:
        return None
    tensor = torch.as_tensor(values, dtype=torch.float32, device=device).reshape(-1)
    if tensor.numel() != num_classes:
        raise DronsegError(f"{what} has {tensor.numel()} entries but the model predicts {num_classes} classes; give one per class")
    return tensor


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, class_weights=None,
                  ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0) -> torch.Tensor:
    """Pixel-wise cross-entropy averaged like torch's ``reduction="mean"`` (with ``class_weights`` (C,):
    sum(w_y * loss) / sum(w_y) over valid pixels)."""
    logits, safe_target, valid = _prepare(logits, target, ignore_index)
    weights = _per_class(class_weights, logits.shape[1], "class_weights", logits.device)
    # reduction="none" and our own division: torch's "mean" returns NaN when every pixel is ignored.
    pixel_loss = F.cross_entropy(logits, safe_target, weight=weights, reduction="none", label_smoothing=label_smoothing)
    pixel_weight = valid.float() if weights is None else weights[safe_target] * valid
    return (pixel_loss * valid).sum() / pixel_weight.sum().clamp_min(_EPS)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0, alpha=None,
               class_weights=None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Multiclass focal loss -alpha_t (1 - p_t)^gamma log p_t (Lin et al. 2017); ``alpha``: None, a float or (C,).

    Averaged as ``cross_entropy`` is, which it equals at gamma=0, alpha=None with the same ``class_weights``.
    """
    logits, safe_target, valid = _prepare(logits, target, ignore_index)
    num_classes = logits.shape[1]
    log_p_t = F.log_softmax(logits, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    pixel_loss = -log_p_t
    if gamma > 0:
        # 1 - p_t via expm1 keeps precision when p_t is near 1; the floor keeps d/dp of
        # (1 - p)^gamma finite for gamma < 1 when the prediction is exactly right.
        one_minus_p = (-torch.expm1(log_p_t)).clamp_min(torch.finfo(torch.float32).tiny)
        pixel_loss = one_minus_p.pow(gamma) * pixel_loss
    if alpha is not None:
        scale = float(alpha) if isinstance(alpha, (int, float)) else _per_class(alpha, num_classes, "focal alpha", logits.device)[safe_target]
        pixel_loss = pixel_loss * scale
    weights = _per_class(class_weights, num_classes, "class_weights", logits.device)
    pixel_weight = valid.float() if weights is None else weights[safe_target] * valid
    return (pixel_loss * pixel_weight).sum() / pixel_weight.sum().clamp_min(_EPS)


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 0.5, beta: float = 0.5,
                 smooth: float = 1.0, class_weights=None, ignore_index: int = IGNORE_INDEX,
                 log: bool = False) -> torch.Tensor:
    """Soft Tversky loss over the whole batch, per class, then averaged over classes.

    With p = softmax(logits) and one-hot targets summed over valid pixels, TI_c = (TP_c + smooth) /
    (TP_c + alpha FP_c + beta FN_c + smooth); the loss is the (``class_weights``-weighted) mean of 1 - TI_c,
    or of -log(TI_c) when ``log``. beta > alpha favours recall, which helps the small classes.
    """
    logits, safe_target, valid = _prepare(logits, target, ignore_index)
    num_classes = logits.shape[1]
    mask = valid.unsqueeze(1).float()
    probs = F.softmax(logits, dim=1) * mask
    # scatter_ rather than F.one_hot: one_hot checks the index range with a host sync on CUDA.
    truth = torch.zeros_like(probs).scatter_(1, safe_target.unsqueeze(1), 1.0) * mask
    tp, fp, fn = (probs * truth).sum((0, 2, 3)), (probs * (1 - truth)).sum((0, 2, 3)), ((1 - probs) * truth).sum((0, 2, 3))
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(_EPS)
    per_class = -torch.log(index.clamp_min(_EPS)) if log else 1.0 - index
    weights = _per_class(class_weights, num_classes, "class_weights", logits.device)
    if weights is None:
        return per_class.mean()
    return (per_class * weights).sum() / weights.sum().clamp_min(_EPS)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0, class_weights=None,
                   ignore_index: int = IGNORE_INDEX, log: bool = False) -> torch.Tensor:
    """Soft Dice loss over the whole batch, per class: Dice_c = (2 I_c + smooth) / (P_c + T_c + smooth).

    That is Tversky with alpha = beta = 0.5 and smooth / 2, since (TP + s/2) / (TP + FP/2 + FN/2 + s/2)
    = (2TP + s) / (P + T + s).
    """
    return tversky_loss(logits, target, alpha=0.5, beta=0.5, smooth=smooth / 2.0, class_weights=class_weights,
                        ignore_index=ignore_index, log=log)


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, focal_weight: float = 1.0, dice_weight: float = 1.0,
                    gamma: float = 2.0, alpha=None, smooth: float = 1.0, log: bool = False, class_weights=None,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """focal_weight * focal + dice_weight * soft Dice (the reference recipe); class weights go to both."""
    focal = focal_loss(logits, target, gamma=gamma, alpha=alpha, class_weights=class_weights, ignore_index=ignore_index)
    dice = soft_dice_loss(logits, target, smooth=smooth, class_weights=class_weights, ignore_index=ignore_index, log=log)
    return focal_weight * focal + dice_weight * dice


class Loss(nn.Module):
    """``fn(logits, target, **settings)`` as a module; per-class settings are buffers, so ``.to(device)`` moves them."""

    def __init__(self, fn: Callable[..., torch.Tensor], **settings):
        super().__init__()
        self.fn, self.settings = fn, {}
        for key, value in settings.items():
            if value is None or isinstance(value, (bool, int, float)):
                self.settings[key] = value
            else:
                self.register_buffer(key, torch.as_tensor(value, dtype=torch.float32).reshape(-1).clone(), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, target, **self.settings, **dict(self.named_buffers()))


def build_loss(name: str, *, class_weights=None, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0,
               focal_gamma: float = 2.0, focal_alpha=None, dice_smooth: float = 1.0, dice_log: bool = False,
               focal_weight: float = 1.0, dice_weight: float = 1.0, tversky_alpha: float = 0.3,
               tversky_beta: float = 0.7) -> nn.Module:
    """The loss module for ``name`` in LOSS_NAMES; ``forward(logits (N,C,H,W), target (N,H,W)) -> 0-dim float32``.

    ``dice_smooth`` and ``dice_log`` also apply to "tversky" (there smooth is Tversky's own term).
    """
    ranges = [("label_smoothing", label_smoothing, 0.0 <= label_smoothing < 1.0, "[0.0, 1.0)")]
    ranges += [(setting, float(value), 0 <= value < math.inf, "[0.0, inf)") for setting, value in (
        ("focal gamma", focal_gamma), ("dice smooth", dice_smooth), ("focal_weight", focal_weight), ("dice_weight", dice_weight),
        ("tversky alpha", tversky_alpha), ("tversky beta", tversky_beta),
        ("focal alpha", focal_alpha if isinstance(focal_alpha, (int, float)) else 0.0))]
    for setting, value, ok, bound in ranges:
        if not ok:
            raise DronsegError(f"loss setting {setting}={value} is out of range; use a value in {bound}")
    common = dict(class_weights=class_weights, ignore_index=ignore_index)
    focal = dict(gamma=focal_gamma, alpha=focal_alpha, **common)
    losses = {
        "ce": lambda: Loss(cross_entropy, label_smoothing=label_smoothing, **common),
        "focal": lambda: Loss(focal_loss, **focal),
        "dice": lambda: Loss(soft_dice_loss, smooth=dice_smooth, log=dice_log, **common),
        "focal+dice": lambda: Loss(focal_dice_loss, focal_weight=focal_weight, dice_weight=dice_weight,
                                   smooth=dice_smooth, log=dice_log, **focal),
        "tversky": lambda: Loss(tversky_loss, alpha=tversky_alpha, beta=tversky_beta, smooth=dice_smooth, log=dice_log,
                                **common),
    }
    key = name.strip().lower()
    one_of(key, "--loss", LOSS_NAMES)
    return losses[key]()


def class_weights_from_counts(pixel_counts: Sequence[float] | np.ndarray | torch.Tensor, method: str = "inverse_sqrt",
                              max_ratio: float | None = 10.0) -> torch.Tensor:
    """Per-class loss weights (C,) float32 with mean 1, from training-set pixel counts (C,).

    "inverse": w_c = 1 / f_c with f_c the pixel share (median-frequency balancing, median(f) / f_c,
    is the same after the normalisation to mean 1); "inverse_sqrt": 1 / sqrt(f_c), gentler;
    "none": all ones. ``max_ratio`` caps largest/smallest weight among the classes present (None:
    no cap), so a class with a handful of pixels cannot dominate the gradient. A class with no
    pixels gets the largest weight: it may still appear in validation or test images.
    """
    one_of(method, "--class-weights", WEIGHT_METHODS)
    counts = torch.as_tensor(pixel_counts, dtype=torch.float64).cpu().numpy()
    if counts.ndim != 1 or counts.size == 0 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise DronsegError(f"pixel counts must be one finite, non-negative number per class; got {counts.tolist()}")
    if max_ratio is not None and max_ratio < 1:
        raise DronsegError(f"max_ratio={max_ratio} must be at least 1 (largest weight / smallest weight), or None")
    present = counts > 0
    if not present.any():
        raise DronsegError("pixel counts are all zero: the training set has no labelled pixels; check the masks")
    if method == "none":
        return torch.ones(counts.size, dtype=torch.float32)
    share = counts[present] / counts.sum()
    weights_present = 1.0 / share if method == "inverse" else 1.0 / np.sqrt(share)
    if max_ratio is not None:
        weights_present = np.minimum(weights_present, max_ratio * weights_present.min())
    weights = np.full(counts.size, weights_present.max())
    weights[present] = weights_present
    return torch.as_tensor(weights / weights.mean(), dtype=torch.float32)
