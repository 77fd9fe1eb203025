"""The infer pipeline: decode (a thread) -> segment (this thread) -> write (one thread per sink).

Bounded queues between the stages let the slowest stage set the pace while memory stays flat.
Ctrl-C (or SIGTERM, SIGHUP) stops decoding, everything already segmented is written, the video is
finalised, and ``summary.json`` records the run; the outputs are then complete up to the last
frame. Per-stage times end in an Ultralytics-style ``Speed:`` line.

Every way a run ends is recorded in ``summary.json`` (``stopped``, ``source_end``, ``error``) and
maps to one exit code (docs/reliability.md): a failure a restart may cure (a full or read-only disk,
a stream lost beyond ``--reconnect-s``, the backend failing mid-run) is a RuntimeFailure raised once
the outputs are final. Recording is bounded by ``--max-duration``, ``--segment-s`` and a free-disk
floor (``--min-free``, :mod:`~dronseg_edge.pipeline.disk_space`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from dronseg_edge import __version__
from dronseg_edge.atomic import ensure_writable_dir, write_json_atomic
from dronseg_edge.devices import device_description
from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.pipeline.interrupts import InterruptGuard, interrupts_deferred
from dronseg_edge.pipeline.overlay import OverlayPlan, bgr_lut
from dronseg_edge.pipeline.reader import FrameReader
from dronseg_edge.pipeline.result import LOW_CONFIDENCE, Result
from dronseg_edge.pipeline.segmenter import Segmenter
from dronseg_edge.pipeline.sinks import (ColorMaskSink, ConfidenceSink, ContactSheetSink, MaskSink, OverlayImageSink, Sink, SinkWorker,
                                         StatsSink, VideoSink)
from dronseg_edge.pipeline.sources import Source, open_source
from dronseg_edge.pipeline.disk_space import DiskFloor, SpaceReserve
from dronseg_edge.pipeline.video_writer import VIDEO_CODECS, encoders_for
from dronseg_edge.runs import next_run_dir
from dronseg_edge.sizes import format_size

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "postprocess", "write")
DEFAULT_MIN_FREE_MB = 500.0  # --min-free: what a Jetson's eMMC needs left for the system to keep running
# Exceptions of these libraries raised while a run that has segmented frames goes on are the
# backend failing (a lost GPU, CUDA out of memory, a TensorRT/ONNX Runtime error), not a bug here.
RUNTIME_MODULES = ("torch", "onnxruntime", "tensorrt", "cuda", "cupy", "polygraphy")
WRITE_STOPS = ("disk_full", "unwritable", "write_failed")
SEGMENTER_STAGES = STAGES[1:4]  # timed by the Segmenter, per frame; decode and write by their threads
WINDOW = "dronseg-edge"


@dataclass(frozen=True)
class RunOptions:
    """What to write and how to read; checked when made, so a RunOptions is always a valid one.

    ``save_masks=None``: on for image sources, off for videos and streams (a PNG per frame adds
    up); ``live=None``: on for cameras and streams. ``save_conf``: confidence PNGs in conf/ and the
    share of low-confidence pixels in stats.jsonl; ``classes``: class names to keep (the Segmenter
    checks them against the model). Raises DronsegError naming the bad option.
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
    max_duration: float | None = None  # seconds of the source (see run_inference)
    segment_s: float | None = None  # overlay video in files of this many seconds
    min_free_mb: float = DEFAULT_MIN_FREE_MB  # below this, video and images stop; 0 = never
    save_conf: bool = False
    classes: tuple[str, ...] | None = None
    contact_sheet: bool = False  # contact_sheet.jpg: the first overlays in a captioned grid

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise DronsegError(f"--alpha {self.alpha} must be between 0 (frame only) and 1 (colours only)")
        if self.stride < 1:
            raise DronsegError(f"--stride {self.stride} must be at least 1 (1 = every frame)")
        if self.max_frames is not None and self.max_frames < 1:
            raise DronsegError(f"--max-frames {self.max_frames} must be at least 1")
        if not self.reconnect_s > 0:
            raise DronsegError(f"--reconnect-s {self.reconnect_s} must be above 0 seconds")
        for flag, value in (("--max-duration", self.max_duration), ("--segment-s", self.segment_s)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise DronsegError(f"{flag} {value} must be above 0 seconds (leave it out for no limit)")
        if not (math.isfinite(self.min_free_mb) and self.min_free_mb >= 0):
            raise DronsegError(f"--min-free {self.min_free_mb} must be 0 (no floor) or more MB")
        if self.classes is not None and not [c for c in self.classes if str(c).strip()]:
            raise DronsegError("--classes is empty: give one or more class names, e.g. --classes person,car")
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
    tiled_frames: int = 0  # of which segmented in windows (--tile)
    sizes: set[tuple[int, int]] = field(default_factory=set)  # (W, H) of those frames
    segmenter_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SEGMENTER_STAGES, 0.0))  # totals
    wall_s: float = 0.0
    interrupted: bool = False  # Ctrl-C, SIGTERM or SIGHUP
    interrupted_by: str | None = None  # the signal's name
    stopped_by_key: bool = False  # q or Esc in the --show window
    stopped: str | None = None  # why the run ended (stop_reason() fills it in)
    video_stopped: str | None = None  # why the video and images stopped before the run did (the disk floor)
    error: DronsegError | None = None  # a lost stream or a failed write; raised once the outputs are final
    classes: tuple[int, ...] | None = None  # the class ids --classes keeps
    _clock_start: float = field(default_factory=time.perf_counter, repr=False)

    def add(self, result: Result) -> None:
        """Count a frame that every sink has received."""
        self.frames += 1
        self.tiled_frames += result.tiles > 0
        self.sizes.add(result.size)
        for name in self.segmenter_ms:
            self.segmenter_ms[name] += result.timings.get(name, 0.0)

    def stop_clock(self) -> None:
        self.wall_s = time.perf_counter() - self._clock_start

    def source_seconds(self, result: Result) -> float:
        """How far into the source ``result`` is: its timestamp (a video's presentation time, a
        camera's or stream's wall clock since it opened), else (images) the wall clock of the run."""
        return result.timestamp if result.timestamp is not None else time.perf_counter() - self._clock_start

    def stop_reason(self) -> str:
        """``stopped`` for summary.json: interrupted, key, the error's kind (disk_full, unwritable,
        write_failed, source_lost, backend_failure, error), max_duration, max_frames, or end."""
        if self.interrupted:
            return "interrupted"
        if self.stopped_by_key:
            return "key"
        if self.error is not None:
            return getattr(self.error, "stopped", None) or "error"
        if self.stopped:
            return self.stopped
        if self.options.max_frames is not None and self.frames >= self.options.max_frames:
            return "max_frames"
        return "end"

    def summary(self, segmenter: Segmenter, source: Source, reader: FrameReader, sinks: list[Sink]) -> dict:
        """The ``summary.json`` record: the model, the source, these counters, stage times in ms per frame."""
        backend, options, frames = segmenter.backend, self.options, self.frames
        write_ms = {sink.name: (sink.write_ms / sink.frames if sink.frames else 0.0) for sink in sinks}
        stage_ms = {"decode": reader.decode_ms / reader.decoded if reader.decoded else 0.0}
        stage_ms.update({name: total / frames if frames else 0.0 for name, total in self.segmenter_ms.items()})
        stage_ms["write"] = max(write_ms.values(), default=0.0)  # sinks run in parallel: the slowest one counts
        outputs = {kind: _relative(path, self.out_dir) for sink in sinks for kind, path in sink.outputs().items()}
        video = next((s for s in sinks if isinstance(s, VideoSink)), None)
        sizes = self.sizes
        return {
            "model": str(backend.path), "backend": backend.name, "provider": backend.provider,
            "device": device_description(segmenter.device), "precision": segmenter.info.precision,
            "input_size": format_size(segmenter.info.input_size), "batch": segmenter.batch,
            "source": source.name, "source_kind": source.kind, "source_fps": source.fps, "live": self.live,
            "hw_decode": getattr(source, "hw_decode", None),  # {"requested", "used"} where FFmpeg decodes
            "stride": options.stride, "max_frames": options.max_frames,
            "frames": frames,
            "frame_size": format_size(next(iter(sizes))) if len(sizes) == 1 else ("mixed" if sizes else None),
            "wall_s": round(self.wall_s, 3), "fps": round(frames / self.wall_s, 3) if self.wall_s > 0 else 0.0,
            "dropped_frames": reader.dropped, "corrupt_frames": source.corrupt, "reconnects": source.reconnects,
            "interrupted": self.interrupted, "interrupted_by": self.interrupted_by,
            "stopped_by_key": self.stopped_by_key,
            "stopped": self.stop_reason(), "source_end": getattr(source, "end", None),
            "error": str(self.error) if self.error else None,
            "max_duration": options.max_duration, "segment_s": options.segment_s, "min_free_mb": options.min_free_mb,
            "video_stopped": self.video_stopped,
            "tile": segmenter.tiling.describe(), "tiled_frames": self.tiled_frames,
            "classes": [segmenter.info.class_names[i] for i in self.classes] if self.classes is not None else None,
            "low_confidence_below": LOW_CONFIDENCE if options.save_conf else None,
            "frames_written": {sink.name: sink.frames for sink in sinks},
            "stage_ms": {name: round(ms, 3) for name, ms in stage_ms.items()},
            "write_ms": {name: round(ms, 3) for name, ms in write_ms.items()},
            "outputs": outputs,
            "video_codec": video.codec if video else None,
            "video_frames": video.video_frames if video else None,
            "video_segments": video.segments if video and video.segment_frames else None,
            "started": self.started_at, "package_version": __version__,
        }


def run_inference(segmenter: Segmenter, source: str | Path | int | Source, options: RunOptions | None = None) -> RunSummary:
    """Segment every frame of ``source`` and write the outputs of ``options`` to a new run folder.

    ``source``: an opened Source (the CLI opens it before loading the model, so a mistyped source
    fails at once) or anything :func:`open_source` takes; the run closes it. Raises DronsegError for
    bad input (before anything is written where possible) and, after the outputs are finalised and
    summary.json written, a RuntimeFailure for a stream that was lost, a write that failed or a
    backend that failed mid-run.

    ``options.max_duration`` counts seconds of the source: a video's own timeline (so a 60 s limit
    gives 60 s of footage however fast the machine), a camera's or stream's wall clock since it
    opened (also enforced by a timer, so a stalled stream cannot hold the run past it), and for
    images the wall clock of the run.
    """
    options = options or RunOptions()
    src = open_source(source, options.reconnect_s)
    reserve = None
    try:
        # What the model cannot give (--save-conf without logits, an unknown --classes name) fails first.
        chosen = {} if options.classes is None else {"classes": options.classes}  # else the Segmenter's own
        request = segmenter.request(confidence=options.save_conf, **chosen)
        live = src.live_default if options.live is None else bool(options.live)
        if live and segmenter.batch > 1:
            raise DronsegError(f"--batch {segmenter.batch} cannot be used with --live, which processes the newest "
                               "frame only: use --batch 1, or --no-live for a recorded source")
        if options.show:
            _open_window()
        if options.save_video and src.kind != "images":
            encoders_for(options.codec)  # a --codec this machine cannot write fails before the run folder exists
        out_dir = _prepare_out_dir(options)
        reserve = SpaceReserve(out_dir)
        lut = bgr_lut(segmenter.info.palette)
        plan = options.overlay_plan(lut)
        sinks = _build_sinks(src, out_dir, options, lut, plan)
    except BaseException:
        if reserve is not None:
            reserve.release()
        src.close()
        raise
    workers = [SinkWorker(sink, options.queue_size) for sink in sinks]
    active = list(workers)  # the workers still given frames (the disk floor stops the heavy ones)
    reader = FrameReader(src, live=live, stride=options.stride, queue_size=options.queue_size)
    bar = _progress_bar(src, live, options)
    state = RunState(out_dir, options, live, classes=request.classes)
    floor = DiskFloor(out_dir, options.min_free_mb)
    results = segmenter.stream(reader, max_frames=options.max_frames, confidence=request.confidence,
                               classes=request.classes)
    guard = InterruptGuard()
    timer = _live_deadline(src, reader, options, state)
    summary_error = None
    try:
        with guard, _core_left_for_io(segmenter):
            for result in results:
                if options.max_duration is not None and state.source_seconds(result) >= options.max_duration:
                    state.stopped = "max_duration"
                    break
                if state.video_stopped is None and any(w.sink.name != "stats" for w in active):
                    reason = floor.crossed()
                    if reason is not None:
                        active = _stop_at_floor(active, state, reason)
                with guard.critical():  # every sink gets the frame, or none does
                    for worker in active:
                        worker.put(result)
                    state.add(result)
                bar.update(1)
                if options.show and _show(plan.image(result)):
                    state.stopped_by_key = True
                    break
    except KeyboardInterrupt:
        state.interrupted, state.interrupted_by = True, guard.signal_name
    except DronsegError as exc:
        state.error = exc
    except Exception as exc:
        state.error = _backend_failure(exc, state.frames, segmenter.backend.name)
        if state.error is None:
            raise  # a bug: the outputs are still finalised below, then the traceback
    finally:
        with interrupts_deferred():
            if timer is not None:
                timer.cancel()
            results.close()
            reader.stop()
            reserve.release()  # its room now lets the video's index and summary.json be written
            bug = _close_workers(workers, state)
            state.stop_clock()
            src.close()
            bar.close()
            if options.show:
                cv2.destroyAllWindows()
            summary = RunSummary(out_dir, state.summary(segmenter, src, reader, sinks))
            try:
                write_json_atomic(out_dir / "summary.json", summary.data)
            except DronsegError as exc:
                summary_error = exc
        if bug is not None:
            raise bug
    if summary_error is not None:
        raise _without_summary(state, summary_error)
    if state.error is not None:
        raise state.error
    return summary


def _live_deadline(src: Source, reader: FrameReader, options: RunOptions, state: RunState) -> threading.Timer | None:
    """For a camera or stream with --max-duration: a timer that stops reading at the deadline,
    in case no frame comes to check it against (a stalled stream, a long reconnect)."""
    if options.max_duration is None or src.kind not in ("camera", "stream"):
        return None

    def stop() -> None:
        state.stopped = "max_duration"
        reader.stop(timeout=0)

    timer = threading.Timer(options.max_duration, stop)
    timer.daemon = True
    timer.start()
    return timer


def _stop_at_floor(active: list[SinkWorker], state: RunState, reason: str) -> list[SinkWorker]:
    """Below --min-free: finish the video and the image outputs now (closed, playable); stats go on."""
    heavy = [w for w in active if w.sink.name != "stats"]
    state.video_stopped = f"{reason} (after {state.frames} frames)"
    log.warning("%s: the %s stop%s here, after %d frames, closed and complete; stats.jsonl continues "
                "(free some space, or lower --min-free)", reason, " and ".join(w.sink.name for w in heavy),
                "s" if len(heavy) == 1 else "", state.frames)
    for worker in heavy:
        worker.close()  # a write error raises here: the run stops with it
    return [w for w in active if w not in heavy]


def _backend_failure(exc: Exception, frames: int, backend: str) -> RuntimeFailure | None:
    """The RuntimeFailure for the backend failing mid-run (after frames went through, or out of
    memory at any point), or None when ``exc`` looks like a bug, which must keep its traceback."""
    kind = type(exc)
    out_of_memory = isinstance(exc, MemoryError) or "OutOfMemory" in kind.__name__
    from_runtime = kind.__module__.split(".")[0] in RUNTIME_MODULES or kind is RuntimeError
    if not (out_of_memory or (frames > 0 and from_runtime)):
        return None
    log.debug("the backend failed", exc_info=exc)
    message = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:300]
    failure = RuntimeFailure(f"the {backend} backend failed after {frames} frames ({kind.__name__}: {message}); the "
                             "outputs are complete up to the frame before: run again, and if it recurs check the "
                             "device with `dronseg-edge checks`")
    failure.stopped = "backend_failure"
    return failure


def _without_summary(state: RunState, summary_error: DronsegError) -> DronsegError:
    """The run's one error line when summary.json could not be written (the reason for it included)."""
    if state.error is not None:
        combined = type(state.error)(f"{state.error}; summary.json could not be written either: {summary_error}")
    else:
        combined = RuntimeFailure(f"{summary_error} (the run itself ended after {state.frames} frames: "
                                  "its outputs are complete, summary.json is missing)")
    combined.stopped = getattr(state.error, "stopped", None)
    return combined


def _close_workers(workers: list[SinkWorker], state: RunState) -> Exception | None:
    """Finalise every sink, whatever happened to the others; a write error goes to ``state.error``
    (the first one wins), and the first bug is returned to be raised once the summary is written.

    After a failed write (a full disk most often) the frames still queued are dropped rather than
    written: the room left, and the reserve just handed back, go to finishing the files."""
    discard = _write_failed(state.error) or any(_write_failed(w.error) for w in workers)
    bug = None
    for worker in workers:
        try:
            worker.close(discard=discard)
        except DronsegError as exc:
            state.error = state.error or exc
        except Exception as exc:
            bug = bug or exc
    return bug


def _write_failed(error: BaseException | None) -> bool:
    return isinstance(error, OSError) or getattr(error, "stopped", None) in WRITE_STOPS


def _relative(path, out_dir: Path):
    """An output path (or a list of them) relative to the run folder, for summary.json."""
    if isinstance(path, (list, tuple)):
        return [str(Path(p).relative_to(out_dir)) for p in path]
    return str(Path(path).relative_to(out_dir))


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
                     else VideoSink(out_dir / "overlay.mp4", src.fps, plan, options.codec, options.segment_s))
    if options.save_masks if options.save_masks is not None else images:
        sinks.append(MaskSink(out_dir / "masks"))
    if options.save_color:
        sinks.append(ColorMaskSink(out_dir / "color", lut))
    if options.save_conf:
        sinks.append(ConfidenceSink(out_dir / "conf"))
    if options.contact_sheet:
        sinks.append(ContactSheetSink(out_dir / "contact_sheet.jpg", plan or OverlayPlan(options.alpha, lut)))
    if options.stats:
        sinks.append(StatsSink(out_dir / "stats.jsonl", with_file=images, with_confidence=options.save_conf))
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
