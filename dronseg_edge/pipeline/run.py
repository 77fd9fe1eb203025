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
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from dronseg_edge import __version__
from dronseg_edge.atomic import ensure_writable_dir, write_json_atomic
from dronseg_edge.devices import device_description
from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.interrupts import InterruptGuard, interrupts_deferred
from dronseg_edge.pipeline.overlay import OverlayPlan, bgr_lut
from dronseg_edge.pipeline.reader import FrameReader
from dronseg_edge.pipeline.segmenter import Result, Segmenter
from dronseg_edge.pipeline.sinks import (ColorMaskSink, MaskSink, OverlayImageSink, Sink, SinkWorker, StatsSink,
                                         VideoSink)
from dronseg_edge.pipeline.sources import Source, open_source
from dronseg_edge.pipeline.video_writer import VIDEO_CODECS, encoders_for
from dronseg_edge.runs import next_run_dir
from dronseg_edge.sizes import format_size

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "postprocess", "write")
SEGMENTER_STAGES = STAGES[1:4]  # timed by the Segmenter, per frame; decode and write by their threads
WINDOW = "dronseg-edge"


@dataclass(frozen=True)
class RunOptions:
    """What to write and how to read; checked when made, so a RunOptions is always a valid one.

    ``save_masks=None``: on for image sources, off for videos and streams (a PNG per frame adds
    up); ``live=None``: on for cameras and streams. Raises DronsegError naming the bad option.
    """

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
    codec: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise DronsegError(f"--alpha {self.alpha} must be between 0 (frame only) and 1 (colours only)")
        if self.stride < 1:
            raise DronsegError(f"--stride {self.stride} must be at least 1 (1 = every frame)")
        if self.max_frames is not None and self.max_frames < 1:
            raise DronsegError(f"--max-frames {self.max_frames} must be at least 1")
        if not self.reconnect_s > 0:
            raise DronsegError(f"--reconnect-s {self.reconnect_s} must be above 0 seconds")
        if self.codec not in VIDEO_CODECS:
            raise DronsegError(f"--codec {self.codec} is not one of {', '.join(VIDEO_CODECS)}: pick one "
                               "(auto: H.264 on the GPU's encoder, else the CPU's, else mp4v)")

    def overlay_plan(self, lut: np.ndarray) -> OverlayPlan | None:
        """The run's one overlay decision: made for the video (or overlay images) and the window,
        else not at all, not even on the GPU."""
        return OverlayPlan(self.alpha, lut) if self.save_video or self.show else None


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


@dataclass
class RunState:
    """What a run has done so far: ``run_inference`` updates it as frames are written and when the
    run stops, and it renders ``summary.json`` (:meth:`summary`)."""

    out_dir: Path
    options: RunOptions
    live: bool
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    frames: int = 0  # frames handed to every sink
    sizes: set[tuple[int, int]] = field(default_factory=set)  # (W, H) of those frames
    segmenter_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SEGMENTER_STAGES, 0.0))  # totals
    wall_s: float = 0.0
    interrupted: bool = False  # Ctrl-C or SIGTERM
    stopped_by_key: bool = False  # q or Esc in the --show window
    error: DronsegError | None = None  # a lost stream or a failed write; raised once the outputs are final
    _clock_start: float = field(default_factory=time.perf_counter, repr=False)

    def add(self, result: Result) -> None:
        """Count a frame that every sink has received."""
        self.frames += 1
        self.sizes.add(result.size)
        for name in self.segmenter_ms:
            self.segmenter_ms[name] += result.timings.get(name, 0.0)

    def stop_clock(self) -> None:
        self.wall_s = time.perf_counter() - self._clock_start

    def summary(self, segmenter: Segmenter, source: Source, reader: FrameReader, sinks: list[Sink]) -> dict:
        """The ``summary.json`` record: the model, the source, these counters, stage times in ms per frame."""
        backend, options, frames = segmenter.backend, self.options, self.frames
        write_ms = {sink.name: (sink.write_ms / sink.frames if sink.frames else 0.0) for sink in sinks}
        stage_ms = {"decode": reader.decode_ms / reader.decoded if reader.decoded else 0.0}
        stage_ms.update({name: total / frames if frames else 0.0 for name, total in self.segmenter_ms.items()})
        stage_ms["write"] = max(write_ms.values(), default=0.0)  # sinks run in parallel: the slowest one counts
        outputs = {kind: str(Path(path).relative_to(self.out_dir))
                   for sink in sinks for kind, path in sink.outputs().items()}
        video = next((s for s in sinks if isinstance(s, VideoSink)), None)
        sizes = self.sizes
        return {
            "model": str(backend.path), "backend": backend.name, "provider": backend.provider,
            "device": device_description(segmenter.device), "precision": segmenter.info.precision,
            "input_size": format_size(segmenter.info.input_size), "batch": segmenter.batch,
            "source": source.name, "source_kind": source.kind, "source_fps": source.fps, "live": self.live,
            "stride": options.stride, "max_frames": options.max_frames,
            "frames": frames,
            "frame_size": format_size(next(iter(sizes))) if len(sizes) == 1 else ("mixed" if sizes else None),
            "wall_s": round(self.wall_s, 3), "fps": round(frames / self.wall_s, 3) if self.wall_s > 0 else 0.0,
            "dropped_frames": reader.dropped, "corrupt_frames": source.corrupt, "reconnects": source.reconnects,
            "interrupted": self.interrupted, "stopped_by_key": self.stopped_by_key,
            "error": str(self.error) if self.error else None,
            "stage_ms": {name: round(ms, 3) for name, ms in stage_ms.items()},
            "write_ms": {name: round(ms, 3) for name, ms in write_ms.items()},
            "outputs": outputs,
            "video_codec": video.codec if video else None,
            "video_frames": video.video_frames if video else None,
            "started": self.started_at, "package_version": __version__,
        }


def run_inference(segmenter: Segmenter, source: str | Path | int | Source, options: RunOptions | None = None) -> RunSummary:
    """Segment every frame of ``source`` and write the outputs of ``options`` to a new run folder.

    ``source``: an opened Source (the CLI opens it before loading the model, so a mistyped source
    fails at once) or anything :func:`open_source` takes; the run closes it. Raises DronsegError for
    bad input (before anything is written where possible) and, after the outputs are finalised,
    for a stream that was lost or a write that failed.
    """
    options = options or RunOptions()
    src = open_source(source, options.reconnect_s)
    try:
        live = src.live_default if options.live is None else bool(options.live)
        if live and segmenter.batch > 1:
            raise DronsegError(f"--batch {segmenter.batch} cannot be used with --live, which processes the newest "
                               "frame only: use --batch 1, or --no-live for a recorded source")
        if options.show:
            _open_window()
        if options.save_video and src.kind != "images":
            encoders_for(options.codec)  # a --codec this machine cannot write fails before the run folder exists
        out_dir = _prepare_out_dir(options)
        lut = bgr_lut(segmenter.info.palette)
        plan = options.overlay_plan(lut)
        sinks = _build_sinks(src, out_dir, options, lut, plan)
    except BaseException:
        src.close()
        raise
    workers = [SinkWorker(sink, options.queue_size) for sink in sinks]
    reader = FrameReader(src, live=live, stride=options.stride, queue_size=options.queue_size)
    bar = _progress_bar(src, live, options)
    state = RunState(out_dir, options, live)
    results = segmenter.stream(reader, max_frames=options.max_frames, overlay_alpha=plan.alpha if plan else None)
    guard = InterruptGuard()
    try:
        with guard, _core_left_for_io(segmenter):
            for result in results:
                with guard.critical():  # every sink gets the frame, or none does
                    for worker in workers:
                        worker.put(result)
                    state.add(result)
                bar.update(1)
                if options.show and _show(plan.image(result)):
                    state.stopped_by_key = True
                    break
    except KeyboardInterrupt:
        state.interrupted = True
    except DronsegError as exc:
        state.error = exc
    finally:
        with interrupts_deferred():
            results.close()
            reader.stop()
            bug = _close_workers(workers, state)
            state.stop_clock()
            src.close()
            bar.close()
            if options.show:
                cv2.destroyAllWindows()
            summary = RunSummary(out_dir, state.summary(segmenter, src, reader, sinks))
            write_json_atomic(out_dir / "summary.json", summary.data)
        if bug is not None:
            raise bug
    if state.error is not None:
        raise state.error
    return summary


def _close_workers(workers: list[SinkWorker], state: RunState) -> Exception | None:
    """Finalise every sink, whatever happened to the others; a write error goes to ``state.error``
    (the first one wins), and the first bug is returned to be raised once the summary is written."""
    bug = None
    for worker in workers:
        try:
            worker.close()
        except DronsegError as exc:
            state.error = state.error or exc
        except Exception as exc:
            bug = bug or exc
    return bug


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


def _build_sinks(src: Source, out_dir: Path, options: RunOptions, lut: np.ndarray,
                 plan: OverlayPlan | None) -> list[Sink]:
    images = src.kind == "images"
    sinks: list[Sink] = []
    if options.save_video:  # so options.overlay_plan made a plan
        # Images may differ in size, which one video cannot hold: they get overlay images instead.
        sinks.append(OverlayImageSink(out_dir / "overlay", plan) if images
                     else VideoSink(out_dir / "overlay.mp4", src.fps, plan, options.codec))
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


def _show(image: np.ndarray) -> bool:
    """Show one overlay; True when the user pressed q or Esc."""
    cv2.imshow(WINDOW, image)
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)


@contextlib.contextmanager
def _core_left_for_io(segmenter: Segmenter):
    """On the CPU, run torch on one core fewer than it would take, for the decode and writer threads.

    OpenMP threads wait for each other at every layer; when another thread holds one of their
    cores, each layer stalls, and on a 2-core machine a frame took several times longer
    (docs/facts.md#cpu-threads).
    """
    cores = os.cpu_count() or 1
    if segmenter.device.type != "cpu" or segmenter.backend.name != "torch" or cores < 2:
        yield
        return
    import torch  # only a checkpoint runs on torch; an ONNX or engine run never imports it

    before = torch.get_num_threads()
    if before < cores:
        yield
        return
    torch.set_num_threads(cores - 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
