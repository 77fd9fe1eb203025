"""CLI commands: infer."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from dronseg_edge.cli.app import app

# RunOptions.min_free_mb's default (a test keeps them equal): importing dronseg_edge.pipeline here
# would load the Segmenter, and with it torch, for every command's --help.
DEFAULT_MIN_FREE_MB = 500.0

# summary.json's "stopped" -> the line printed for a run that ended well before its source did
STOP_NOTES = {"max_duration": "--max-duration reached", "max_frames": "--max-frames reached",
              "key": "q or Esc pressed in the window"}


class _StderrWarnings(logging.Handler):
    """Library warnings as ``warning: ...`` lines on whatever sys.stderr is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _show_library_warnings() -> None:
    logger = logging.getLogger("dronseg_edge")
    if not any(isinstance(h, _StderrWarnings) for h in logger.handlers):
        logger.addHandler(_StderrWarnings(logging.WARNING))
        logger.propagate = False


INFER_EXIT_CODES = (
    "Exit codes: 0 finished (the source ended, a finite stream its server closed included, or a limit was "
    "reached); 2 usage or configuration error: fix the command; 3 a backend is missing; 5 runtime failure a "
    "restart may cure: disk full or read-only (--out), a stream lost beyond --reconnect-s, a camera or stream "
    "that cannot be opened, the backend failing mid-run; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP). In every "
    "case but a usage error the outputs are closed complete up to the last frame and summary.json says why "
    "the run stopped (docs/reliability.md)."
)


@app.command(epilog=INFER_EXIT_CODES)
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
    max_duration: Optional[float] = typer.Option(
        None, "--max-duration", help="Stop after this many seconds of the source: a video's own timeline, a "
                                     "camera's or stream's wall clock (images: the run's)."),
    segment_s: Optional[float] = typer.Option(
        None, "--segment-s", help="Write the overlay video as overlay_00000.mp4, overlay_00001.mp4, ... of this "
                                  "many seconds each, each playable once written (summary.json lists them)."),
    min_free: float = typer.Option(
        DEFAULT_MIN_FREE_MB, "--min-free", help="MB of free disk under --out below which the video and images stop "
                                                "cleanly while stats.jsonl continues; 0 = no floor."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on a terminal."),
) -> None:
    """Segment a video, image folder, camera or stream; write overlay, masks, stats and summary.json."""
    from dronseg_edge.pipeline import RunOptions, Segmenter, open_source, run_inference

    _show_library_warnings()
    options = RunOptions(out=out, save_video=save_video, save_masks=save_masks, save_color=save_color, stats=stats,
                         show=show, alpha=alpha, live=live, stride=stride, max_frames=max_frames,
                         reconnect_s=reconnect_s, progress=progress, codec=codec, max_duration=max_duration,
                         segment_s=segment_s, min_free_mb=min_free)
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
    if data.get("video_segments"):
        typer.echo(f"Video: {len(data['video_segments'])} segments of {data['segment_s']:g} s "
                   f"({data['video_segments'][0]['file']} ... {data['video_segments'][-1]['file']})")
    stopped = STOP_NOTES.get(data.get("stopped"))
    if stopped:
        typer.echo(f"Stopped: {stopped}")
    typer.echo(f"Results saved to {summary.out_dir}")
    if data.get("interrupted"):
        typer.echo(f"interrupted: outputs are complete up to the last of {data['frames']} frames", err=True)
        raise typer.Exit(130)
