"""Everything a training run is configured by; stored (as a plain dict) in every checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Collection

from dronseg_edge.data.augment import AugmentConfig
from dronseg_edge.devices import DEVICE
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, MAX_PIXELS, check_max_pixels
from dronseg_edge.option_fields import number, one_of, option, option_fields, option_group, whole
from dronseg_edge.sizes import parse_size

SCHEDULERS = ("onecycle", "constant", "poly")
OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("auto", "fp16", "bf16", "off")
BEST_METRICS = ("miou", "mdice", "competition", "val_loss")
AT_LEAST_ONE = ("epochs", "batch", "accumulate", "val_every", "output_stride", "max_pixels")  # other ints: 0 or more
RESUME_OPTIONS = ("data", "device", "workers", "max_pixels")  # what a resumed run takes anew; the rest is its own
DICE_LOSSES = ("dice", "focal+dice", "tversky")
# Settings that only some choices read: (settings, the option choosing, the choices that read them).
READ_ONLY_BY = ((("label_smoothing",), "loss", ("ce",)), (("focal_gamma", "focal_alpha"), "loss", ("focal", "focal+dice")),
                (("focal_weight", "dice_weight"), "loss", ("focal+dice",)), (("dice_smooth", "dice_log"), "loss", DICE_LOSSES),
                (("tversky_alpha", "tversky_beta"), "loss", ("tversky",)), (("momentum", "nesterov"), "optimizer", ("sgd",)),
                (("pct_start", "div_factor", "final_div_factor"), "scheduler", ("onecycle",)),
                (("poly_power",), "scheduler", ("poly",)), (("aux_loss",), "model", ("deeplabv3_resnet101",
                                                            "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large")))


@dataclass
class TrainConfig:
    """A training run's settings; the fields with help text are `train`'s options (option_fields.py)."""

    data: str = option("", "Data set root in the Kaggle AeroScapes layout (see `synth`).",
                       default_text="none: needed for a new run; with --resume the run's own", metavar="DIR")
    out: str = option("", "Run folder.", default_text="runs/train/expN", metavar="DIR")
    model: str = option("deeplabv3_resnet101", "deeplabv3_resnet101 | deeplabv3_resnet50 | "
                                               "deeplabv3_mobilenet_v3_large | lraspp_mobilenet_v3_large")
    weights: str = option("coco", "coco | imagenet | none | PATH to a .pt/.pth file")
    aux_loss: bool = option(False, "DeepLabV3 auxiliary head.")
    aux_weight: float = 0.4
    output_stride: int | None = option(None, "8 | 16: input / feature-map size of the DeepLabV3 ResNets (16 needs "
                                             "~3.5x fewer operations: ResNet-101 at 1280x720 238 vs 848 GMACs, with "
                                             "coarser features). MobileNetV3 models exist at 16 only.",
                                       default_text="8 for the ResNets, 16 for MobileNetV3")
    bn_momentum: float | None = option(None, "Override BatchNorm momentum (0.1 for short runs from scratch).",
                                       default_text="the model's; MobileNetV3 0.01")
    freeze_stages: int = option(0, "Freeze the first N backbone stages.")
    unfreeze_epoch: int = option(0, "Unfreeze them after this many epochs (0: never): 2 trains epochs 1-2 frozen, "
                                    "3 on unfrozen.")
    epochs: int = option(30, "Training epochs.")
    batch: int = option(4, "Images per micro-batch (per GPU under torchrun).")
    accumulate: int = option(1, "Micro-batches per optimiser step.")
    size: tuple[int, int] = option((1280, 720), "Training size WxH (images are resized to it).", parse=parse_size)
    loss: str = option("focal+dice", "focal+dice | focal | dice | tversky | ce")
    focal_gamma: float = option(2.0, "Focal loss focusing exponent (0: cross-entropy).")
    focal_alpha: float | None = option(None, "Focal loss: a constant weight alpha on every pixel's term.", default_text="off")
    focal_weight: float = option(1.0, "Weight of focal in focal+dice.")
    dice_weight: float = option(1.0, "Weight of Dice in focal+dice.")
    dice_smooth: float = option(1.0, "Dice smoothing added to numerator and denominator.")
    dice_log: bool = option(False, "-log(dice) instead of 1-dice.")
    tversky_alpha: float = option(0.3, "Tversky weight of false positives.")
    tversky_beta: float = option(0.7, "Tversky weight of false negatives.")
    label_smoothing: float = option(0.0, "Cross-entropy label smoothing.")
    class_weights: str = option("none", "none | inverse_sqrt | inverse (from the train split's pixel counts)")
    optimizer: str = option("sgd", " | ".join(OPTIMIZERS))
    lr: float = option(0.01, "Peak learning rate (OneCycle max_lr).")
    momentum: float = option(0.9, "SGD momentum (OneCycle cycles it within 0.05 of this, below 1).")
    nesterov: bool = option(True, "Nesterov momentum (SGD).")
    weight_decay: float = option(1e-4, "Weight decay.")
    scheduler: str = option("onecycle", " | ".join(SCHEDULERS))
    pct_start: float = option(0.1, "OneCycle warm-up share.")
    div_factor: float = option(25.0, "OneCycle: initial lr = lr / div_factor.")
    final_div_factor: float = option(1e4, "OneCycle: final lr = initial lr / final_div_factor.")
    poly_power: float = option(0.9, "Poly schedule exponent.")
    grad_clip: float = option(0.0, "Max gradient norm (0: off).")
    amp: str = option("auto", "auto (bf16 on GPUs that have it, fp16 on older, off on CPU) | fp16 | bf16 | off")
    channels_last: bool = option(True, "channels_last memory format on CUDA.")
    compile: bool = option(False, "torch.compile the model.")
    deterministic: bool = option(False, "Deterministic algorithms (slower; same results run to run).")
    sync_bn: bool = option(False, "SyncBatchNorm under torchrun (CUDA GPUs only).")
    device: str = option("auto", DEVICE)
    workers: int = option(4, "DataLoader worker processes.")
    val_fraction: float = option(0.2, "Share of images in the validation split.")
    seed: int = option(0, "Random seed (split, weights, augmentation).")
    best_metric: str = option("miou", " | ".join(BEST_METRICS) + ": what weights/best.pt is best at")
    val_every: int = 1
    val_at_start: bool = option(False, "Score the initial weights as epoch 0 (the baseline training must beat).")
    tensorboard: bool = option(True, "TensorBoard logs in the run folder.")
    plots: bool = True
    mosaic_every: int = option(5, "Write RUN/mosaics/epoch_N.png (image | truth | prediction of fixed validation "
                                  "images) every N epochs and after the last (0: never).")
    max_steps_per_epoch: int = option(0, "Cap optimiser steps per epoch (0: whole epochs; smoke runs).")
    save_every_steps: int = option(0, "Also write weights/last.pt every N optimiser steps, so --resume after a kill "
                                      "loses at most N steps (0: at epoch ends only).")
    max_pixels: int | None = option(None, MAX_PIXELS, default_text=f"{DEFAULT_MAX_PIXELS}; with --resume the run's own")
    augment: AugmentConfig = option_group(AugmentConfig)

    def validate(self, new_run: bool = True, typed: Collection[str] = ()) -> "TrainConfig":
        """Check every setting; ``new_run``: also refuse settings the run would not read (a resumed run's are its own),
        those named in ``typed`` (given on the command line) even at their default (`--optimizer adamw --nesterov`)."""
        from dronseg_edge.models import check_arch, check_output_stride  # torch: not for `train --help`
        from dronseg_edge.train.losses import LOSS_NAMES, WEIGHT_METHODS, build_loss

        check_output_stride(check_arch(self.model), self.output_stride)
        self.size = parse_size(self.size)  # (0, 720), (96,) or "96x64" failed in the loader, after the run folder was made
        # numpy's numbers become Python's: a checkpoint holding np.float64(0.01) failed to load (weights_only)
        for owner in (self, self.augment):
            for f in dataclasses.fields(owner):
                value, flag = getattr(owner, f.name), f"--{f.name.replace('_', '-')}" if "option" in f.metadata else f.name
                if f.type in ("int", "int | None") and value is not None:  # epochs=2.5 failed in range(), "2" a TypeError
                    setattr(owner, f.name, whole(value, flag, least=int(f.name in AT_LEAST_ONE)))
                elif f.type == "float" or (f.type == "float | None" and value is not None):
                    setattr(owner, f.name, number(value, flag))  # lr="0.1": a TypeError below
        for name, allowed in (("loss", LOSS_NAMES), ("scheduler", SCHEDULERS), ("optimizer", OPTIMIZERS),
                              ("amp", AMP_MODES), ("best_metric", BEST_METRICS), ("class_weights", WEIGHT_METHODS)):
            one_of(getattr(self, name), f"--{name.replace('_', '-')}", allowed)
        # inf passes every range below (--rotate inf crashed the loader, --lr inf trained to NaN with exit 0)
        checks = [(math.isfinite(value), f"--{f.name.replace('_', '-')} {value}: must be a finite number")
                   for f in dataclasses.fields(self) for value in (getattr(self, f.name),) if isinstance(value, float)]
        checks += [
            (0 <= self.seed < 2**32, f"--seed {self.seed}: must be 0..4294967295"),
            (self.lr > 0, f"--lr {self.lr}: must be positive"),
            (0.0 < self.pct_start < 1.0, f"--pct-start {self.pct_start}: must be between 0 and 1"),
            (self.grad_clip >= 0, f"--grad-clip {self.grad_clip}: must be 0 (off) or positive"),
            (self.bn_momentum is None or 0.0 < self.bn_momentum <= 1.0, f"--bn-momentum {self.bn_momentum}: must be in (0, 1]"),
            (0.0 <= self.momentum < 1.0, f"--momentum {self.momentum}: must be 0 or more and below 1"),
            (self.div_factor > 0, f"--div-factor {self.div_factor}: must be positive"),
            (self.final_div_factor > 0, f"--final-div-factor {self.final_div_factor}: must be positive"),
        ]
        aug = self.augment
        checks += [(0 <= value < math.inf, f"{flag} {value}: must be 0 or more, finite") for flag, value in (
            ("--weight-decay", self.weight_decay), ("--poly-power", self.poly_power), ("--scale", aug.scale),
            ("--rotate", aug.rotate), ("--color", aug.brightness))]
        checks += [(0.0 <= value <= 1.0, f"{flag} {value}: must be between 0 and 1") for flag, value in (
            ("--hflip", aug.hflip), ("--shift", aug.shift), ("--blur-p", aug.blur_p), ("--noise-p", aug.noise_p))]
        # fit(TrainConfig()) read the current folder as the data set ("imgs/imgs is missing"); data=None a TypeError
        checks.append((bool(self.data), "--data DIR is needed: the data set root in the Kaggle AeroScapes layout (make "
                                        "one with `dronseg-edge synth DIR`); only --resume takes it from its checkpoint"))
        for ok, message in checks:
            if not ok:
                raise DronsegError(message)
        if self.max_pixels is not None:
            check_max_pixels(self.max_pixels)
        build_loss(self.loss, **self.loss_settings)  # its settings' ranges, before the run folder is made
        for names, chooser, readers in READ_ONLY_BY if new_run else ():  # --label-smoothing 0.1 trained focal+dice as 0
            given = [f"--{'no-' * (value is False)}{name.replace('_', '-')}" for name in names
                     if (value := getattr(self, name)) != getattr(TrainConfig, name) or name in typed]
            if given and getattr(self, chooser) not in readers:
                raise DronsegError(f"{given[0]} has no effect with --{chooser} {getattr(self, chooser)} "
                                   f"(only with {' or '.join(readers)}): drop it")
        if new_run:
            self._refuse_unread()
        return self

    def _refuse_unread(self) -> None:
        """A new run's options it would not read, beyond READ_ONLY_BY's: augmentation settings with --no-augment,
        --unfreeze-epoch without --freeze-stages, --freeze-stages beyond the backbone's stages."""
        from dronseg_edge.models import backbone_stage_count

        given = [spec.cli_names(f.name)[0] for f, spec in option_fields(AugmentConfig)
                 if f.name != "enabled" and getattr(self.augment, f.name) != f.default]
        if given and not self.augment.enabled:
            raise DronsegError(f"{given[0]} has no effect with --no-augment (only with --augment): drop it")
        if self.unfreeze_epoch and not self.freeze_stages:
            raise DronsegError(f"--unfreeze-epoch {self.unfreeze_epoch} has no effect without --freeze-stages "
                               "(nothing is frozen to unfreeze): drop it, or give --freeze-stages N")
        if self.freeze_stages and self.freeze_stages > (stages := backbone_stage_count(self.model)):
            raise DronsegError(f"--freeze-stages {self.freeze_stages}: the backbone of {self.model} has {stages} "
                               f"stages: give 1 to {stages} ({stages} freezes all of it)")

    @property
    def loss_settings(self) -> dict:
        """The keywords of ``build_loss`` that are options here."""
        names = ("label_smoothing", "focal_gamma", "focal_alpha", "dice_smooth", "dice_log", "focal_weight",
                 "dice_weight", "tversky_alpha", "tversky_beta")
        return {name: getattr(self, name) for name in names}

    @property
    def pixel_limit(self) -> int:
        """Pixels an image or mask may hold (its header is read before it is decoded)."""
        return self.max_pixels if self.max_pixels is not None else DEFAULT_MAX_PIXELS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"size": list(self.size)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        def known(kind, values: dict) -> dict:
            return {k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(kind)}}

        values = known(cls, data)
        values["size"] = tuple(values.get("size", (1280, 720)))
        values["augment"] = AugmentConfig(**known(AugmentConfig, values.get("augment") or {}))
        return cls(**values)
