"""``summary.json``: the record of one ``infer`` run, typed and versioned (its one owner).

A reader checks ``schema`` first: it grows when a field changes meaning or goes away (new fields may
appear within a version). Times are milliseconds per frame unless a name says seconds (``_s``);
sizes are ``WxH`` strings; the run's own files are named relative to the run folder, the files it read
(``model``, a video or images ``source``) and a ``results`` file by their absolute paths. Every way a run ends maps to
``stopped`` (docs/reliability.md): ``end``, ``max_frames``, ``max_duration``, ``interrupted``, ``key``,
an error's kind (``disk_full``, ``unwritable``, ``write_failed``, ``source_lost``, ``backend_failure``)
or ``error`` (any other error, a bug included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SCHEMA = 1


@dataclass(frozen=True, kw_only=True)
class Summary:
    """summary.json, schema 1."""

    schema: int = SCHEMA  # first: a reader checks it first
    # the model and where it ran
    model: str
    backend: str  # torch | onnxruntime | tensorrt
    provider: str  # what really runs it, e.g. "CUDAExecutionProvider + CUDA graph"
    device: str
    precision: str
    input_size: str
    batch: int
    # the source and how it was read
    source: str
    source_kind: str  # video | images | camera | stream | frames
    source_fps: float | None
    live: bool
    hw_decode: dict | None  # {"requested": bool, "used": str} where FFmpeg decodes
    stride: int
    max_frames: int | None
    # what was done
    frames: int
    frame_size: str | None  # "WxH", "mixed" (images of several sizes), None (no frame)
    wall_s: float
    fps: float
    dropped_frames: int  # live sources: frames decoded but skipped for newer ones
    corrupt_frames: int
    reconnects: int
    oversized_images: int  # images over --max-pixels, skipped unread
    max_pixels: int
    size_changes: int  # a stream that changed resolution mid-way
    rate_changes: int  # a live source reopened at another frame rate (the overlay video starts a new file)
    # how it ended
    interrupted: bool
    interrupted_by: str | None  # the signal's name
    stopped_by_key: bool
    stopped: str
    source_end: str | None  # ended | truncated | lost
    error: str | None
    max_duration: float | None
    segment_s: float | None
    min_free_mb: float
    video_stopped: str | None  # why the video and images stopped before the run did (the disk floor)
    # what each frame got
    tile: dict
    tiled_frames: int
    classes: list[str] | None  # --classes
    low_confidence_below: float | None  # the probability under which stats.jsonl counts a pixel as low-confidence
    # the outputs
    frames_written: dict[str, int]  # per output
    stage_ms: dict[str, float]  # decode, preprocess, inference, postprocess, write
    write_ms: dict[str, float]  # per output
    outputs: dict[str, Any]  # kind -> path (or list of paths)
    video_codec: str | None
    video_frames: int | None  # frames in the video, skipped ones filled in
    video_segments: list[dict] | None  # --segment-s or size changes: one entry per file
    started: str  # ISO 8601, UTC
    package_version: str
    # the live outputs (None when not asked for). streams: one entry per --stream-out, {url, protocol
    # (udp | rtp | rtsp), what (overlay | color), size, encoder, bitrate_kbps, frames_sent, frames_dropped
    # (the sender fell behind, or the receiver was down), reconnects, latency_ms {p50, p99} (from the
    # frame's read, FrameRecord.read_at, to its packets leaving; null before the first), sdp (rtp: the SDP file), last_error}; preview {url, token,
    # frames_served, frames_dropped}; results {target, kind (stdout | udp | file), schema, lines,
    # lines_dropped}
    streams: list[dict] | None = None
    preview: dict | None = None
    results: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
