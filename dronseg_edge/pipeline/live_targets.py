"""Where the live outputs go: ``--stream-out`` URLs, the ``--preview`` address and the ``--results`` target.

Parsed and checked once, when :class:`~dronseg_edge.pipeline.run_state.RunOptions` is made, so a
mistyped URL is one ``error:`` line (exit code 2) before the model loads. The SDP that players need
for an ``rtp://`` stream is made here too (:func:`sdp_text`): it depends on the address only, so the
CLI can print it before the run and the run writes the same text next to the outputs.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.option_fields import one_of
from dronseg_edge.pipeline.source_base import shown_url, split_url
from dronseg_edge.sizes import parse_size

# H.264 in MPEG-TS over UDP; over RTP/UDP (QGroundControl's 'UDP h.264 video stream', port 5600); published
# to an RTSP server (TCP)
STREAM_KINDS = ("udp", "rtp", "rtsp")
STREAM_EXAMPLES = "udp://192.168.1.10:5600, rtp://192.168.1.10:5600 or rtsp://server:8554/drone"
STREAM_WHAT = ("overlay", "color")
RTP_PAYLOAD_TYPE = 96  # the first dynamic payload type: what FFmpeg's RTP muxer and QGroundControl use
DEFAULT_RTSP_PORT = 554
MAX_STREAM_BITRATE_KBPS = 100_000
_HOST = re.compile(r"[A-Za-z0-9._:%-]+")


@dataclass(frozen=True)
class StreamTarget:
    """One ``--stream-out`` URL: ``kind`` udp | rtp | rtsp, ``host``, ``port`` (rtsp: 554 when not given)."""

    url: str
    kind: str
    host: str
    port: int
    shares_port: bool = False  # another rtp:// target has this port (parse_stream_urls)

    @property
    def name(self) -> str:
        """How the target is shown in logs, errors and summary.json: its password masked (``rtsp://user:***@...``)."""
        return shown_url(self.url)

    @property
    def sdp_name(self) -> str:
        """The SDP file's name in the run folder (rtp:// only): ``stream_PORT.sdp``, or ``stream_HOST_PORT.sdp`` where
        another rtp:// target has the port (two ground stations on 5600: one file would replace the other)."""
        host = re.sub(r"[^A-Za-z0-9.-]", "-", self.host) + "_" if self.shares_port else ""
        return f"stream_{host}{self.port}.sdp"


def parse_stream_url(text: str) -> StreamTarget:
    """A ``--stream-out`` value -> StreamTarget; DronsegError naming the value and the forms it takes."""
    parts, shown = split_url(str(text).strip(), "--stream-out"), shown_url(str(text).strip())
    kind = parts.scheme.lower()
    if kind not in STREAM_KINDS:
        raise DronsegError(f"--stream-out {shown!r}: not a stream URL this can send; use {STREAM_EXAMPLES}")
    try:
        port = parts.port
    except ValueError:
        raise DronsegError(f"--stream-out {shown!r}: the port is not a number in 1..65535") from None
    if not parts.hostname:
        raise DronsegError(f"--stream-out {shown!r}: no host; write {kind}://HOST:PORT (e.g. {STREAM_EXAMPLES})")
    if not _HOST.fullmatch(parts.hostname):
        raise DronsegError(f"--stream-out {shown!r}: {parts.hostname!r} is not a host name or address")
    if kind == "rtsp":
        if parts.path in ("", "/"):
            raise DronsegError(f"--stream-out {shown!r}: an RTSP publish needs a path on the server, "
                               "e.g. rtsp://server:8554/drone")
        return StreamTarget(str(text).strip(), kind, parts.hostname, port or DEFAULT_RTSP_PORT)
    if not port:
        raise DronsegError(f"--stream-out {shown!r}: no port; write {kind}://HOST:PORT, e.g. {kind}://192.168.1.10:5600")
    if parts.path not in ("", "/") or parts.query or parts.username is not None:  # a login was dropped silently
        raise DronsegError(f"--stream-out {shown!r}: {kind}:// takes HOST:PORT only (no path or options; "
                           f"{kind.upper()} takes no user or password)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return StreamTarget(f"{kind}://{host}:{port}", kind, parts.hostname, port)


def parse_stream_urls(values) -> tuple[StreamTarget, ...]:
    """Every ``--stream-out`` value, parsed; the same destination twice is refused (udp:// and rtp:// to one
    HOST:PORT are one socket: a receiver got MPEG-TS and RTP packets mixed)."""
    targets = tuple(parse_stream_url(value) for value in values)
    seen = set()
    for target in targets:
        key = (target.host, target.port) if target.kind != "rtsp" else target.url
        if key in seen:
            same = "" if target.kind == "rtsp" else " (udp:// and rtp:// to one HOST:PORT are one destination)"
            raise DronsegError(f"--stream-out {target.name} is given twice{same}: give each destination once")
        seen.add(key)
    ports = collections.Counter(target.port for target in targets if target.kind == "rtp")
    return tuple(dataclasses.replace(target, shares_port=True) if target.kind == "rtp" and ports[target.port] > 1
                 else target for target in targets)


def check_stream_settings(bitrate_kbps: int, what: str, size: str | None) -> tuple[int, int] | None:
    """Check ``--stream-bitrate-kbps``, ``--stream-what`` and ``--stream-size``; returns the size as (W, H)."""
    if not 50 <= int(bitrate_kbps) <= MAX_STREAM_BITRATE_KBPS:
        raise DronsegError(f"--stream-bitrate-kbps {bitrate_kbps} must be 50..{MAX_STREAM_BITRATE_KBPS} kbit/s "
                           "(2000 suits 720p over a radio link)")
    one_of(what, "--stream-what", STREAM_WHAT)
    return None if size is None else parse_size(size, "--stream-size")


def sdp_text(target: StreamTarget) -> str:
    """The SDP a player opens to receive an ``rtp://`` stream (``ffplay -protocol_whitelist
    file,udp,rtp -i stream.sdp``, VLC): H.264, payload type 96, packetization mode 1. The parameter
    sets travel in the stream itself (before every keyframe), so the SDP needs no sprop line and does
    not depend on the frame size."""
    try:  # a name is looked up once (an address stays as it is); an unknown one stays as written
        address = socket.getaddrinfo(target.host, None, type=socket.SOCK_DGRAM)[0][4][0]
    except OSError:
        address = target.host
    family = "IP6" if ":" in address else "IP4"
    return "\n".join([
        "v=0", f"o=- 0 0 IN {family} {address}", "s=dronseg-edge", f"c=IN {family} {address}", "t=0 0",
        f"m=video {target.port} RTP/AVP {RTP_PAYLOAD_TYPE}", f"a=rtpmap:{RTP_PAYLOAD_TYPE} H264/90000",
        f"a=fmtp:{RTP_PAYLOAD_TYPE} packetization-mode=1", "",
    ])


def parse_preview(text: str) -> tuple[str, int]:
    """``--preview [HOST:]PORT`` -> (host, port); host 127.0.0.1 when not named, port 0 = any free one."""
    value = str(text).strip()
    split_url(value, "--preview", address=True)  # a bracket left open ([::1), a non-address in brackets
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdecimal() or not 0 <= int(port) <= 65535:
        raise DronsegError(f"--preview {text!r}: give a port (8080) or HOST:PORT (0.0.0.0:8080), port 0..65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost): no one else can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_preview(preview: str | None, token: str | None) -> tuple[str, int] | None:
    """The preview's (host, port); a host other than loopback needs ``--preview-token``."""
    if preview is None:
        if token is not None:
            raise DronsegError("--preview-token needs --preview [HOST:]PORT")
        return None
    host, port = parse_preview(preview)
    if token is not None and len(token) < 8:
        raise DronsegError("--preview-token must be at least 8 characters: anyone who guesses it can watch")
    if not is_loopback(host) and token is None:
        raise DronsegError(f"--preview {preview}: a preview on {host} can be watched by anyone who reaches this "
                           "machine: add --preview-token SECRET (viewers open http://HOST:PORT/?token=SECRET), "
                           "or bind it to 127.0.0.1 and use an SSH tunnel")
    return host, port


def parse_results_target(text: str) -> tuple[str, object]:
    """``--results`` -> ("stdout", None) for ``-``, ("udp", (host, port)) or ("file", Path)."""
    value = str(text).strip()
    if value == "-":
        return "stdout", None
    parts = split_url(value, "--results")
    if parts.scheme.lower() == "udp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port or parts.path not in ("", "/") or parts.username is not None:
            raise DronsegError(f"--results {shown_url(value)!r}: write udp://HOST:PORT (e.g. udp://127.0.0.1:14600; "
                               "UDP takes no user or password)")
        return "udp", (parts.hostname, port)
    if "://" in value:
        raise DronsegError(f"--results {shown_url(value)!r}: give udp://HOST:PORT, a file name, or - for standard output")
    if not value:
        raise DronsegError("--results is empty: give udp://HOST:PORT, a file name, or - for standard output")
    return "file", Path(value)


def resolve_udp(target: str, host: str, port: int) -> tuple:
    """The address (getaddrinfo's first entry) that ``--results udp://HOST:PORT`` sends to."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except OSError as exc:
        if exc.errno == socket.EAI_AGAIN:  # no answer now (the network not up yet at boot): exit 5, not "fix the command"
            raise RuntimeFailure(f"--results {target}: host {host} cannot be looked up now ({exc.strerror}): check "
                                 "the network and DNS, or give an IP address") from None
        raise DronsegError(f"--results {target}: host {host} is unknown ({exc.strerror or exc})") from None
