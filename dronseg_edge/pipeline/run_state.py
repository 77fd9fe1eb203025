"""What an inference run is asked to do (:class:`RunOptions`) and what it did (:class:`RunState`,
rendered as ``summary.json``, whose schema is pipeline/summary.py; :class:`RunSummary` is what
``run_inference`` returns).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dronseg_edge import __version__
from dronseg_edge.devices import device_description
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, check_max_pixels
from dronseg_edge.pipeline.live_outputs import live_records
from dronseg_edge.pipeline.live_targets import (check_preview, check_stream_settings, parse_results_target,
                                                parse_stream_urls)
from dronseg_edge.pipeline.overlay import OverlayPlan
from dronseg_edge.pipeline.reader import FrameReader
from dronseg_edge.pipeline.result import LOW_CONFIDENCE, Result
from dronseg_edge.pipeline.segmenter import Segmenter
from dronseg_edge.pipeline.sinks import Sink
from dronseg_edge.pipeline.source_base import Source
from dronseg_edge.pipeline.summary import Summary
from dronseg_edge.pipeline.video_sink import VideoSink
from dronseg_edge.pipeline.video_writer import VIDEO_CODECS
from dronseg_edge.sizes import format_size

STAGES = ("decode", "preprocess", "inference", "postprocess", "write")
DEFAULT_MIN_FREE_MB = 500.0  # --min-free: what a Jetson's eMMC needs left for the system to keep running
SEGMENTER_STAGES = STAGES[1:4]  # timed by the Segmenter, per frame; decode and write by their threads


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
    max_pixels: int = DEFAULT_MAX_PIXELS  # images above it (read from their header) are skipped undecoded
    # the live outputs (pipeline/live_outputs.py; URLs and addresses checked by pipeline/live_targets.py)
    stream_out: tuple[str, ...] = ()  # --stream-out: udp://, rtp:// or rtsp:// URLs
    stream_bitrate_kbps: int = 2000
    stream_what: str = "overlay"  # overlay | color
    stream_size: str | None = None  # "WxH"; None: the frames' size
    preview: str | None = None  # "[HOST:]PORT" of the preview page
    preview_token: str | None = None
    results: str | None = None  # "-" (stdout), udp://HOST:PORT or a file: one JSON line per frame
    legend: bool | None = None  # the class colours on the overlay; None: on except for image sources

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
        check_max_pixels(self.max_pixels)
        object.__setattr__(self, "stream_out", tuple(self.stream_out))
        parse_stream_urls(self.stream_out)
        check_stream_settings(self.stream_bitrate_kbps, self.stream_what, self.stream_size)
        check_preview(self.preview, self.preview_token)
        if self.results is not None:
            parse_results_target(self.results)

    def overlay_plan(self, lut: np.ndarray, legend: tuple[str, ...] | None = None) -> OverlayPlan | None:
        """The run's one overlay decision: made for the video (or overlay images), the window, an
        overlay stream and the preview, else not at all, not even on the GPU. ``legend``: the class
        names when the overlay carries the legend."""
        wanted = self.save_video or self.show or self.preview is not None or (
            bool(self.stream_out) and self.stream_what == "overlay")
        return OverlayPlan(self.alpha, lut, legend) if wanted else None


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
    bug: str | None = None  # any other exception (a bug here): "Type: message", re-raised once the outputs are final
    classes: tuple[int, ...] | None = None  # the class ids --classes keeps
    seen: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=bool), repr=False)  # classes present so far
    _clock_start: float = field(default_factory=time.perf_counter, repr=False)

    def mark_seen(self, result: Result) -> None:
        """Note the classes present in ``result`` and give it those of the run so far (``seen_classes``,
        for the overlay's legend: a class, once seen, stays in it)."""
        self.seen[:len(result.shares)] |= np.asarray(result.shares) > 0
        result.seen_classes = tuple(int(c) for c in np.flatnonzero(self.seen))

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
            return self.error.stopped or "error"
        if self.bug is not None:
            return "error"
        if self.stopped:
            return self.stopped
        if self.options.max_frames is not None and self.frames >= self.options.max_frames:
            return "max_frames"
        return "end"

    def summary(self, segmenter: Segmenter, source: Source, reader: FrameReader, sinks: list[Sink]) -> Summary:
        """The ``summary.json`` record: the model, the source, these counters, stage times in ms per frame."""
        backend, options, frames = segmenter.backend, self.options, self.frames
        write_ms = {sink.name: (sink.write_ms / sink.frames if sink.frames else 0.0) for sink in sinks}
        stage_ms = {"decode": reader.decode_ms / reader.decoded if reader.decoded else 0.0}
        stage_ms.update({name: total / frames if frames else 0.0 for name, total in self.segmenter_ms.items()})
        # Sinks run in parallel: the slowest one counts; the live outputs drop frames instead of pacing the run.
        stage_ms["write"] = max((write_ms[sink.name] for sink in sinks if not sink.lossy), default=0.0)
        outputs = {kind: _relative(path, self.out_dir) for sink in sinks for kind, path in sink.outputs().items()}
        video = next((s for s in sinks if isinstance(s, VideoSink)), None)
        sizes = self.sizes
        return Summary(
            model=str(backend.path), backend=backend.name, provider=backend.provider,
            device=device_description(segmenter.device), precision=segmenter.info.precision,
            input_size=format_size(segmenter.info.input_size), batch=segmenter.batch,
            source=source.name, source_kind=source.kind, source_fps=source.fps, live=self.live,
            hw_decode=source.hw_decode, stride=options.stride, max_frames=options.max_frames, frames=frames,
            frame_size=format_size(next(iter(sizes))) if len(sizes) == 1 else ("mixed" if sizes else None),
            wall_s=round(self.wall_s, 3), fps=round(frames / self.wall_s, 3) if self.wall_s > 0 else 0.0,
            dropped_frames=reader.dropped, corrupt_frames=source.corrupt, reconnects=source.reconnects,
            oversized_images=source.oversized, max_pixels=options.max_pixels, size_changes=source.size_changes,
            interrupted=self.interrupted, interrupted_by=self.interrupted_by, stopped_by_key=self.stopped_by_key,
            stopped=self.stop_reason(), source_end=source.end, error=str(self.error) if self.error else self.bug,
            max_duration=options.max_duration, segment_s=options.segment_s, min_free_mb=options.min_free_mb,
            video_stopped=self.video_stopped, tile=segmenter.tiling.describe(), tiled_frames=self.tiled_frames,
            classes=[segmenter.info.class_names[i] for i in self.classes] if self.classes is not None else None,
            low_confidence_below=LOW_CONFIDENCE if options.save_conf else None,
            frames_written={sink.name: sink.frames for sink in sinks},
            stage_ms={name: round(ms, 3) for name, ms in stage_ms.items()},
            write_ms={name: round(ms, 3) for name, ms in write_ms.items()}, outputs=outputs,
            video_codec=video.codec if video else None, video_frames=video.video_frames if video else None,
            video_segments=video.segments if video and (video.segment_frames or len(video.segments) > 1) else None,
            started=self.started_at, package_version=__version__, **live_records(sinks),
        )


def _relative(path, out_dir: Path):
    """An output path (or a list of them) relative to the run folder, for summary.json."""
    if isinstance(path, (list, tuple)):
        return [str(Path(p).relative_to(out_dir)) for p in path]
    return str(Path(path).relative_to(out_dir))
