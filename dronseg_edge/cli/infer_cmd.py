"""CLI commands: infer."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from dronseg_edge.cli.app import app, max_pixels_option

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


class _LiveLines(logging.Handler):
    """The live outputs' announcements (the preview's address, each stream, an SDP) as plain lines."""

    def __init__(self, err: bool):
        super().__init__(logging.INFO)
        self.err = err

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.INFO:  # warnings: _StderrWarnings
            typer.echo(record.getMessage(), err=self.err)


def _show_live_lines(err: bool) -> None:
    logger = logging.getLogger("dronseg_edge.pipeline.live_outputs")
    logger.setLevel(logging.INFO)
    for handler in [h for h in logger.handlers if isinstance(h, _LiveLines)]:
        logger.removeHandler(handler)
    logger.addHandler(_LiveLines(err))


LIVE_EXAMPLES = (
    "Live outputs: --stream-out rtp://GCS_IP:5600 (QGroundControl: Application Settings > Video > Source "
    "'UDP h.264 Video Stream', UDP URL 0.0.0.0:5600); --stream-out udp://GCS_IP:5600 (MPEG-TS: VLC, "
    "ffplay udp://@:5600); --stream-out rtsp://server:8554/drone (publish to mediamtx); --preview 8080 "
    "(open http://127.0.0.1:8080/); --results - | my-reader (one JSON line per frame, the rest on stderr)."
)


INFER_EXIT_CODES = (
    "Exit codes: 0 finished (the source ended, a finite stream its server closed included, or a limit was "
    "reached); 2 usage or configuration error: fix the command; 3 a backend is missing; 5 runtime failure a "
    "restart may cure: disk full or read-only (--out), a stream lost beyond --reconnect-s, a camera or stream "
    "that cannot be opened, the backend failing mid-run; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP). In every "
    "case but a usage error the outputs are closed complete up to the last frame and summary.json says why "
    "the run stopped (docs/reliability.md)."
)


@app.command(epilog=f"{LIVE_EXAMPLES}\n\n{INFER_EXIT_CODES}")
def infer(
    model: Path = typer.Argument(..., help="Checkpoint (.pt), ONNX file (.onnx) or TensorRT engine (.engine)."),
    source: str = typer.Argument(..., help="Video file, image, folder or glob of images, camera index (0), an "
                                           "rtsp:// / http:// URL, a GStreamer pipeline (elements joined by '!'; "
                                           "an appsink is appended) or csi://N[?width=W&height=H&fps=F] (a Jetson's "
                                           "CSI camera). GStreamer needs an OpenCV built with it (JetPack's)."),
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
                                   "h264_nvenc, libx264, mp4v or hevc. H.264/H.265 need the `video` extra (PyAV). "
                                   "On a Jetson auto and h264 try GStreamer's nvv4l2h264enc, then x264enc, first "
                                   "(also by name; they need JetPack's OpenCV)."),
    save_masks: Optional[bool] = typer.Option(None, "--save-masks/--no-save-masks",
                                              help="Class-index mask PNGs in masks/ (default: on for images only)."),
    save_color: bool = typer.Option(False, "--save-color", help="Colour mask PNGs in color/."),
    contact_sheet: bool = typer.Option(False, "--contact-sheet", help="contact_sheet.jpg: the first 48 overlays "
                                                                      "as captioned thumbnails in one picture."),
    save_conf: bool = typer.Option(False, "--save-conf", help="Confidence PNGs in conf/ (uint8 maximum class "
                                                             "probability x 255) and each frame's share of pixels "
                                                             "below 0.5 in stats.jsonl (needs logits)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Keep only these classes, e.g. person,car: other "
                                                                  "pixels are 255 in masks, left uncoloured in the "
                                                                  "overlay and left out of stats."),
    tile: str = typer.Option("off", "--tile", help="off, auto or on: segment frames larger than the model input in "
                                                   "overlapping windows at full resolution instead of shrinking them "
                                                   "(auto: frames at least twice the input on a side; needs logits; "
                                                   "for 4K footage and models trained at full resolution)."),
    tile_overlap: float = typer.Option(0.25, "--tile-overlap", help="Share of a window that its neighbour also "
                                                                    "covers, 0..0.75 (--tile)."),
    stats: bool = typer.Option(True, "--stats/--no-stats", help="Per-frame class shares in stats.jsonl."),
    show: bool = typer.Option(False, "--show", help="Show the overlay in a window (q or Esc stops)."),
    alpha: float = typer.Option(0.5, "--alpha", help="Opacity of the class colours over the frame, 0..1."),
    reconnect_s: float = typer.Option(30.0, "--reconnect-s", help="Seconds to keep reopening a stream that stopped."),
    rtsp_transport: Optional[str] = typer.Option(
        None, "--rtsp-transport", help="rtsp:// sources: tcp or udp (default: TCP first, as OpenCV asks FFmpeg)."),
    latency_ms: Optional[int] = typer.Option(
        None, "--latency-ms", help="rtsp:// sources over UDP: milliseconds FFmpeg holds packets to reorder them "
                                   "(its max_delay; default 100, 0 = none). In a GStreamer pipeline: rtspsrc "
                                   "latency=N."),
    hw_decode: bool = typer.Option(
        False, "--hw-decode/--no-hw-decode", help="Decode video files and URLs on the GPU's decoder through OpenCV's "
                                                  "FFmpeg (NVDEC, else VAAPI; software where this FFmpeg has neither: "
                                                  "pip's has neither). summary.json records which was used."),
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
    meta: Optional[Path] = typer.Option(None, "--meta", help="Metadata for an .engine without its .engine.json "
                                                             "(built with trtexec or Polygraphy) or a foreign .onnx: "
                                                             "the ONNX it was built from, or a sidecar JSON."),
    max_pixels: Optional[int] = max_pixels_option(),
    stream_out: Optional[List[str]] = typer.Option(
        None, "--stream-out", help="Send the video live, as H.264, while files are written (repeatable): "
                                   "udp://HOST:PORT (MPEG-TS), rtp://HOST:PORT (RTP; QGroundControl's 'UDP h.264 "
                                   "video stream' on port 5600; the SDP is written to the run folder) or "
                                   "rtsp://SERVER:PORT/PATH (publish to a server such as mediamtx, TCP). A slow or "
                                   "absent receiver costs frames on the stream only; a lost server is retried."),
    stream_bitrate: int = typer.Option(2000, "--stream-bitrate", help="Streams' bitrate cap in kbit/s."),
    stream_what: str = typer.Option("overlay", "--stream-what", help="What streams send: overlay or color (the "
                                                                     "class colours only)."),
    stream_size: Optional[str] = typer.Option(None, "--stream-size", help="Scale streams to WxH, e.g. 640x360 "
                                                                          "(default: the frames' size)."),
    preview: Optional[str] = typer.Option(
        None, "--preview", help="Serve a live preview page (overlay and class shares) at [HOST:]PORT; 127.0.0.1 "
                                "unless HOST is given, which then needs --preview-token."),
    preview_token: Optional[str] = typer.Option(
        None, "--preview-token", help="Secret a viewer must add to the preview's address (?token=SECRET); needed "
                                      "when --preview binds to anything but 127.0.0.1."),
    results: Optional[str] = typer.Option(
        None, "--results", help="One JSON line per frame (index, timestamps, class shares, each class's pixels and "
                                "box) to udp://HOST:PORT, a new file, or - (stdout; the other lines go to stderr)."),
    legend: Optional[bool] = typer.Option(None, "--legend/--no-legend", help="The colours of the classes seen, "
                                                                              "in a corner of the overlay (default: "
                                                                              "on except for images)."),
) -> None:
    """Segment a video, image folder, camera or stream; write overlay, masks, stats and summary.json."""
    from dronseg_edge.cli.outputs import check_out_dir
    from dronseg_edge.pipeline import RunOptions, Segmenter, open_source, run_inference
    from dronseg_edge.pipeline.capture_options import CaptureOptions

    _show_library_warnings()
    to_stderr = results == "-"  # stdout carries the results: every other line goes to stderr
    _show_live_lines(err=to_stderr)
    if out is not None:
        check_out_dir(out)  # before the model loads: an unwritable --out is a moment's error, exit 2
    options = RunOptions(out=out, save_video=save_video, save_masks=save_masks, save_color=save_color, stats=stats,
                         show=show, alpha=alpha, live=live, stride=stride, max_frames=max_frames,
                         reconnect_s=reconnect_s, progress=progress, codec=codec, max_duration=max_duration,
                         segment_s=segment_s, min_free_mb=min_free, save_conf=save_conf, contact_sheet=contact_sheet,
                         classes=tuple(classes.split(",")) if classes is not None else None,
                         stream_out=tuple(stream_out or ()), stream_bitrate_kbps=stream_bitrate,
                         stream_what=stream_what, stream_size=stream_size, preview=preview,
                         preview_token=preview_token, results=results, legend=legend,
                         **({} if max_pixels is None else {"max_pixels": max_pixels}))
    echo = functools.partial(typer.echo, err=to_stderr)
    capture = CaptureOptions(rtsp_transport=rtsp_transport, latency_ms=latency_ms, hw_decode=hw_decode)
    # The source before the model, so a typo in SOURCE fails in a moment; the run closes it.
    with open_source(source, options.reconnect_s, capture=capture, max_pixels=options.max_pixels) as frames, \
            Segmenter(model, device=device, half=half, batch=batch, tile=tile, tile_overlap=tile_overlap,
                      meta=meta) as segmenter:
        echo(f"model: {model} -> {segmenter.describe()}")
        summary = run_inference(segmenter, frames, options)
    data = summary.data
    echo(summary.speed_line())
    notes = [f"{data[key]} {label}" for key, label in (("dropped_frames", "stale frames dropped (live)"),
                                                       ("corrupt_frames", "damaged frames skipped"),
                                                       ("oversized_images", "images above --max-pixels skipped"),
                                                       ("size_changes", "frame size changes followed"),
                                                       ("reconnects", "reconnects")) if data.get(key)]
    if notes:
        echo("Notes: " + ", ".join(notes))
    if data.get("tiled_frames"):
        window = data["tile"]["window"]
        echo(f"Tiled: {data['tiled_frames']} of {data['frames']} frames in windows of {window[0]}x{window[1]} "
             f"(--tile {data['tile']['mode']}, overlap {data['tile']['overlap']:g})")
    if data.get("video_segments"):
        files = data["video_segments"]
        what = f"segments of {data['segment_s']:g} s" if data.get("segment_s") else "files (the frame size changed)"
        echo(f"Video: {len(files)} {what} ({files[0]['file']} ... {files[-1]['file']})")
    stopped = STOP_NOTES.get(data.get("stopped"))
    if stopped:
        echo(f"Stopped: {stopped}")
    echo(f"Results saved to {summary.out_dir}")
    if data.get("interrupted"):
        typer.echo(f"interrupted: outputs are complete up to the last of {data['frames']} frames", err=True)
        raise typer.Exit(130)
