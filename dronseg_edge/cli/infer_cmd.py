"""CLI commands: infer."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import typer

from dronseg_edge.cli.app import RESTART_EXIT_CODES, app
from dronseg_edge.cli.outputs import check_out_dir, check_run_parent, echo as quiet_echo
from dronseg_edge.cli.params import Device, Meta, takes
from dronseg_edge.pipeline.capture_options import CaptureOptions
from dronseg_edge.pipeline.run_options import RunOptions

# summary.json's "stopped" -> the line printed for a run that ended well before its source did
STOP_NOTES = {"max_duration": "--max-duration-s reached", "max_frames": "--max-frames reached",
              "key": "q or Esc pressed in the window"}


class _LogLines(logging.Handler):
    """Library warnings as ``warning: ...`` lines on whatever sys.stderr is at the time; the live outputs'
    announcements (the preview's address, each stream, an SDP: INFO) as plain lines on ``err``'s stream."""

    def __init__(self, err: bool):
        super().__init__(logging.INFO)
        self.err = err

    def emit(self, record: logging.LogRecord) -> None:
        try:  # a stream whose reader has gone (EPIPE: `2>&1 | logger`, the logger killed) is logging's error, not
            if record.levelno >= logging.WARNING:  # the run's: raised, it stopped the run, blamed on a sink
                print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)
            else:
                quiet_echo(record.getMessage(), err=self.err)
        except OSError:
            self.handleError(record)


LIVE_EXAMPLES = (
    "Live outputs: --stream-out rtp://GCS_IP:5600 (QGroundControl: Application Settings > Video > Source "
    "'UDP h.264 Video Stream', UDP URL 0.0.0.0:5600); --stream-out udp://GCS_IP:5600 (MPEG-TS: VLC, "
    "ffplay udp://@:5600); --stream-out rtsp://server:8554/drone (publish to mediamtx); --preview 8080 "
    "(open http://127.0.0.1:8080/); --results - | my-reader (one JSON line per frame, the rest on stderr)."
)


INFER_EXIT_CODES = (
    "Exit codes: 0 finished (the source ended, a finite stream its server closed included, or a limit was "
    f"reached); 2 usage or configuration error: fix the command; 3 a backend is missing; {RESTART_EXIT_CODES}. "
    "Once the run has begun (its folder made) the outputs are closed complete up to the last frame whatever exit "
    "code ends it, and summary.json says why it stopped; a refusal before that (a usage error, a missing backend, "
    "a source or output that cannot be opened) makes no folder (docs/reliability.md)."
)


@app.command(epilog=f"{LIVE_EXAMPLES}\n\n{INFER_EXIT_CODES}", help="Segment a video, image folder, camera or stream; "
                                                                   "write overlay, masks, stats and summary.json.")
@takes(options=RunOptions, capture=CaptureOptions)
def infer(
    model: Path = typer.Argument(..., help="Checkpoint (.pt), ONNX file (.onnx) or TensorRT engine (.engine)."),
    source: str = typer.Argument(..., help="Video file, image, folder or glob of images, camera index (0), an "
                                           "rtsp:// / http:// URL, a GStreamer pipeline (elements joined by '!'; "
                                           "an appsink is appended) or csi://N[?width=W&height=H&fps=F] (a Jetson's "
                                           "CSI camera). GStreamer needs an OpenCV built with it (JetPack's)."),
    device: Device = "auto",
    half: bool = typer.Option(False, "--half/--no-half", help="fp16 on a GPU (checkpoints; ONNX/engines keep their export precision)."),
    batch: int = typer.Option(1, "--batch", help="Frames per inference call (recorded sources)."),
    tile: str = typer.Option("off", "--tile", help="off, auto or on: segment frames larger than the model input in "
                                                   "overlapping windows at full resolution instead of shrinking them "
                                                   "(auto: frames at least twice the input on a side; needs logits; "
                                                   "for 4K footage and models trained at full resolution)."),
    tile_overlap: float = typer.Option(0.25, "--tile-overlap", help="Share of a window that its neighbour also "
                                                                    "covers, 0..0.75 (--tile)."),
    meta: Meta = None,
    options: RunOptions = None,
    capture: CaptureOptions = None,
) -> None:
    from dronseg_edge.errors import Interrupted
    from dronseg_edge.pipeline import Segmenter, open_source, run_inference

    to_stderr = options.results == "-"  # stdout carries the results: every other line goes to stderr
    logger = logging.getLogger("dronseg_edge")  # its other loggers stay at WARNING: only live_outputs says INFO
    for handler in [h for h in logger.handlers if isinstance(h, _LogLines)]:
        logger.removeHandler(handler)
    logger.addHandler(_LogLines(to_stderr))
    logger.propagate = False
    logging.getLogger("dronseg_edge.pipeline.live_outputs").setLevel(logging.INFO)
    echo = functools.partial(quiet_echo, err=to_stderr)  # a reader gone (`| head -1`) ends the text, not the run
    if options.out is not None:
        check_out_dir(options.out)  # before the model loads: an unwritable --out is a moment's error, exit 2
    else:
        check_run_parent(options.project)  # the default runs/infer/expN, in the working folder
    # The source before the model, so a typo in SOURCE fails in a moment; the run closes it.
    with open_source(source, options.reconnect_s, capture=capture, max_pixels=options.max_pixels) as frames, \
            Segmenter(model, device=device, half=half, batch=batch, tile=tile, tile_overlap=tile_overlap,
                      meta=meta, streaming=True) as segmenter:
        echo(f"model: {model} -> {segmenter.describe()}")
        try:
            summary = run_inference(segmenter, frames, options)
        except Interrupted as stop:  # the outputs are final: say what they hold, then exit 130
            summary = stop.summary
    data = summary.data
    echo(summary.speed_line())
    notes = [f"{data[key]} {label}" for key, label in (("dropped_frames", "stale frames dropped (live)"),
                                                       ("corrupt_frames", "damaged frames skipped"),
                                                       ("oversized_images", "images above --max-pixels skipped"),
                                                       ("size_changes", "frame size changes followed"),
                                                       ("rate_changes", "frame rate changes followed"),
                                                       ("reconnects", "reconnects")) if data.get(key)]
    if notes:
        echo("Notes: " + ", ".join(notes))
    if data.get("tiled_frames"):
        window = data["tile"]["window"]
        echo(f"Tiled: {data['tiled_frames']} of {data['frames']} frames in windows of {window[0]}x{window[1]} "
                   f"(--tile {data['tile']['mode']}, overlap {data['tile']['overlap']:g})")
    if data.get("video_segments"):
        files = data["video_segments"]
        what = f"segments of {data['segment_s']:g} s" if data.get("segment_s") else "files (the size or rate changed)"
        echo(f"Video: {len(files)} {what} ({files[0]['file']} ... {files[-1]['file']})")
    stopped = STOP_NOTES.get(data.get("stopped"))
    if stopped:
        echo(f"Stopped: {stopped}")
    echo(f"Results saved to {summary.out_dir}")
    if data.get("interrupted"):
        quiet_echo(f"interrupted: outputs are complete up to the last of {data['frames']} frames", err=True)
        raise SystemExit(130)  # not typer.Exit(130), Ctrl-C's own code, after which main says "interrupted" again
