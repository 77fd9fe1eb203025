"""CLI commands: train, eval, submit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dronseg_edge.cli.app import app, max_pixels_option


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Data set root in the Kaggle AeroScapes layout (see "
                                        "`synth`); with --resume, the run's own unless given."),
    model: str = typer.Option("deeplabv3_resnet101", help="deeplabv3_resnet101 | deeplabv3_resnet50 | deeplabv3_mobilenet_v3_large | lraspp_mobilenet_v3_large"),
    weights: str = typer.Option("coco", help="coco | imagenet | none | PATH to a .pt/.pth file"),
    epochs: int = typer.Option(30, min=1),
    batch: int = typer.Option(4, min=1, help="Images per micro-batch (per GPU under torchrun)."),
    accumulate: int = typer.Option(1, min=1, help="Micro-batches per optimiser step."),
    size: str = typer.Option("1280x720", help="Training size WxH (images are resized to it)."),
    loss: str = typer.Option("focal+dice", help="focal+dice | focal | dice | tversky | ce"),
    lr: float = typer.Option(0.01, help="Peak learning rate (OneCycle max_lr)."),
    scheduler: str = typer.Option("onecycle", help="onecycle | constant | poly"),
    optimizer: str = typer.Option("sgd", help="sgd | adamw"),
    amp: str = typer.Option("auto", help="auto (bf16 on GPUs that have it, fp16 on older, off on CPU) | fp16 | bf16 | off"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    workers: int = typer.Option(4, min=0, help="DataLoader worker processes."),
    val_fraction: float = typer.Option(0.2, help="Share of images in the validation split."),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/train/expN)."),
    resume: Optional[Path] = typer.Option(None, help="weights/last.pt of a run to continue (its own options are used)."),
    weight_decay: float = typer.Option(1e-4),
    momentum: float = typer.Option(0.9),
    nesterov: bool = typer.Option(True, "--nesterov/--no-nesterov"),
    pct_start: float = typer.Option(0.1, help="OneCycle warm-up share."),
    div_factor: float = typer.Option(25.0, help="OneCycle: initial lr = lr / div_factor."),
    final_div_factor: float = typer.Option(1e4, help="OneCycle: final lr = initial lr / final_div_factor."),
    poly_power: float = typer.Option(0.9),
    focal_gamma: float = typer.Option(2.0),
    focal_alpha: Optional[float] = typer.Option(None),
    focal_weight: float = typer.Option(1.0, help="Weight of focal in focal+dice."),
    dice_weight: float = typer.Option(1.0, help="Weight of Dice in focal+dice."),
    dice_smooth: float = typer.Option(1.0),
    dice_log: bool = typer.Option(False, "--dice-log/--no-dice-log", help="-log(dice) instead of 1-dice."),
    tversky_alpha: float = typer.Option(0.3, help="Tversky weight of false positives."),
    tversky_beta: float = typer.Option(0.7, help="Tversky weight of false negatives."),
    label_smoothing: float = typer.Option(0.0, help="Cross-entropy label smoothing."),
    class_weights: str = typer.Option("none", help="none | inverse_sqrt | inverse (from the train split's pixel counts)"),
    aux_loss: bool = typer.Option(False, "--aux-loss/--no-aux-loss", help="DeepLabV3 auxiliary head."),
    output_stride: Optional[int] = typer.Option(None, help="8 | 16: input / feature-map size of the DeepLabV3 ResNets "
                                                "(default 8; 16 needs ~3.5x fewer operations: ResNet-101 at 1280x720 238 vs 848 GMACs, "
                                                "with coarser features). MobileNetV3 models exist at 16 only."),
    bn_momentum: Optional[float] = typer.Option(None, help="Override BatchNorm momentum (0.1 for short runs from scratch; MobileNetV3 default 0.01)."),
    freeze_stages: int = typer.Option(0, min=0, help="Freeze the first N backbone stages."),
    unfreeze_epoch: int = typer.Option(0, min=0, help="Unfreeze them from this epoch on (0: never)."),
    grad_clip: float = typer.Option(0.0, help="Max gradient norm (0: off)."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="On CUDA."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the model."),
    deterministic: bool = typer.Option(False, "--deterministic/--no-deterministic"),
    sync_bn: bool = typer.Option(False, "--sync-bn/--no-sync-bn", help="SyncBatchNorm under torchrun."),
    best_metric: str = typer.Option("miou", help="miou | mdice | competition | val_loss"),
    augment: bool = typer.Option(True, "--augment/--no-augment"),
    hflip: float = typer.Option(0.5, help="Horizontal flip probability."),
    scale: float = typer.Option(0.25, help="Random scale range +-."),
    shift: float = typer.Option(0.1, help="Random shift, share of the size."),
    rotate: float = typer.Option(10.0, help="Random rotation, degrees."),
    color: float = typer.Option(0.25, help="Brightness/contrast/saturation jitter."),
    blur_p: float = typer.Option(0.1),
    noise_p: float = typer.Option(0.1),
    max_steps_per_epoch: int = typer.Option(0, min=0, help="Cap optimiser steps per epoch (smoke runs)."),
    save_every_steps: int = typer.Option(0, min=0, help="Also write weights/last.pt every N optimiser steps, so --resume "
                                         "after a kill loses at most N steps (0: at epoch ends only)."),
    tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard"),
    val_at_start: bool = typer.Option(False, "--val-at-start/--no-val-at-start", help="Score the initial weights as epoch 0."),
    mosaic_every: int = typer.Option(5, min=0, help="Write RUN/mosaics/epoch_N.png (image | truth | prediction of fixed "
                                     "validation images) every N epochs and after the last (0: never)."),
    max_pixels: Optional[int] = max_pixels_option(),
) -> None:
    """Fine-tune DeepLabV3 on drone images (multi-GPU: torchrun --nproc-per-node N -m dronseg_edge train ...)."""
    from dronseg_edge.cli.extras import require_extra

    require_extra("train", "train")  # before minutes of data checks: matplotlib is first needed at the end
    from dronseg_edge.data.augment import AugmentConfig
    from dronseg_edge.models import check_arch, check_output_stride
    from dronseg_edge.sizes import parse_size
    from dronseg_edge.train.config import TrainConfig
    from dronseg_edge.train.fit import fit

    if resume is None:
        check_output_stride(check_arch(model), output_stride)
    _check_data(data, resume)
    _check_run_folder(out, resume)
    cfg = TrainConfig(
        data=str(data) if data is not None else "", out=str(out) if out else "", max_pixels=max_pixels,
        model=model, weights=weights, aux_loss=aux_loss,
        bn_momentum=bn_momentum, freeze_stages=freeze_stages, unfreeze_epoch=unfreeze_epoch, epochs=epochs, batch=batch, accumulate=accumulate,
        size=parse_size(size), loss=loss, focal_gamma=focal_gamma, focal_alpha=focal_alpha, focal_weight=focal_weight,
        dice_weight=dice_weight, dice_smooth=dice_smooth, dice_log=dice_log, tversky_alpha=tversky_alpha,
        tversky_beta=tversky_beta, label_smoothing=label_smoothing, class_weights=class_weights, optimizer=optimizer,
        lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, scheduler=scheduler,
        pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor, poly_power=poly_power,
        grad_clip=grad_clip, amp=amp, channels_last=channels_last, compile=compile, deterministic=deterministic,
        sync_bn=sync_bn, device=device, workers=workers, val_fraction=val_fraction, seed=seed, best_metric=best_metric,
        tensorboard=tensorboard, max_steps_per_epoch=max_steps_per_epoch, save_every_steps=save_every_steps,
        val_at_start=val_at_start, output_stride=output_stride, mosaic_every=mosaic_every,
        augment=AugmentConfig(enabled=augment, hflip=hflip, scale=scale, shift=shift, rotate=rotate,
                              brightness=color, contrast=color, saturation=color, blur_p=blur_p, noise_p=noise_p),
    )
    fit(cfg.validate() if resume is None else cfg, resume=resume, log=typer.echo)


def _check_data(data: Optional[Path], resume: Optional[Path]) -> None:
    """--data is needed for a new run (a resumed one has its own), and must be a folder when given."""
    from dronseg_edge.errors import DronsegError

    if data is None and resume is None:
        raise DronsegError("--data DIR is needed: the data set root in the Kaggle AeroScapes layout (make one with "
                           "`dronseg-edge synth DIR`); only --resume takes it from its checkpoint")
    if data is not None and not data.is_dir():
        raise DronsegError(f"--data {data} is not a folder: pass the data set root in the Kaggle AeroScapes layout "
                           + ("(or leave --data out: the run's own)" if resume is not None else
                              "(make one with `dronseg-edge synth DIR`)"))


def _check_run_folder(out: Optional[Path], resume: Optional[Path]) -> None:
    """The run folder must be writable before data checks and model building start (exit code 2)."""
    from dronseg_edge.cli.outputs import check_out_dir

    if resume is not None:
        if resume.is_file():  # a missing one gets load_checkpoint's own message
            check_out_dir(resume.resolve().parent.parent, "the run folder of --resume")
    elif out is not None:
        check_out_dir(out)


@app.command("eval")
def evaluate_command(
    checkpoint: Path = typer.Argument(..., metavar="MODEL", help="A checkpoint written by `train` (weights/best.pt), "
                                      "or an .onnx file or .engine exported from one (scored at its own input size)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data set root (default: the one the checkpoint trained on; "
                                        "for an .onnx/.engine, the one its source checkpoint trained on)."),
    split: str = typer.Option("val", help="val (the run's validation split) | all (every image with a mask) | train. "
                              "For an .onnx/.engine: the split recorded in its source checkpoint (named in its metadata) "
                              "when that file exists here; else, with --data, the split train makes by default "
                              "(stratified, --val-fraction 0.2, --seed 0)."),
    batch: int = typer.Option(4, min=1, help="Images per call (a static-batch .onnx/.engine takes its own)."),
    device: str = typer.Option("auto"),
    workers: int = typer.Option(2, min=0, help="DataLoader workers (checkpoints)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the scores to this JSON file."),
    meta: Optional[Path] = typer.Option(None, "--meta", help="Metadata for an .engine without its .engine.json "
                                        "(built with trtexec or Polygraphy) or a foreign .onnx: the ONNX it was built "
                                        "from, or a sidecar JSON."),
    max_pixels: Optional[int] = max_pixels_option(),
) -> None:
    """Score a model (per-class IoU/Dice, mIoU, competition Dice) at the masks' native resolution."""
    from dronseg_edge.atomic import write_json_atomic
    from dronseg_edge.cli.outputs import check_out_file
    from dronseg_edge.runtime.registry import check_model_file, is_checkpoint
    from dronseg_edge.train.evaluation import evaluate_checkpoint, format_scores

    if json_out:
        check_out_file(json_out, "--json")
    if is_checkpoint(checkpoint) and meta is None:
        result = evaluate_checkpoint(checkpoint, data=data, split=split, batch=batch, device=device, workers=workers,
                                     max_pixels=max_pixels)
    else:
        from dronseg_edge.export.accuracy import evaluate_artifact

        check_model_file(checkpoint)
        result = evaluate_artifact(checkpoint, data=data, split=split, batch=batch, device=device, meta=meta,
                                   max_pixels=max_pixels)
        typer.echo(f"{checkpoint}: {result['precision']} {result['arch']} at {result['input_size'][0]}x"
                   f"{result['input_size'][1]} on {result['backend']} ({result['provider']}); {result['split_source']}")
    typer.echo(format_scores(result))
    if json_out:
        write_json_atomic(json_out, result)
        typer.echo(f"scores -> {json_out}")


@app.command()
def submit(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `train`."),
    data: Path = typer.Option(..., "--data", help="Data set root with test.csv and imgs/imgs."),
    out: Path = typer.Option(Path("submission.csv"), "--out", help="CSV to write."),
    rle_order: str = typer.Option("row", help="Pixel order of the run-length encoding: row (C order) | column"),
    batch: int = typer.Option(4, min=1),
    device: str = typer.Option("auto"),
    workers: int = typer.Option(2, min=0),
) -> None:
    """Write the Kaggle competition CSV (ImageID,EncodedPixels; one row per image and class)."""
    from dronseg_edge.cli.outputs import check_out_file
    from dronseg_edge.train.submission import write_competition_csv

    check_out_file(out, "--out")
    rows = write_competition_csv(checkpoint, data=data, out=out, order=rle_order, batch=batch, device=device, workers=workers)
    typer.echo(f"{rows} rows ({rle_order}-major RLE) -> {out}")
