"""Everything a training run is configured by; stored (as a plain dict) in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dronseg_edge.data.augment import AugmentConfig
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, check_max_pixels
from dronseg_edge.train.losses import LOSS_NAMES, WEIGHT_METHODS

SCHEDULERS = ("onecycle", "constant", "poly")
OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("auto", "fp16", "bf16", "off")
BEST_METRICS = ("miou", "mdice", "competition", "val_loss")


@dataclass
class TrainConfig:
    data: str
    out: str = ""
    model: str = "deeplabv3_resnet101"
    weights: str = "coco"
    aux_loss: bool = False
    aux_weight: float = 0.4
    output_stride: int | None = None  # None: the model's torchvision default (8 for the ResNets, 16 for MobileNetV3)
    bn_momentum: float | None = None  # None keeps the model's (torchvision MobileNetV3: 0.01)
    freeze_stages: int = 0
    unfreeze_epoch: int = 0  # 0: never unfreeze
    epochs: int = 30
    batch: int = 4
    accumulate: int = 1
    size: tuple[int, int] = (1280, 720)  # (W, H)
    loss: str = "focal+dice"
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    focal_weight: float = 1.0
    dice_weight: float = 1.0
    dice_smooth: float = 1.0
    dice_log: bool = False
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | inverse_sqrt | inverse
    optimizer: str = "sgd"
    lr: float = 0.01  # peak (max) learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    scheduler: str = "onecycle"
    pct_start: float = 0.1
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    poly_power: float = 0.9
    grad_clip: float = 0.0  # max grad norm; 0 disables
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    sync_bn: bool = False
    device: str = "auto"
    workers: int = 4
    val_fraction: float = 0.2
    seed: int = 0
    best_metric: str = "miou"
    val_every: int = 1
    val_at_start: bool = False  # score the initial weights as "epoch 0" (the baseline training must beat)
    tensorboard: bool = True
    plots: bool = True
    mosaic_every: int = 5  # validation mosaics (image | truth | prediction) every N epochs and at the end; 0: none
    max_steps_per_epoch: int = 0  # 0: whole epoch (a cap for smoke runs and benchmarks)
    save_every_steps: int = 0  # also write weights/last.pt every N optimiser steps mid-epoch; 0: at epoch ends only
    max_pixels: int | None = None  # images and masks above it are refused (--max-pixels); None: the default, 2^26
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> "TrainConfig":
        checks = [
            (self.loss in LOSS_NAMES, f"--loss {self.loss!r}: choose one of {', '.join(LOSS_NAMES)}"),
            (self.scheduler in SCHEDULERS, f"--scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"),
            (self.amp in AMP_MODES, f"--amp {self.amp!r}: choose one of {', '.join(AMP_MODES)}"),
            (self.best_metric in BEST_METRICS, f"--best-metric {self.best_metric!r}: choose one of {', '.join(BEST_METRICS)}"),
            (self.class_weights in WEIGHT_METHODS, f"--class-weights {self.class_weights!r}: choose one of {', '.join(WEIGHT_METHODS)}"),
            (self.epochs >= 1, f"--epochs {self.epochs}: must be at least 1"),
            (self.batch >= 1, f"--batch {self.batch}: must be at least 1"),
            (self.accumulate >= 1, f"--accumulate {self.accumulate}: must be at least 1"),
            (self.lr > 0, f"--lr {self.lr}: must be positive"),
            (self.workers >= 0, f"--workers {self.workers}: must be 0 or more"),
            (0.0 < self.pct_start < 1.0, f"--pct-start {self.pct_start}: must be between 0 and 1"),
            (self.grad_clip >= 0, f"--grad-clip {self.grad_clip}: must be 0 (off) or positive"),
            (self.bn_momentum is None or 0.0 < self.bn_momentum <= 1.0, f"--bn-momentum {self.bn_momentum}: must be in (0, 1]"),
            (self.freeze_stages >= 0, f"--freeze-stages {self.freeze_stages}: must be 0 or more"),
            (self.save_every_steps >= 0, f"--save-every-steps {self.save_every_steps}: must be 0 (epoch ends only) or more"),
            (self.output_stride in (None, 8, 16), f"--output-stride {self.output_stride}: choose 8 or 16"),
            (self.mosaic_every >= 0, f"--mosaic-every {self.mosaic_every}: must be 0 (no mosaics) or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise DronsegError(message)
        if self.max_pixels is not None:
            check_max_pixels(self.max_pixels)
        return self

    @property
    def pixel_limit(self) -> int:
        """Pixels an image or mask may hold (its header is read before it is decoded)."""
        return self.max_pixels if self.max_pixels is not None else DEFAULT_MAX_PIXELS

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["size"] = list(self.size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["size"] = tuple(values.get("size", (1280, 720)))
        aug_known = {f.name for f in dataclasses.fields(AugmentConfig)}
        values["augment"] = AugmentConfig(**{k: v for k, v in (values.get("augment") or {}).items() if k in aug_known})
        return cls(**values)
