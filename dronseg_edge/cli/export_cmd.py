"""CLI commands: export (checkpoint -> ONNX / TensorRT engine / Triton model repository, each parity-checked) and parity."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from dronseg_edge.cli.app import app
from dronseg_edge.cli.extras import require_extra
from dronseg_edge.cli.outputs import (check_json_out, check_not_input, check_out_dir, data_files, echo, json_out,
                                      text_out)
from dronseg_edge.cli.params import Device, Json, MaxMiouDrop, Meta, MinAgreement, takes
from dronseg_edge.errors import DronsegError, ParityError
from dronseg_edge.export.options import PARITY_IMAGES, ExportOptions
from dronseg_edge.option_fields import one_of
from dronseg_edge.sizes import format_size

FORMAT_CHOICES = {"onnx": ("onnx",), "engine": ("engine",), "all": ("onnx", "engine"), "triton": ("triton",)}


def _thresholds(precision: str, min_agreement: Optional[float], max_miou_drop: Optional[float]):
    """User overrides on top of the precision's defaults; None when nothing was overridden."""
    if min_agreement is None and max_miou_drop is None:
        return None
    from decimal import Decimal

    from dronseg_edge.export import ParityThresholds

    # In decimal: 99.9 / 100 is 0.9990000000000001, above the default 0.999, and failed 99.9 % agreement.
    return ParityThresholds.for_precision(precision, None if min_agreement is None else float(Decimal(repr(min_agreement)) / 100),
                                          max_miou_drop)


def _check_engine_options(options, formats: tuple[str, ...], fmt: str) -> None:
    """Engine-only options need an engine; the engine's options are validated (and DLA looked for) before any
    ONNX work, so `--format all` does not write the ONNX file and then refuse the engine."""
    from dronseg_edge.export.options import ENGINE_OPTIONS

    builds_engine = "engine" in formats or (fmt == "triton" and options.triton_backend == "tensorrt")
    for field, option in ENGINE_OPTIONS.items():
        value = getattr(options, field)  # 0 is a --dla-core given; False an unset --trt-verbose
        if value is not None and value is not False and not builds_engine:
            raise DronsegError(f"{option} applies to TensorRT engines: add --format engine (or all), or drop it")
    if "engine" in formats:
        dataclasses.replace(options, fmt="engine")  # validates the engine's combination (e.g. --dla-core with fp32)
        from dronseg_edge.runtime.tensorrt_env import import_tensorrt

        import_tensorrt()  # after the option checks (fix the command first), before any ONNX work
    if options.dla_core is not None:
        from dronseg_edge.export.tensorrt import check_dla_available

        check_dla_available(options.dla_core)


def _check_read(ctx: typer.Context, options, fmt: str) -> None:
    """Options given on the command line that this export would not read are refused, as engine-only ones are."""
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    for when, idle, names in (("without --precision int8", options.precision != "int8",
                               ("calib_data", "calib_method", "calib_images")),
                              ("with --no-parity", not options.parity,
                               ("parity_data", "parity_images", "min_agreement", "max_miou_drop")),
                              ("with --format onnx (it sizes TensorRT's workspace: engine, all, triton)", fmt == "onnx",
                               ("workspace_gib", "workspace_gib__0")),
                              ("with a free batch and --format onnx (the batch engines and Triton tune for)",
                               fmt == "onnx" and (options.dynamic or options.dynamic_batch), ("batch",))):
        given = [flags[name] for name in names if ctx.get_parameter_source(name).name != "DEFAULT"]
        if idle and given:
            raise DronsegError(f"{given[0]} has no effect {when}: drop it")


@app.command(help="Export a checkpoint to ONNX, a TensorRT engine or a Triton model repository; "
                  "every file is parity-checked.")
@takes(options=ExportOptions)
def export(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (.pt), e.g. runs/x/weights/best.pt."),
    fmt: str = typer.Option("onnx", "--format", help="onnx, engine (TensorRT), all (both) or triton (a Triton "
                            "Inference Server model repository around the ONNX file)."),
    min_agreement: MinAgreement = None,
    max_miou_drop: MaxMiouDrop = None,
    options: ExportOptions = None,
) -> None:
    require_extra("export", "export")  # before the imports below pull in torch and onnx
    from dronseg_edge.export import export_artifact
    from dronseg_edge.export.parity_report import parity_report_path

    one_of(fmt, "--format", FORMAT_CHOICES)
    if options.out_dir is not None:
        check_out_dir(options.out_dir)  # before minutes of export work
    if options.timing_cache is not None:  # written after the build; an unwritable one only warns
        check_not_input(options.timing_cache, "--timing-cache", [checkpoint])
    if ctx.get_parameter_source("triton_backend").name != "DEFAULT" and fmt != "triton":
        raise DronsegError(f"--triton-backend applies to --format triton only, not --format {fmt}: drop it or add --format triton")
    _check_read(ctx, options, fmt)
    formats = FORMAT_CHOICES[fmt]
    options = dataclasses.replace(options, fmt=formats[0],
                                  thresholds=_thresholds(options.precision, min_agreement, max_miou_drop))
    _check_engine_options(options, formats, fmt)
    for one in formats:
        result = export_artifact(checkpoint, dataclasses.replace(options, fmt=one))
        for note in result.notes:
            echo(note)
        if result.report is not None:
            echo(result.report.table())
            echo(f"parity report: {parity_report_path(result.served or result.path)}")
        if not result.passed:
            first = result.report.failures[0] if result.report is not None and result.report.failures else "see the report"
            higher = "try a higher precision, or " if result.info.precision != "fp32" else ""  # none above fp32
            raise ParityError(f"{result.path.name} failed parity ({first}); kept as {result.path} with its report "
                              f"{parity_report_path(result.path).name}: {higher}relax the limits "
                              "with --min-agreement/--max-miou-drop")
        info = result.info
        shape = "dynamic N x H x W" if info.dynamic else f"batch {info.batch or 'N (any)'}, {format_size(info.input_size)}"
        if info.io == "frames":
            frames_shape = "any size" if info.dynamic else format_size(info.source_size)
            shape = f"uint8 {info.color_order} frames ({frames_shape}) in, model {format_size(info.input_size)}, {shape}"
        verdict = "" if result.report is not None else " (parity NOT checked: --no-parity)"
        if result.served is not None:  # a Triton model folder around the file
            echo(f"wrote {result.served} and the Triton model repository {result.path} ({info.precision}, "
                       f"{info.head}, {shape}){verdict}; serve it: tritonserver --model-repository {result.path.parent}")
            continue
        megabytes = result.path.stat().st_size / 1e6
        echo(f"wrote {result.path} ({megabytes:.1f} MB, {info.precision}, {info.head}, {shape}){verdict}")


@app.command(help="Compare two models (checkpoint, ONNX, engine) on the same images; exit 4 when they disagree.")
def parity(
    reference: Path = typer.Argument(..., help="Reference model: .pt checkpoint (usual), .onnx or .engine."),
    candidate: Path = typer.Argument(..., help="Model to check: .onnx, .engine or .pt."),
    data: Optional[Path] = typer.Option(None, "--data", "--parity-data", help="Images: dataset root or image folder.",
                                        show_default="the checkpoint's validation split, else synthetic scenes"),
    device: Device = "auto",
    parity_images: int = typer.Option(PARITY_IMAGES, "--parity-images", help="Compare on at most this many images."),
    max_images: Optional[int] = typer.Option(None, "--max-images", hidden=True),  # the old spelling
    min_agreement: MinAgreement = None,
    max_miou_drop: MaxMiouDrop = None,
    json_path: Json = None,
    meta: Meta = None,
) -> None:
    require_extra("export", "parity")
    from dronseg_edge.checkpoint import load_checkpoint
    from dronseg_edge.devices import resolve_device
    from dronseg_edge.export import check_parity
    from dronseg_edge.metadata import NoMetadata
    from dronseg_edge.runtime.registry import check_model_file, is_checkpoint, load_backend

    if max_images is not None and parity_images not in (PARITY_IMAGES, max_images):  # as build() refuses two spellings
        raise DronsegError("--max-images is the old spelling of --parity-images: give one of them")
    max_images = parity_images if max_images is None else max_images
    if max_images < 1:
        raise DronsegError(f"--parity-images {max_images} must be 1 or more")
    check_json_out(json_path, (reference, candidate, meta, *data_files(data)))
    check_model_file(reference)
    torch_device = resolve_device(device)
    # A checkpoint reference is loaded here once; check_parity runs it and takes its validation split from it.
    try:
        ref = load_checkpoint(reference) if is_checkpoint(reference) else load_backend(reference, torch_device)
    except NoMetadata:  # its advice of --meta would not help: parity's describes the candidate
        raise DronsegError(f"reference {reference} has no dronseg-edge metadata (parity's --meta describes the candidate "
                           "only): pass the checkpoint it came from, or an ONNX written by `dronseg-edge export`") from None
    cand = load_backend(candidate, torch_device, meta=meta)  # opened here: its precision picks the default thresholds
    try:
        report = check_parity(ref, cand, data, device=torch_device, max_images=max_images,
                              thresholds=_thresholds(cand.info.precision, min_agreement, max_miou_drop))
    finally:
        cand.deactivate()
        if not isinstance(ref, dict):
            ref.deactivate()
    text_out(json_path)(report.table())
    json_out(json_path, report.to_dict(), save=report.save)
    if not report.passed:
        raise ParityError(f"{candidate} does not match {reference}: {'; '.join(report.failures)}")
