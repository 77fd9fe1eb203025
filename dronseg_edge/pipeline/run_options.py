"""What an inference run is asked to do: :class:`RunOptions`, the options of ``infer`` besides the
model's and the source's (option_fields.py: each field is its command-line option)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, List

from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, MAX_PIXELS, check_max_pixels
from dronseg_edge.option_fields import number, one_of, option, whole

if TYPE_CHECKING:
    import numpy as np

    from dronseg_edge.pipeline.overlay import OverlayPlan

DEFAULT_MIN_FREE_MB = 500.0  # --min-free-mb: what a Jetson's eMMC needs left for the system to keep running


def class_list(text: str) -> tuple[str | int, ...]:
    """``--classes person,3``: class names, or class indices (as Ultralytics takes them)."""
    return tuple(int(item) if item.strip().isdigit() else item for item in str(text).split(","))


@dataclass(frozen=True)
class RunOptions:
    """What to write and how to read; checked when made, so a RunOptions is always a valid one.

    ``classes``: class names or indices to keep (the Segmenter checks them against the model). Raises
    DronsegError naming the bad option.
    """

    out: Path | None = option(None, "Output folder; never overwrites.", default_text="runs/infer/expN")
    project: Path = Path("runs/infer")
    save_video: bool = option(True, "Overlay video (H.264 mp4, see --codec; for image sources overlay/ JPEGs).")
    save_masks: bool | None = option(None, "Class-index mask PNGs in masks/.", default_text="on for images only")
    save_color: bool = option(False, "Colour mask PNGs in color/.")
    stats: bool = option(True, "Per-frame class shares in stats.jsonl.")
    show: bool = option(False, "Show the overlay in a window (q or Esc stops).")
    alpha: float = option(0.5, "Opacity of the class colours over the frame, 0..1.")
    live: bool | None = option(None, "Process only the newest frame, dropping stale ones (not for images).",
                               default_text="on for cameras and streams")
    stride: int = option(1, "Process every N-th frame.")
    max_frames: int | None = option(None, "Stop after this many frames.", default_text="no limit")
    reconnect_s: float = option(30.0, "Seconds to keep reopening a stream that stopped (a try begun runs to its end: up to 10 s more).")
    progress: bool = option(True, "Progress bar on a terminal.")
    queue_size: int = 8
    codec: str = option("auto", "Overlay video encoder: auto (a Jetson's GStreamer nvv4l2h264enc or x264enc first; "
                                "then h264_nvenc, else libx264, else mp4v), h264, h264_nvenc, libx264, mp4v, hevc, "
                                "nvv4l2h264enc or x264enc. PyAV's H.264/H.265 need the `video` extra.")
    max_duration: float | None = option(None, "Stop after this many seconds of the source: a video's own timeline, a "
                                              "camera's or stream's wall clock (images: the run's).",
                                        names=("--max-duration-s",), aliases=("--max-duration",), default_text="no limit")
    segment_s: float | None = option(None, "Write the overlay video as overlay_00000.mp4, overlay_00001.mp4, ... of "
                                           "this many seconds each, each playable once written (summary.json lists "
                                           "them).", default_text="one file")
    min_free_mb: float = option(DEFAULT_MIN_FREE_MB, "MB of free disk under --out below which the video and images "
                                                     "stop cleanly while stats.jsonl continues; 0 = no floor.",
                                names=("--min-free-mb",), aliases=("--min-free",))
    save_conf: bool = option(False, "Confidence PNGs in conf/ (uint8 maximum class probability x 255) and each "
                                    "frame's share of pixels below 0.5 in stats.jsonl (needs logits).")
    classes: tuple[str | int, ...] | None = option(
        None, "Keep only these classes, by name or index (person,car or 1,3): other pixels are 255 in masks, left "
              "uncoloured in the overlay and left out of stats.", parse=class_list, default_text="all")
    contact_sheet: bool = option(False, "contact_sheet.jpg: the first 48 overlays as captioned thumbnails in one "
                                        "picture.")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, MAX_PIXELS)  # images above it are skipped undecoded
    # the live outputs (pipeline/live_outputs.py; URLs and addresses checked by pipeline/live_targets.py)
    stream_out: tuple[str, ...] = option(
        (), "Send the video live, as H.264, while files are written (repeatable): udp://HOST:PORT (MPEG-TS), "
            "rtp://HOST:PORT (RTP; QGroundControl's 'UDP h.264 video stream' on port 5600; the SDP is written to "
            "the run folder) or rtsp://SERVER:PORT/PATH (publish to a server such as mediamtx, TCP). A slow or "
            "absent receiver costs frames on the stream only; a lost server is retried.", default_text="none",
        type=List[str], parse=tuple, metavar="URL")
    stream_bitrate_kbps: int = option(2000, "Streams' bitrate cap in kbit/s.", names=("--stream-bitrate-kbps",),
                                      aliases=("--stream-bitrate",))
    stream_what: str = option("overlay", "What streams send: overlay or color (the class colours only).")
    stream_size: str | None = option(None, "Scale streams to WxH, e.g. 640x360.", default_text="the frames' size")
    preview: str | None = option(None, "Serve a live preview page (overlay and class shares) at [HOST:]PORT; "
                                       "127.0.0.1 unless HOST is given, which then needs --preview-token.",
                                 default_text="none")
    preview_token: str | None = option(None, "Secret a viewer must add to the preview's address (?token=SECRET); "
                                             "needed when --preview binds to anything but 127.0.0.1.",
                                       default_text="none")
    results: str | None = option(None, "One JSON line per frame (index, timestamps, class shares, each class's "
                                       "pixels and box) to udp://HOST:PORT, a new file, or - (stdout; the other "
                                       "lines go to stderr).", default_text="none")
    legend: bool | None = option(None, "The colours of the classes seen, in a corner of the overlay.",
                                 default_text="on except for images")

    def __post_init__(self) -> None:
        from dronseg_edge.pipeline.video_writer import VIDEO_CODECS  # OpenCV: not for the CLI's --help

        for f in fields(self):  # a flag read from a config file: live="false" was true (a video read live)
            if f.type in ("bool", "bool | None"):
                flag, choices = f"--{f.name.replace('_', '-')}", (True, False) + (None,) * (f.type != "bool")
                one_of(getattr(self, f.name), flag, choices)
        # as ints: summary.json wrote numpy's 2 as "2" (a string)
        object.__setattr__(self, "stride", whole(self.stride, "--stride", hint=" (1 = every frame)"))
        if self.max_frames is not None:  # 2.5 made the run folder, then failed as "a bug" (islice)
            object.__setattr__(self, "max_frames", whole(self.max_frames, "--max-frames"))
        for name, flag in (("alpha", "--alpha"), ("reconnect_s", "--reconnect-s"), ("max_duration", "--max-duration-s"),
                           ("segment_s", "--segment-s"), ("min_free_mb", "--min-free-mb")):  # "0.5": a TypeError below
            if getattr(self, name) is not None or name not in ("max_duration", "segment_s"):  # None: no limit
                object.__setattr__(self, name, number(getattr(self, name), flag))
        rules = [
            (0.0 <= self.alpha <= 1.0, f"--alpha {self.alpha} must be between 0 (frame only) and 1 (colours only)"),
            (self.reconnect_s > 0, f"--reconnect-s {self.reconnect_s} must be above 0 seconds"),
            *((value is None or (math.isfinite(value) and value > 0),
               f"{flag} {value} must be above 0 seconds (leave it out for no limit)")
              for flag, value in (("--max-duration-s", self.max_duration), ("--segment-s", self.segment_s))),
            (math.isfinite(self.min_free_mb) and self.min_free_mb >= 0,
             f"--min-free-mb {self.min_free_mb} must be 0 (no floor) or more MB"),
            (self.classes is None or any(str(c).strip() for c in self.classes),
             "--classes is empty: give one or more class names, e.g. --classes person,car"),
        ]
        for ok, message in rules:
            if not ok:
                raise DronsegError(message)
        one_of(self.codec, "--codec", VIDEO_CODECS, ": pick one (auto: H.264 on the GPU's encoder, else the CPU's, else mp4v)")
        object.__setattr__(self, "max_pixels", check_max_pixels(self.max_pixels))
        from dronseg_edge.pipeline.live_targets import (check_preview, check_stream_settings, parse_results_target,
                                                        parse_stream_urls)

        # one URL as a string is one URL, not its characters ("--stream-out 'u': not a stream URL")
        urls = (self.stream_out,) if isinstance(self.stream_out, str) else tuple(self.stream_out or ())
        object.__setattr__(self, "stream_out", urls)
        streams = {(target.host, target.port) for target in parse_stream_urls(self.stream_out) if target.kind != "rtsp"}
        check_stream_settings(self.stream_bitrate_kbps, self.stream_what, self.stream_size)
        defaults = {f.name: f.default for f in fields(self)}  # given without a stream to apply to: read by nothing
        if not urls and (given := [n for n in ("stream_bitrate_kbps", "stream_what", "stream_size")
                                   if getattr(self, n) != defaults[n]]):
            raise DronsegError(f"--{given[0].replace('_', '-')} has no effect without --stream-out: add --stream-out "
                               "URL, or drop it")
        check_preview(self.preview, self.preview_token)
        if self.results is not None and parse_results_target(self.results)[1] in streams:  # JSON in the video's port
            raise DronsegError(f"--results {self.results} is also a --stream-out destination: give it another port")

    def overlay_plan(self, lut: np.ndarray, legend: tuple[str, ...] | None = None) -> OverlayPlan | None:
        """The run's one overlay decision: made for the video (or overlay images), the window, an
        overlay stream and the preview, else not at all. ``legend``: the class names when the overlay
        carries the legend."""
        from dronseg_edge.pipeline.overlay import OverlayPlan

        wanted = self.save_video or self.show or self.preview is not None or (
            bool(self.stream_out) and self.stream_what == "overlay")
        return OverlayPlan(self.alpha, lut, legend) if wanted else None
