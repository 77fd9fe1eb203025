"""The live outputs of a run, made before its first frame: ``--stream-out`` streams, the ``--preview``
page and the ``--results`` lines (the sinks are in stream_sink.py, preview.py and results_sink.py).

What the operator needs to connect (the preview's address, each stream and an rtp:// stream's SDP) is
announced on this module's logger at INFO level, which the CLI prints; summary.json gets one entry per
output (:func:`live_records`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dronseg_edge.atomic import write_text_atomic
from dronseg_edge.errors import DronsegError
from dronseg_edge.gst_encoders import jetson_encoder
from dronseg_edge.pipeline.live_encoder import GStreamerLiveEncoder, PyAVLiveEncoder, check_pyav_streams
from dronseg_edge.pipeline.live_targets import (StreamTarget, check_preview, check_stream_settings, is_loopback,
                                                parse_results_target, parse_stream_urls, resolve_udp, sdp_text)
from dronseg_edge.pipeline.overlay import OverlayPlan
from dronseg_edge.pipeline.results_sink import ResultsSink
from dronseg_edge.pipeline.sinks import Sink
from dronseg_edge.pipeline.source_base import Source
from dronseg_edge.pipeline.stream_sink import StreamSink

if TYPE_CHECKING:
    from dronseg_edge.pipeline.preview import PreviewServer

log = logging.getLogger(__name__)

DEFAULT_STREAM_FPS = 30.0


def open_preview(options) -> PreviewServer | None:
    """The preview's server, listening (``options``: a RunOptions): before the run folder exists, so a
    port in use is one error line and nothing is left behind."""
    address = check_preview(options.preview, options.preview_token)
    if address is None:
        return None
    from dronseg_edge.pipeline.preview import PreviewServer  # http.server and ssl: only a preview pays for them

    server = PreviewServer(*address, token=options.preview_token)
    if not is_loopback(address[0]):
        log.warning("--preview listens on %s:%d, reachable from the network: viewers need the token "
                    "(http://HOST:%d/?token=...)", address[0], server.port, server.port)
    log.info("preview: %s", server.url)
    return server


def check_results_target(options) -> None:
    """A ``--results`` target that cannot work (a file that exists or whose folder does not, a UDP host
    that does not resolve) is refused before the run folder is made."""
    if options.results is None:
        return
    kind, where = parse_results_target(options.results)
    if kind == "udp":
        resolve_udp(options.results, *where)
    elif kind == "file" and options.out is not None and Path(options.out).resolve() in (
            Path(where).resolve(), *Path(where).resolve().parents):
        # The run's own files there (summary.json, overlay.mp4, stats.jsonl, ...) would replace it or refuse it.
        raise DronsegError(f"--results {where} is --out {options.out} or inside it, which holds the run's own files: "
                           "give a file outside it")
    elif kind == "file" and Path(where).is_dir():
        raise DronsegError(f"--results {where} is a folder: give a new file name inside it")
    elif kind == "file" and Path(where).exists():
        raise DronsegError(f"--results {where}: the file exists and a run never appends to another's; give a new name")
    elif kind == "file" and not Path(where).absolute().parent.is_dir():
        raise DronsegError(f"--results {where}: the folder {Path(where).absolute().parent} does not exist; make it "
                           "or give another file name")


def build_live_sinks(src: Source, out_dir: Path, options, lut: np.ndarray, plan: OverlayPlan | None,
                     legend: tuple[str, ...] | None, preview: PreviewServer | None) -> list[Sink]:
    """The sinks of the live outputs ``options`` asks for, in the order: preview, streams, results.

    ``plan``: the run's overlay (the preview's, and the streams' with ``--stream-what overlay``);
    ``legend``: the class names when the pictures carry the legend. SDP files are written to ``out_dir``.
    """
    sinks: list[Sink] = []
    if preview is not None:
        from dronseg_edge.pipeline.preview import PreviewSink

        sinks.append(PreviewSink(preview, plan))
    targets = parse_stream_urls(options.stream_out)
    if targets:
        size = check_stream_settings(options.stream_bitrate_kbps, options.stream_what, options.stream_size)
        hardware = jetson_encoder()
        if hardware is None or any(t.kind == "rtsp" for t in targets):
            check_pyav_streams()
        picture = plan if options.stream_what == "overlay" else OverlayPlan(1.0, lut, legend, colours_only=True)
        # The rate frames are sent at: a keyframe every KEYFRAME_S counts sent frames (--stride 5 sent one in
        # 5 s); PyAV's encoder also forces one a second by the clock (a --live model slower than its camera)
        fps = (src.fps or DEFAULT_STREAM_FPS) / options.stride
        for target in targets:
            sdp = target.sdp_name if target.kind == "rtp" else None
            description = sdp_text(target) if sdp else None  # once: it may look the receiver's name up
            if sdp:
                write_text_atomic(out_dir / sdp, description)
            sinks.append(StreamSink(target, picture, options.stream_what, size, fps, options.stream_bitrate_kbps,
                                    open_encoder=_encoder_opener(hardware), sdp=sdp))
            log.info("stream: %s (%s, H.264)%s", target.name, options.stream_what,
                     f", SDP in {out_dir / sdp}:\n{description.rstrip()}" if sdp else "")
    if options.results is not None:
        sinks.append(ResultsSink(options.results, with_confidence=options.save_conf))
    return sinks


def _encoder_opener(hardware: str | None):
    """(target, size, fps, kbps) -> LiveEncoder: a Jetson's GStreamer encoder for udp:// and rtp://
    (PyAV's libx264 where GStreamer does not open), PyAV's for the rest."""

    def open_encoder(target: StreamTarget, size: tuple[int, int], fps: float, bitrate_kbps: int):
        if hardware is not None and target.kind != "rtsp":
            try:
                return GStreamerLiveEncoder(target, size, fps, bitrate_kbps, hardware)
            except OSError as exc:
                log.warning("stream %s: %s; sending with PyAV's libx264 instead", target.name, exc)
        return PyAVLiveEncoder(target, size, fps, bitrate_kbps)

    return open_encoder


def live_records(sinks: list[Sink]) -> dict:
    """summary.json's ``streams``, ``preview`` and ``results`` (None for an output not asked for)."""
    streams = [sink.record() for sink in sinks if isinstance(sink, StreamSink)]
    preview = next((sink.record() for sink in sinks if sink.name == "preview"), None)
    results = next((sink.record() for sink in sinks if isinstance(sink, ResultsSink)), None)
    return {"streams": streams or None, "preview": preview, "results": results}
