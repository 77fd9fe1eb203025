"""CLI commands: train, eval, submit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dronseg_edge.cli.app import app
from dronseg_edge.cli.extras import require_extra
from dronseg_edge.cli.outputs import (check_json_out, check_not_input, check_out_dir, check_out_file, check_run_parent,
                                     data_files, echo, json_out, text_out)
from dronseg_edge.cli.params import Device, Json, MaxPixels, Meta, takes
from dronseg_edge.dataset_layout import IMAGE_DIR, MASK_DIR
from dronseg_edge.errors import DronsegError
from dronseg_edge.runs import TRAIN_RUNS
from dronseg_edge.train.config import RESUME_OPTIONS, TrainConfig


@app.command(help="Fine-tune DeepLabV3 on drone images "
                  "(multi-GPU: torchrun --nproc-per-node N -m dronseg_edge train ...).")
@takes(cfg=TrainConfig)
def train(
    ctx: typer.Context,
    resume: Optional[Path] = typer.Option(None, help="weights/last.pt of a run to continue, with its own options (it "
                                          "takes only --data, --device, --workers and --max-pixels).",
                                          show_default="a new run"),
    cfg: TrainConfig = None,
) -> None:
    require_extra("train", "train")  # before minutes of data checks: matplotlib is first needed at the end,
    import matplotlib.figure  # noqa: F401  so loaded now: one built for numpy 1.x (< 3.8.4) fails under numpy 2
    from dronseg_edge.train.fit import fit

    typed = [p for p in ctx.command.params if ctx.get_parameter_source(p.name).name == "COMMANDLINE"]
    if resume is not None:  # the run's own options: one typed here would be ignored
        given = [(p.secondary_opts if p.secondary_opts and not ctx.params[p.name] else p.opts)[0]  # --no-tensorboard
                 for p in typed if p.name not in ("resume", *RESUME_OPTIONS)]
        if given:
            raise DronsegError(f"{', '.join(given)}: the run's own with --resume (which takes only --data, --device, "
                               "--workers and --max-pixels anew): leave them out, or start a new run")
    else:
        cfg.validate(typed={p.name for p in typed})  # before the data checks; fit validates a resumed run's own options
    # --data (needed for a new run: validate; a resumed one has its own) must be a folder when given.
    data = Path(cfg.data) if cfg.data else None
    if data is not None and not data.is_dir():
        raise DronsegError(f"--data {data} is not a folder: pass the data set root in the Kaggle AeroScapes layout "
                           + ("(or leave --data out: the run's own)" if resume is not None else
                              "(make one with `dronseg-edge synth DIR`)"))
    # The run folder must be writable before model building starts (exit code 2).
    if resume is not None:
        if not resume.is_file():  # not load_checkpoint's advice (best.pt): a run resumed from it goes back to its best epoch
            raise DronsegError(f"--resume {resume} {'is a folder' if resume.is_dir() else 'does not exist'}: pass the "
                               "weights/last.pt of the run to continue (RUN/weights/last.pt)")
        check_out_dir(resume.resolve().parent.parent, "the run folder of --resume")
    elif cfg.out:
        check_out_dir(Path(cfg.out))
        # --out DATA/masks/masks: the run's plots (PNG files) would be read as masks without images from then on.
        check_not_input(Path(cfg.out), "--out", [data / IMAGE_DIR, data / MASK_DIR] if data is not None else [])
        last = Path(cfg.out) / "weights" / "last.pt"
        check_out_file(last.with_name("best.pt"), "--out", [cfg.weights])  # --weights RUN/weights/best.pt: replaced at epoch 1
        held = next((p for p in (last, last.with_name("best.pt")) if p.exists()), None)  # best.pt alone: last.pt deleted
        if held is not None:  # a new run there would overwrite its checkpoints, split.json and metrics.csv
            raise DronsegError(f"--out {cfg.out} already holds a training run ({held}): continue it with "
                               f"--resume {held}, or choose another --out")
    else:
        check_run_parent(TRAIN_RUNS)  # the default runs/train/expN, in the working folder
    fit(cfg, resume=resume, log=echo)  # a reader gone (`train ... | head -1`) ends the text, not the training


@app.command("eval", help="Score a model (per-class IoU/Dice, mIoU, competition Dice) at the masks' native resolution.")
def evaluate_command(
    checkpoint: Path = typer.Argument(..., metavar="MODEL", help="A checkpoint written by `train` (weights/best.pt), "
                                      "or an .onnx file or .engine exported from one (scored at its own input size)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data set root.", show_default="the one the checkpoint "
                                        "(of an .onnx/.engine: its source checkpoint) trained on"),
    split: str = typer.Option("val", help="val (the run's validation split) | all (every image with a mask) | train. "
                              "For an .onnx/.engine: the split recorded in its source checkpoint (named in its metadata) "
                              "when that file exists here; else, with --data, the split train makes by default "
                              "(stratified, --val-fraction 0.2, --seed 0)."),
    batch: int = typer.Option(4, min=1, help="Images per call (a static-batch .onnx/.engine takes its own)."),
    device: Device = "auto",
    workers: int = typer.Option(2, min=0, help="DataLoader workers (checkpoints)."),
    json_out_path: Json = None,
    meta: Meta = None,
    max_pixels: MaxPixels = None,
) -> None:
    from dronseg_edge.runtime.registry import check_model_file, is_checkpoint
    from dronseg_edge.train.evaluation import evaluate_checkpoint, format_scores

    check_json_out(json_out_path, (checkpoint, meta, *data_files(data)))
    say = text_out(json_out_path)
    if is_checkpoint(checkpoint) and meta is None:
        result = evaluate_checkpoint(checkpoint, data=data, split=split, batch=batch, device=device, workers=workers,
                                     max_pixels=max_pixels)
    else:
        from dronseg_edge.export.accuracy import evaluate_artifact

        check_model_file(checkpoint)
        result = evaluate_artifact(checkpoint, data=data, split=split, batch=batch, device=device, meta=meta,
                                   max_pixels=max_pixels)
        say(f"{checkpoint}: {result['precision']} {result['arch']} at {result['input_size'][0]}x"
            f"{result['input_size'][1]} on {result['backend']} ({result['provider']}); {result['split_source']}")
    say(format_scores(result))
    json_out(json_out_path, result)


@app.command(help="Write the Kaggle competition CSV (ImageID,EncodedPixels; one row per image and class).")
def submit(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `train`."),
    data: Path = typer.Option(..., "--data", help="Data set root with test.csv and imgs/imgs."),
    out: Path = typer.Option(Path("submission.csv"), "--out", help="CSV to write."),
    rle_order: str = typer.Option("row", help="Pixel order of the run-length encoding: row (C order) | column"),
    batch: int = typer.Option(4, min=1, help="Images per call."),
    device: Device = "auto",
    workers: int = typer.Option(2, min=0, help="DataLoader worker processes."),
    max_pixels: MaxPixels = None,
) -> None:
    from dronseg_edge.train.submission import write_competition_csv

    check_json_out(out, [checkpoint, *data_files(data)], "--out")
    rows = write_competition_csv(checkpoint, data=data, out=out, order=rle_order, batch=batch, device=device, workers=workers,
                                 max_pixels=max_pixels)
    echo(f"{rows} rows ({rle_order}-major RLE) -> {out}")
