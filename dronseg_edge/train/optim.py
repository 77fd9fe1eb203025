"""Optimisers with three parameter groups, and learning-rate schedules stepped per optimiser step."""

from __future__ import annotations

import torch
from torch import nn

from dronseg_edge.train.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """YOLO-style groups: conv/linear weights (decayed), normalisation weights and biases (no decay). Frozen
    parameters are included, so unfreezing needs no new optimiser."""
    groups: dict[str, list] = {"weights": [], "norm": [], "bias": []}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
            groups["bias" if name == "bias" else "norm" if norm else "weights"].append(param)
    return [{"params": params, "weight_decay": weight_decay if name == "weights" else 0.0, "name": name}
            for name, params in groups.items()]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over all parameters (``parameter_groups``)."""
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """OneCycle (peak ``cfg.lr``), constant or poly; ``total_steps`` counts optimiser steps, not micro-batches."""
    total_steps = max(1, int(total_steps))
    if cfg.scheduler == "onecycle":
        # OneCycleLR's warm-up ends at step pct_start * total_steps - 1; where that is step 0 (10 steps at
        # the default 0.1) its first step divides by zero: the peak is then at step 1 (at 0.5 of 2 steps,
        # since a warm-up ending at the last step divides by zero too).
        pct_start = cfg.pct_start
        if pct_start * total_steps == 1:
            pct_start = (2.0 if total_steps > 2 else 1.5) / total_steps
        # Momentum cycles within 0.05 of --momentum, below 1 (torch's own 0.85..0.95 replaced any --momentum given)
        base_momentum, max_momentum = max(cfg.momentum - 0.05, 0.0), min(cfg.momentum + 0.05, (1 + cfg.momentum) / 2)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=pct_start,
                                                   div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
                                                   cycle_momentum=cfg.optimizer == "sgd" and cfg.momentum > 0,
                                                   base_momentum=base_momentum, max_momentum=max_momentum)
    if cfg.scheduler == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=cfg.poly_power)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
