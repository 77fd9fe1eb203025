"""The infer pipeline: decode (a thread) -> segment (this thread) -> write (one thread per sink).

Bounded queues between the stages let the slowest stage set the pace while memory stays flat.
Ctrl-C (or SIGTERM) stops decoding, everything already segmented is written, the video is
finalised, and ``summary.json`` records the run; the outputs are then complete up to the last
frame. Per-stage times end in an Ultralytics-style ``Speed:`` line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import torch

from dronseg_edge import __version__
from dronseg_edge.atomic import ensure_writable_dir, write_json_atomic
from dronseg_edge.devices import device_description
from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.overlay import bgr_lut, overlay
from dronseg_edge.pipeline.reader import FrameReader
from dronseg_edge.pipeline.segmenter import Result, Segmenter
from dronseg_edge.pipeline.sinks import (ColorMaskSink, MaskSink, OverlayImageSink, SinkWorker, StatsSink,
                                         VideoSink)
from dronseg_edge.pipeline.sources import Source, open_source
from dronseg_edge.runs import next_run_dir
from dronseg_edge.sizes import format_size

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "postprocess", "write")
WINDOW = "dronseg-edge"


@dataclass
class RunOptions:
    """What to write and how to read. ``save_masks=None``: on for image sources, off for videos and
    streams (a PNG per frame adds up); ``live=None``: on for cameras and streams."""

    out: Path | None = None
    project: Path = Path("runs/infer")
    save_video: bool = True
    save_masks: bool | None = None
    save_color: bool = False
    stats: bool = True
    show: bool = False
    alpha: float = 0.5
    live: bool | None = None
    stride: int = 1
    max_frames: int | None = None
    reconnect_s: float = 30.0
    progress: bool = True
    queue_size: int = 8

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise DronsegError(f"--alpha {self.alpha} must be between 0 (frame only) and 1 (colours only)")
        if self.stride < 1:
            raise DronsegError(f"--stride {self.stride} must be at least 1 (1 = every frame)")
        if self.max_frames is not None and self.max_frames < 1:
            raise DronsegError(f"--max-frames {self.max_frames} must be at least 1")
        if not self.reconnect_s > 0:
            raise DronsegError(f"--reconnect-s {self.reconnect_s} must be above 0 seconds")


@dataclass
class RunSummary:
    """The run's record, as written to ``summary.json``."""

    out_dir: Path
    data: dict = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return int(self.data.get("frames", 0))

    def speed_line(self) -> str:
        """``Speed: decode X ms, ..., write X ms per frame at WxH (N frames, F fps)``."""
        stage_ms = self.data.get("stage_ms", {})
        parts = ", ".join(f"{name} {stage_ms.get(name, float('nan')):.1f} ms" for name in STAGES)
        return (f"Speed: {parts} per frame at {self.data.get('frame_size') or '?'} "
                f"({self.frames} frames, {self.data.get('fps', 0.0):.1f} fps)")


def run_inference(segmenter: Segmenter, source: str | Path | int | Source, options: RunOptions | None = None) -> RunSummary:
    """Segment every frame of ``source`` and write the outputs of ``options`` to a new run folder.

    Raises DronsegError for bad input (before anything is written where possible) and, after the
    outputs are finalised, for a stream that was lost or a write that failed.
    """
    options = options or RunOptions()
    options.validate()
    src = open_source(source, options.reconnect_s)
    try:
        live = src.live_default if options.live is None else bool(options.live)
        if live and segmenter.batch > 1:
            raise DronsegError(f"--batch {segmenter.batch} cannot be used with --live, which processes the newest "
                               "frame only: use --batch 1, or --no-live for a recorded source")
        if options.show:
            _open_window()
        out_dir = _prepare_out_dir(options)
        sinks = _build_sinks(src, out_dir, options, segmenter)
    except BaseException:
        src.close()
        raise
    workers = [SinkWorker(sink, options.queue_size) for sink in sinks]
    reader = FrameReader(src, live=live, stride=options.stride, queue_size=options.queue_size)
    wants_overlay = options.show or any(isinstance(s, (VideoSink, OverlayImageSink)) for s in sinks)
    alpha_before, segmenter.overlay_alpha = segmenter.overlay_alpha, (options.alpha if wants_overlay else None)
    bar = _progress_bar(src, live, options)
    lut = bgr_lut(segmenter.info.palette)
    totals = dict.fromkeys(STAGES[1:4], 0.0)
    frames, sizes = 0, set()
    interrupted = stopped_by_key = False
    error: DronsegError | None = None
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    results = segmenter.stream(reader, max_frames=options.max_frames)
    guard = _InterruptGuard()
    try:
        with guard, _core_left_for_io(segmenter):
            for result in results:
                with guard.critical():  # every sink gets the frame, or none does
                    for worker in workers:
                        worker.put(result)
                    frames += 1
                    sizes.add(result.size)
                    for name in totals:
                        totals[name] += result.timings.get(name, 0.0)
                bar.update(1)
                if options.show and _show(result, lut, options.alpha):
                    stopped_by_key = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    except DronsegError as exc:
        error = exc
    finally:
        bug: BaseException | None = None
        with _interrupts_deferred():
            results.close()
            reader.stop()
            segmenter.overlay_alpha = alpha_before
            for worker in workers:  # each one finalised, whatever happened to the others
                try:
                    worker.close()
                except DronsegError as exc:
                    error = error or exc
                except Exception as exc:
                    bug = bug or exc
            wall_s = time.perf_counter() - started
            src.close()
            bar.close()
            if options.show:
                cv2.destroyAllWindows()
            summary = RunSummary(out_dir)
            summary.data = _summary_data(segmenter, src, reader, sinks, out_dir, options, live, frames, sizes, totals,
                                         wall_s, started_at, interrupted, stopped_by_key, error)
            write_json_atomic(out_dir / "summary.json", summary.data)
        if bug is not None:
            raise bug
    if error is not None:
        raise error
    return summary


def _prepare_out_dir(options: RunOptions) -> Path:
    if options.out is None:
        return next_run_dir(options.project)
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise DronsegError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()):
        raise DronsegError(f"--out {out} already holds files and a run never overwrites another: pass a new folder, "
                           "or leave --out out to get runs/infer/expN")
    return ensure_writable_dir(out)


def _build_sinks(src: Source, out_dir: Path, options: RunOptions, segmenter: Segmenter) -> list:
    lut = bgr_lut(segmenter.info.palette)
    images = src.kind == "images"
    sinks = []
    if options.save_video:
        # Images may differ in size, which one video cannot hold: they get overlay images instead.
        sinks.append(OverlayImageSink(out_dir / "overlay", lut, options.alpha) if images
                     else VideoSink(out_dir / "overlay.mp4", src.fps, lut, options.alpha))
    if options.save_masks if options.save_masks is not None else images:
        sinks.append(MaskSink(out_dir / "masks"))
    if options.save_color:
        sinks.append(ColorMaskSink(out_dir / "color", lut))
    if options.stats:
        sinks.append(StatsSink(out_dir / "stats.jsonl", with_file=images))
    return sinks


def _progress_bar(src: Source, live: bool, options: RunOptions):
    from tqdm import tqdm

    total = None
    if not live and src.frame_count:
        total = math.ceil(src.frame_count / options.stride)
    if options.max_frames:
        total = min(total, options.max_frames) if total else options.max_frames
    enabled = options.progress and sys.stderr.isatty()
    return tqdm(total=total, unit="frame", desc="infer", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _open_window() -> None:
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise DronsegError("--show needs OpenCV with a GUI and a display: install opencv-python instead of "
                           "opencv-python-headless, or drop --show") from None


def _show(result: Result, lut, alpha: float) -> bool:
    """Show the overlay; True when the user pressed q or Esc."""
    image = result.overlay if result.overlay is not None else overlay(result.frame, result.mask, lut, alpha)
    cv2.imshow(WINDOW, image)
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)


def _summary_data(segmenter, src, reader: FrameReader, sinks, out_dir: Path, options, live, frames, sizes, totals, wall_s,
                  started_at, interrupted, stopped_by_key, error) -> dict:
    backend = segmenter.backend
    write_ms = {sink.name: (sink.write_ms / sink.frames if sink.frames else 0.0) for sink in sinks}
    stage_ms = {"decode": reader.decode_ms / reader.decoded if reader.decoded else 0.0}
    stage_ms.update({name: total / frames if frames else 0.0 for name, total in totals.items()})
    stage_ms["write"] = max(write_ms.values(), default=0.0)  # sinks run in parallel: the slowest one counts
    outputs = {kind: str(Path(path).relative_to(out_dir)) for sink in sinks for kind, path in sink.outputs().items()}
    return {
        "model": str(backend.path), "backend": backend.name, "provider": backend.provider,
        "device": device_description(segmenter.device), "precision": segmenter.info.precision,
        "input_size": format_size(segmenter.info.input_size), "batch": segmenter.batch,
        "source": src.name, "source_kind": src.kind, "source_fps": src.fps, "live": live,
        "stride": options.stride, "max_frames": options.max_frames,
        "frames": frames,
        "frame_size": format_size(next(iter(sizes))) if len(sizes) == 1 else ("mixed" if sizes else None),
        "wall_s": round(wall_s, 3), "fps": round(frames / wall_s, 3) if wall_s > 0 else 0.0,
        "dropped_frames": reader.dropped, "corrupt_frames": src.corrupt, "reconnects": src.reconnects,
        "interrupted": interrupted, "stopped_by_key": stopped_by_key, "error": str(error) if error else None,
        "stage_ms": {name: round(ms, 3) for name, ms in stage_ms.items()},
        "write_ms": {name: round(ms, 3) for name, ms in write_ms.items()},
        "outputs": outputs,
        "video_codec": next((s.codec for s in sinks if isinstance(s, VideoSink)), None),
        "video_frames": next((s.video_frames for s in sinks if isinstance(s, VideoSink)), None),
        "started": started_at, "package_version": __version__,
    }


@contextlib.contextmanager
def _core_left_for_io(segmenter: Segmenter):
    """On the CPU, run torch on one core fewer than it would take, for the decode and writer threads.

    OpenMP threads wait for each other at every layer; when another thread holds one of their
    cores, each layer stalls. On the shared 2-core CI machine (other jobs running) LR-ASPP at
    128x80 took 10-18 ms per frame inside the pipeline with 1 torch thread, 65-1300 ms with 2.
    """
    cores = os.cpu_count() or 1
    before = torch.get_num_threads()
    if segmenter.device.type != "cpu" or segmenter.backend.name != "torch" or cores < 2 or before < cores:
        yield
        return
    torch.set_num_threads(cores - 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _InterruptGuard:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt in the main thread, but never inside ``critical()``:
    a signal arriving there is held until the block ends."""

    def __init__(self):
        self.requested = False
        self._critical = False
        self._previous: dict = {}

    def _handle(self, *_):
        self.requested = True
        if not self._critical:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self):
        self._critical = True
        try:
            yield
        finally:
            self._critical = False
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> "_InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _interrupts_deferred():
    """While the outputs are finalised, a second Ctrl-C only prints a note instead of breaking them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(*_):
        print("finishing the outputs, one moment...", file=sys.stderr)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
