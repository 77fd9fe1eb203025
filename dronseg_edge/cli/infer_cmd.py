"""CLI commands: infer."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from dronseg_edge.cli.app import app


class _StderrWarnings(logging.Handler):
    """Library warnings as ``warning: ...`` lines on whatever sys.stderr is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _show_library_warnings() -> None:
    logger = logging.getLogger("dronseg_edge")
    if not any(isinstance(h, _StderrWarnings) for h in logger.handlers):
        logger.addHandler(_StderrWarnings(logging.WARNING))
        logger.propagate = False


@app.command()
def infer(
    model: Path = typer.Argument(..., help="Checkpoint (.pt), ONNX file (.onnx) or TensorRT engine (.engine)."),
    source: str = typer.Argument(..., help="Video file, image, folder or glob of images, camera index (0), "
                                           "or an rtsp:// / http:// URL."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default runs/infer/expN; never overwrites)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    half: bool = typer.Option(False, "--half", help="fp16 on a GPU (checkpoints; ONNX/engines keep their export precision)."),
    batch: int = typer.Option(1, "--batch", help="Frames per inference call (recorded sources)."),
    stride: int = typer.Option(1, "--stride", help="Process every N-th frame."),
    live: Optional[bool] = typer.Option(None, "--live/--no-live",
                                        help="Process only the newest frame, dropping stale ones "
                                             "(default: on for cameras and streams)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after this many frames."),
    save_video: bool = typer.Option(True, "--save-video/--no-save-video",
                                    help="Overlay video (H.264 mp4, see --codec; for image sources overlay/ JPEGs)."),
    codec: str = typer.Option("auto", "--codec",
                              help="Overlay video encoder: auto (h264_nvenc, else libx264, else mp4v), h264, "
                                   "h264_nvenc, libx264, mp4v or hevc. H.264/H.265 need the `video` extra (PyAV)."),
    save_masks: Optional[bool] = typer.Option(None, "--save-masks/--no-save-masks",
                                              help="Class-index mask PNGs in masks/ (default: on for images only)."),
    save_color: bool = typer.Option(False, "--save-color", help="Colour mask PNGs in color/."),
    stats: bool = typer.Option(True, "--stats/--no-stats", help="Per-frame class shares in stats.jsonl."),
    show: bool = typer.Option(False, "--show", help="Show the overlay in a window (q or Esc stops)."),
    alpha: float = typer.Option(0.5, "--alpha", help="Opacity of the class colours over the frame, 0..1."),
    reconnect_s: float = typer.Option(30.0, "--reconnect-s", help="Seconds to keep reopening a stream that stopped."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on a terminal."),
) -> None:
    """Segment a video, image folder, camera or stream; write overlay, masks, stats and summary.json."""
    from dronseg_edge.pipeline import RunOptions, Segmenter, open_source, run_inference

    _show_library_warnings()
    options = RunOptions(out=out, save_video=save_video, save_masks=save_masks, save_color=save_color, stats=stats,
                         show=show, alpha=alpha, live=live, stride=stride, max_frames=max_frames,
                         reconnect_s=reconnect_s, progress=progress, codec=codec)
    # The source before the model, so a typo in SOURCE fails in a moment; the run closes it.
    with open_source(source, options.reconnect_s) as frames, \
            Segmenter(model, device=device, half=half, batch=batch) as segmenter:
        typer.echo(f"model: {model} -> {segmenter.describe()}")
        summary = run_inference(segmenter, frames, options)
    data = summary.data
    typer.echo(summary.speed_line())
    notes = [f"{data[key]} {label}" for key, label in (("dropped_frames", "stale frames dropped (live)"),
                                                       ("corrupt_frames", "damaged frames skipped"),
                                                       ("reconnects", "reconnects")) if data.get(key)]
    if notes:
        typer.echo("Notes: " + ", ".join(notes))
    typer.echo(f"Results saved to {summary.out_dir}")
    if data.get("interrupted"):
        typer.echo(f"interrupted: outputs are complete up to the last of {data['frames']} frames", err=True)
        raise typer.Exit(130)
