"""``--preview [HOST:]PORT``: a small web page with the live overlay and the class shares beside it.

Python's own ``http.server`` in a thread; no framework and no build. ``/`` is the page, ``/stream.mjpg``
the overlay as MJPEG (``multipart/x-mixed-replace``, which every browser shows in an ``<img>``), and
``/shares.json`` the newest frame's class shares, polled twice a second by a few lines of JavaScript.

Nothing here can slow the pipeline: :class:`PreviewSink` is a lossy sink (it drops frames rather than
wait), encodes a JPEG only while someone watches, at most ``MAX_FPS`` a second and at most
``WIDTH`` pixels wide, and hands it over by replacing the newest one. Each viewer's connection is
served by its own thread, which always sends the newest JPEG: a slow browser gets fewer frames and
holds no one else up; one that stops reading is dropped after ``SEND_TIMEOUT_S``. At most
``MAX_VIEWERS`` watch at once (others get 503). A host other than loopback needs a token, which every
request carries as ``?token=`` (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import cv2

from dronseg_edge.errors import DronsegError
from dronseg_edge.pictures import fit_width
from dronseg_edge.pipeline.overlay import OverlayPlan
from dronseg_edge.pipeline.result import Result
from dronseg_edge.pipeline.sinks import Sink

MAX_VIEWERS = 4
MAX_FPS = 10.0
WIDTH = 640  # px: the preview is a glance, not the recording
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 75]
SEND_TIMEOUT_S = 10.0  # a viewer whose browser stops reading for this long is dropped
BOUNDARY = "dronsegframe"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>dronseg-edge preview</title>
<style>
body{margin:0;padding:12px;background:#111;color:#ddd;font:15px sans-serif;display:flex;gap:16px;align-items:flex-start}
img{max-width:72vw;background:#000}
td{padding:2px 6px}
.swatch{display:inline-block;width:14px;height:14px;border:1px solid #888;vertical-align:middle}
</style></head>
<body><img id="overlay" alt="live overlay">
<div><div id="status">waiting for frames</div><table id="shares"></table></div>
<script>
const query = location.search, byId = id => document.getElementById(id);
byId("overlay").src = "stream.mjpg" + query;
async function poll() {
  try {
    const data = await (await fetch("shares.json" + query, {cache: "no-store"})).json();
    if (data.frame !== null) {
      byId("status").textContent = "frame " + data.frame;
      const rows = Object.entries(data.shares).filter(e => e[1] > 0).sort((a, b) => b[1] - a[1]);
      byId("shares").replaceChildren(...rows.map(([name, share]) => {
        const row = document.createElement("tr"), swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = data.colors[name];
        [swatch, name, (100 * share).toFixed(1) + " %"].forEach(content => row.insertCell().append(content));
        return row;
      }));
    }
  } catch (error) {
    byId("status").textContent = "preview stopped";
  }
  setTimeout(poll, 500);
}
poll();
</script></body></html>
"""


class PreviewServer:
    """The preview's HTTP server, listening from construction until :meth:`close`, and the newest JPEG
    and shares, with a condition viewers wait on for the next one.

    Raises DronsegError when the address cannot be bound (a port in use, a host not of this machine).
    """

    def __init__(self, host: str, port: int, token: str | None = None):
        self.cond = threading.Condition()
        self.number, self.jpeg, self.closed = 0, None, False
        self.shares = json.dumps({"frame": None, "shares": {}, "colors": {}}).encode()
        self.token = token
        self.viewers = self.frames_served = 0
        handler = type("PreviewHandler", (_Handler,), {"preview": self})
        server = type("PreviewHTTPServer", (ThreadingHTTPServer,),
                      {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "daemon_threads": True})
        try:
            self._server = server((host, port), handler)
        except OSError as exc:
            why = ("the port is in use (another program, or another run)" if exc.errno == errno.EADDRINUSE
                   else exc.strerror or str(exc))
            fix = ("pick another port (0 picks a free one)" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else
                   "give an address of this machine (0.0.0.0 for all of them), or the port alone for 127.0.0.1")
            raise DronsegError(f"--preview {host}:{port}: cannot listen there: {why}; {fix}") from None
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="dronseg-preview", daemon=True)
        self._thread.start()

    def publish(self, jpeg: bytes | None, shares: bytes) -> None:
        with self.cond:
            if jpeg is not None:
                self.jpeg, self.number = jpeg, self.number + 1
            self.shares = shares
            self.cond.notify_all()

    def next_after(self, number: int, timeout: float) -> tuple[int, bytes | None]:
        with self.cond:
            self.cond.wait_for(lambda: self.number > number or self.closed, timeout)
            return self.number, self.jpeg

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={quote(self.token, safe='')}" if self.token else "")

    def watch(self) -> bool:
        """Take a viewer's place; False when MAX_VIEWERS already watch."""
        with self.cond:
            if self.viewers >= MAX_VIEWERS:
                return False
            self.viewers += 1
            return True

    def served(self) -> None:
        with self.cond:
            self.frames_served += 1

    def leave(self) -> None:
        with self.cond:
            self.viewers -= 1

    def allowed(self, query: str) -> bool:
        if self.token is None:
            return True
        given = parse_qs(query).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def close(self) -> None:
        """Stop listening and end every viewer's stream (within a poll interval)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


class _Handler(BaseHTTPRequestHandler):
    preview: PreviewServer
    timeout = SEND_TIMEOUT_S  # the socket's timeout: a browser that stops reading frees its thread
    protocol_version = "HTTP/1.0"

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # a viewer gone mid-request (a tab closed or reloaded): nothing to report
            super().handle()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = urlsplit(self.path)
        if not self.preview.allowed(parts.query):
            self._reply(403, "text/plain", b"a token is needed: open the address with ?token=...\n")
        elif parts.path in ("/", "/index.html"):
            self._reply(200, "text/html; charset=utf-8", PAGE.encode())
        elif parts.path == "/shares.json":
            self._reply(200, "application/json", self.preview.shares)
        elif parts.path == "/stream.mjpg":
            self._stream()
        else:
            self._reply(404, "text/plain", b"not found\n")

    def _reply(self, code: int, kind: str, body: bytes | None) -> None:
        """The status line and headers, then ``body`` (None: a stream of unknown length follows)."""
        self.send_response(code)
        self.send_header("Content-Type", kind)
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body or b"")

    def _stream(self) -> None:
        preview = self.preview
        if not preview.watch():
            self._reply(503, "text/plain", f"at most {MAX_VIEWERS} viewers at a time\n".encode())
            return
        try:
            self._reply(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}", None)
            number = 0
            while not preview.closed:
                number, jpeg = preview.next_after(number, timeout=1.0)
                if jpeg is None or preview.closed:  # not the last picture again, counted as served, once the run ends
                    continue
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                 "\r\n\r\n".encode() + jpeg + b"\r\n")
                self.wfile.flush()
                preview.served()
        finally:  # also when the browser went away, or stopped reading for SEND_TIMEOUT_S (an OSError: handle())
            preview.leave()

    def log_message(self, *args) -> None:  # no line per request on the run's terminal
        pass


class PreviewSink(Sink):
    """Feeds a :class:`PreviewServer`: the overlay as JPEG while someone watches, the shares always."""

    name = "preview"
    heavy = False
    lossy = True

    def __init__(self, server: PreviewServer, plan: OverlayPlan):
        super().__init__()
        self.server, self.plan = server, plan
        self.target = server.url
        self._colors = {}
        self._last_jpeg_at = -1.0

    def _write(self, result: Result) -> None:
        if not self._colors:
            self._colors = {name: "#%02x%02x%02x" % tuple(int(v) for v in colour)
                            for name, colour in zip(result.class_names, result.palette)}
        shares = json.dumps({"frame": result.index, "timestamp": result.timestamp,
                             "shares": result.shares_by_name(4), "colors": self._colors}).encode()
        jpeg = None
        now = time.monotonic()
        if self.server.viewers and now - self._last_jpeg_at >= 1.0 / MAX_FPS:
            image = self.plan.image(result)
            jpeg = cv2.imencode(".jpg", fit_width(image, min(WIDTH, image.shape[1])), JPEG)[1].tobytes()
            self._last_jpeg_at = now
        self.server.publish(jpeg, shares)

    def close(self) -> None:
        self.server.close()

    def record(self) -> dict:
        """summary.json's ``preview``."""
        return {"url": self.server.url.split("?")[0], "token": self.server.token is not None,
                "frames_served": self.server.frames_served, "frames_dropped": self.frames_dropped}
