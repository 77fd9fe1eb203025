"""CLI commands: export (checkpoint -> ONNX / TensorRT engine / Triton model repository, each parity-checked) and parity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dronseg_edge.cli.app import app

FORMAT_CHOICES = {"onnx": ("onnx",), "engine": ("engine",), "all": ("onnx", "engine"), "triton": ("triton",)}


def _thresholds(precision: str, min_agreement: Optional[float], max_miou_drop: Optional[float]):
    """User overrides on top of the precision's defaults; None when nothing was overridden."""
    if min_agreement is None and max_miou_drop is None:
        return None
    from dronseg_edge.export import ParityThresholds

    return ParityThresholds.for_precision(precision, None if min_agreement is None else min_agreement / 100.0,
                                          max_miou_drop)


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "?"


def _check_engine_options(options, formats: tuple[str, ...], fmt: str, triton_backend: Optional[str]) -> None:
    """Engine-only options need an engine; the engine's options are validated (and DLA looked for) before any
    ONNX work, so `--format all` does not write the ONNX file and then refuse the engine."""
    import dataclasses

    from dronseg_edge.errors import DronsegError

    builds_engine = "engine" in formats or (fmt == "triton" and triton_backend == "tensorrt")
    for option, value in (("--dla-core", options.dla_core), ("--builder-opt-level", options.builder_opt_level)):
        if value is not None and not builds_engine:
            raise DronsegError(f"{option} applies to TensorRT engines: add --format engine (or all), or drop it")
    if "engine" in formats:
        dataclasses.replace(options, fmt="engine")  # validates the engine's combination (e.g. --dla-core with fp32)
    if options.dla_core is not None:
        from dronseg_edge.export.tensorrt import check_dla_available

        check_dla_available(options.dla_core)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (.pt), e.g. runs/x/weights/best.pt."),
    fmt: str = typer.Option("onnx", "--format", help="onnx, engine (TensorRT), all (both) or triton (a Triton "
                            "Inference Server model repository around the ONNX file)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8 (Q/DQ, calibrated on real images)."),
    size: Optional[str] = typer.Option(None, "--size", help="Input WxH (default: the checkpoint's training size)."),
    batch: int = typer.Option(1, "--batch", help="Fixed batch size (with --dynamic: the batch engines are tuned for)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch, height and width (static is faster)."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 17 for the TorchScript exporter)."),
    head: str = typer.Option("logits", "--head", help="logits (N,C,H,W) or argmax (N,H,W uint8 class map)."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="int8 calibration images: dataset root or image "
                                              "folder (default: the checkpoint's validation split)."),
    calib_images: int = typer.Option(32, "--calib-images", help="int8: at most this many calibration images."),
    calib_method: str = typer.Option("percentile", "--calib-method", help="int8: percentile or minmax."),
    parity_data: Optional[Path] = typer.Option(None, "--parity-data", help="Parity images: dataset root or image folder "
                                               "(default: the checkpoint's validation split)."),
    parity_images: int = typer.Option(16, "--parity-images", help="Parity: at most this many images."),
    parity: bool = typer.Option(True, "--parity/--no-parity", help="Check the artifact against the checkpoint."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Parity: minimum argmax agreement in % "
                                                  "(default fp32 99.9, fp16 99.5, int8 98)."),
    max_miou_drop: Optional[float] = typer.Option(None, "--max-miou-drop", help="Parity: maximum mIoU loss vs ground "
                                                  "truth in points (default int8 1.0)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/export, or beside the checkpoint)."),
    workspace: float = typer.Option(4.0, "--workspace", help="TensorRT builder workspace limit in GiB."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (engines need a GPU)."),
    io: str = typer.Option("tensors", "--io", help="tensors: normalised float NCHW in, logits (or --head argmax) out; "
                           "frames: pre/post-processing inside the graph: uint8 BGR NHWC frames in, uint8 class map "
                           "at the frame's size out."),
    source_size: Optional[str] = typer.Option(None, "--source-size", help="--io frames: the frames' WxH (default: the "
                                              "model input size; --dynamic: any size)."),
    confidence: bool = typer.Option(False, "--confidence", help="--io frames: a second output, uint8 confidence "
                                    "(max softmax x 255)."),
    triton_backend: Optional[str] = typer.Option(None, "--triton-backend", help="--format triton: onnxruntime "
                                                 "(model.onnx, default) or tensorrt (model.plan built here: needs TensorRT)."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="Engines: run the layers DLA supports on this DLA "
                                           "core of a Jetson (AGX Orin: 0 or 1), the rest on the GPU; fp16/int8, "
                                           "fixed shapes, TensorRT 10.x or 11.4.1+."),
    builder_opt_level: Optional[int] = typer.Option(None, "--builder-opt-level", help="Engines: TensorRT builder "
                                                    "optimisation level 0..5 (default TensorRT's 3; higher builds "
                                                    "longer, may run faster)."),
) -> None:
    """Export a checkpoint to ONNX, a TensorRT engine or a Triton model repository; every file is parity-checked."""
    import dataclasses

    from dronseg_edge.cli.extras import require_extra

    require_extra("export", "export")  # before the imports below pull in torch and onnx
    from dronseg_edge.errors import DronsegError, ParityError
    from dronseg_edge.export import ExportOptions, export_artifact
    from dronseg_edge.export.parity_report import parity_report_path
    from dronseg_edge.sizes import format_size, parse_size

    if fmt not in FORMAT_CHOICES:
        raise DronsegError(f"--format {fmt!r} is not one of {', '.join(FORMAT_CHOICES)}")
    if out is not None:
        from dronseg_edge.cli.outputs import check_out_dir

        check_out_dir(out)  # before minutes of export work
    run_size = parse_size(size) if size is not None else None
    frames_size = parse_size(source_size) if source_size is not None else None
    if triton_backend is not None and fmt != "triton":
        raise DronsegError(f"--triton-backend applies to --format triton only, not --format {fmt}: drop it or add --format triton")
    if "engine" in FORMAT_CHOICES[fmt]:
        from dronseg_edge.runtime.tensorrt_env import import_tensorrt

        import_tensorrt()  # before any ONNX work, so `--format all` does not half-succeed
    formats = FORMAT_CHOICES[fmt]
    options = ExportOptions(fmt=formats[0], precision=precision, size=run_size, batch=batch, dynamic=dynamic, opset=opset,
                            head=head, calib_data=calib_data, calib_method=calib_method, calib_images=calib_images,
                            parity=parity, parity_data=parity_data, parity_images=parity_images,
                            thresholds=_thresholds(precision, min_agreement, max_miou_drop), out_dir=out,
                            workspace_gib=workspace, device=device, triton_backend=triton_backend or "onnxruntime",
                            io=io, source_size=frames_size, confidence=confidence, dla_core=dla_core,
                            builder_opt_level=builder_opt_level)
    _check_engine_options(options, formats, fmt, triton_backend)
    for one in formats:
        result = export_artifact(checkpoint, dataclasses.replace(options, fmt=one))
        for note in result.notes:
            typer.echo(note)
        if result.report is not None:
            typer.echo(result.report.table())
            typer.echo(f"parity report: {parity_report_path(result.served or result.path)}")
        if not result.passed:
            first = result.report.failures[0] if result.report is not None and result.report.failures else "see the report"
            raise ParityError(f"{result.path.name} failed parity ({first}); kept as {result.path} with its report "
                              f"{parity_report_path(result.path).name}: try a higher precision, or relax the limits "
                              "with --min-agreement/--max-miou-drop")
        info = result.info
        shape = "dynamic N x H x W" if info.dynamic else f"batch {info.batch or 'N (any)'}, {format_size(info.input_size)}"
        if info.io == "frames":
            frames_shape = "any size" if info.dynamic else format_size(info.source_size)
            shape = f"uint8 {info.color_order} frames ({frames_shape}) in, model {format_size(info.input_size)}, {shape}"
        verdict = "" if result.report is not None else " (parity NOT checked: --no-parity)"
        if result.served is not None:  # a Triton model folder around the file
            typer.echo(f"wrote {result.served} and the Triton model repository {result.path} ({info.precision}, "
                       f"{info.head}, {shape}){verdict}; serve it: tritonserver --model-repository {result.path.parent}")
            continue
        typer.echo(f"wrote {result.path} ({_mb(result.path)}, {info.precision}, {info.head}, {shape}){verdict}")


@app.command()
def parity(
    reference: Path = typer.Argument(..., help="Reference model: .pt checkpoint (usual), .onnx or .engine."),
    candidate: Path = typer.Argument(..., help="Model to check: .onnx, .engine or .pt."),
    data: Optional[Path] = typer.Option(None, "--data", help="Images: dataset root or image folder (default: the "
                                        "checkpoint's validation split; synthetic scenes if there is none)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    max_images: int = typer.Option(16, "--max-images", help="Compare on at most this many images."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Minimum argmax agreement in % "
                                                  "(default by the candidate's precision: fp32 99.9, fp16 99.5, int8 98)."),
    max_miou_drop: Optional[float] = typer.Option(None, "--max-miou-drop", help="Maximum mIoU loss vs ground truth, points."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    meta: Optional[Path] = typer.Option(None, "--meta", help="Metadata for a CANDIDATE .engine without its .engine.json "
                                        "(built with trtexec or Polygraphy) or a foreign .onnx: the ONNX it was built "
                                        "from, or a sidecar JSON."),
) -> None:
    """Compare two models (checkpoint, ONNX, engine) on the same images; exit 4 when they disagree."""
    from dronseg_edge.cli.extras import require_extra

    require_extra("export", "parity")
    from dronseg_edge.checkpoint import load_checkpoint
    from dronseg_edge.devices import resolve_device
    from dronseg_edge.errors import DronsegError, ParityError
    from dronseg_edge.export import check_parity
    from dronseg_edge.runtime.registry import check_model_file, is_checkpoint, load_backend

    if max_images < 1:
        raise DronsegError(f"--max-images {max_images} must be 1 or more")
    if json_path is not None and json_path.is_dir():
        raise DronsegError(f"--json {json_path} is a folder: give a file name, e.g. {json_path / 'parity.json'}")
    if json_path is not None:
        from dronseg_edge.cli.outputs import check_out_file

        check_out_file(json_path, "--json")
    check_model_file(reference)
    torch_device = resolve_device(device)
    # A checkpoint reference is loaded here once; check_parity runs it and takes its validation split from it.
    ref = load_checkpoint(reference) if is_checkpoint(reference) else load_backend(reference, torch_device)
    cand = load_backend(candidate, torch_device, meta=meta)  # opened here: its precision picks the default thresholds
    try:
        report = check_parity(ref, cand, data, device=torch_device, max_images=max_images,
                              thresholds=_thresholds(cand.info.precision, min_agreement, max_miou_drop))
    finally:
        cand.deactivate()
        if not isinstance(ref, dict):
            ref.deactivate()
    typer.echo(report.table())
    if json_path is not None:
        report.save(json_path)
        typer.echo(f"wrote {json_path}")
    if not report.passed:
        raise ParityError(f"{candidate} does not match {reference}: {'; '.join(report.failures)}")
