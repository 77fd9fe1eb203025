"""What an inference run did (:class:`RunState`, rendered as ``summary.json``, whose schema is
pipeline/summary.py; :class:`RunSummary` is what ``run_inference`` returns); what it is asked to do
is :class:`~.run_options.RunOptions`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dronseg_edge import __version__
from dronseg_edge.devices import device_description
from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.live_outputs import live_records
from dronseg_edge.pipeline.reader import FrameReader
from dronseg_edge.pipeline.result import LOW_CONFIDENCE, Result
from dronseg_edge.pipeline.run_options import RunOptions
from dronseg_edge.pipeline.segmenter import Segmenter
from dronseg_edge.pipeline.sinks import Sink
from dronseg_edge.pipeline.source_base import Source
from dronseg_edge.pipeline.summary import Summary
from dronseg_edge.pipeline.video_sink import VideoSink
from dronseg_edge.sizes import format_size

STAGES = ("decode", "preprocess", "inference", "postprocess", "write")
SEGMENTER_STAGES = STAGES[1:4]  # timed by the Segmenter, per frame; decode and write by their threads


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
    first_timestamp: float | None = field(default=None, repr=False)  # the first frame's, where --max-duration-s starts

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
        camera's or stream's wall clock since its first read) from the first frame's, else (images) the wall
        clock of the run. From the first frame: an MPEG-TS recorded from mid-GOP shows its first picture
        seconds after the stream's start, and --max-duration-s 1 gave no frame at all."""
        if result.timestamp is None:
            return time.perf_counter() - self._clock_start
        if self.first_timestamp is None:
            self.first_timestamp = result.timestamp
        # to the microsecond, as stats.jsonl gives it: 2.28 - 1.28 is 0.9999999999999998, and the frame at the limit
        # of --max-duration-s 1 was taken (an MPEG-TS through PyAV: 13 frames, 0.43 s, for 0.4 s at 30 fps)
        return round(result.timestamp - self.first_timestamp, 6)

    def stop_reason(self) -> str:
        """``stopped`` for summary.json: interrupted, key, the error's kind (disk_full, unwritable,
        write_failed, source_lost, backend_failure, error), max_duration, max_frames, or end. In the order the run
        raises them: an error met while the outputs were finished after Ctrl-C or q is the exit code's (5), not 130."""
        if self.bug is not None:
            return "error"
        if self.error is not None:
            return self.error.stopped or "error"
        if self.interrupted:
            return "interrupted"
        if self.stopped_by_key:
            return "key"
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
            model=os.path.abspath(backend.path), backend=backend.name, provider=backend.provider,
            device=device_description(segmenter.device, backend.name == "torch"), precision=segmenter.info.precision,
            input_size=format_size(segmenter.info.input_size), batch=segmenter.batch,
            source=os.path.abspath(source.name) if source.kind in ("video", "images") else source.name,
            source_kind=source.kind, source_fps=source.fps, live=self.live,
            hw_decode=source.hw_decode, stride=options.stride, max_frames=options.max_frames, frames=frames,
            frame_size=format_size(next(iter(sizes))) if len(sizes) == 1 else ("mixed" if sizes else None),
            wall_s=round(self.wall_s, 3), fps=round(frames / self.wall_s, 3) if self.wall_s > 0 else 0.0,
            dropped_frames=reader.dropped, corrupt_frames=source.corrupt, reconnects=source.reconnects,
            oversized_images=source.oversized, max_pixels=source.max_pixels, size_changes=source.size_changes,
            rate_changes=source.rate_changes,
            interrupted=self.interrupted, interrupted_by=self.interrupted_by, stopped_by_key=self.stopped_by_key,
            stopped=self.stop_reason(), error=str(self.error) if self.error else self.bug,
            # the reader reads ahead: it may have met the end of a file that --max-frames or a signal stopped first
            source_end=source.end if self.stop_reason() in ("end", "source_lost") else None,
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
    return [_relative(p, out_dir) for p in path] if isinstance(path, (list, tuple)) else str(Path(path).relative_to(out_dir))
