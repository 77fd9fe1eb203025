"""--preview: the page, the MJPEG stream, the shares, the token, the viewer limit, stalled browsers,
and the page in a real headless browser (Debian's chromium, where it is installed)."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest
from live_receivers import LOOPBACK, PLAN, make_result

from dronseg_edge.classes import PALETTE
from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.preview import BOUNDARY, MAX_VIEWERS, PreviewServer, PreviewSink
from dronseg_edge.pipeline.sink_worker import SinkWorker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def preview():
    server = PreviewServer(LOOPBACK, 0, token=None)
    sink = PreviewSink(server, PLAN)
    yield server, sink
    sink.close()


def get(server, path, timeout=5.0):
    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=timeout)
    connection.request("GET", path)
    return connection, connection.getresponse()


def read_part(response) -> bytes:
    """One JPEG of the multipart stream."""
    assert response.readline().strip() == f"--{BOUNDARY}".encode()
    headers = {}
    while (line := response.readline().strip()):
        key, _, value = line.decode().partition(":")
        headers[key.lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    data = response.read(int(headers["content-length"]))
    response.readline()
    return data


class Feeder:
    """Writes a moving picture to the preview sink at 20 fps in a thread until stopped."""

    def __init__(self, sink):
        self.sink, self.stop = sink, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        index = 0
        while not self.stop.wait(0.05):
            self.sink.write(make_result(index, (320, 192)))
            index += 1

    def close(self):
        self.stop.set()
        self.thread.join(5)


def test_page_stream_and_shares(preview):
    server, sink = preview
    connection, page = get(server, "/")
    body = page.read()
    assert page.status == 200 and b"stream.mjpg" in body and b"shares.json" in body
    connection, shares = get(server, "/shares.json")
    assert json.loads(shares.read())["frame"] is None  # nothing segmented yet
    feeder = Feeder(sink)
    try:
        connection, stream = get(server, "/stream.mjpg")
        assert stream.status == 200 and stream.getheader("Content-Type").startswith("multipart/x-mixed-replace")
        first, second = cv2.imdecode(np.frombuffer(read_part(stream), np.uint8), cv2.IMREAD_COLOR), None
        for _ in range(10):
            second = cv2.imdecode(np.frombuffer(read_part(stream), np.uint8), cv2.IMREAD_COLOR)
            if np.abs(first.astype(int) - second).mean() > 1:
                break
        assert first.shape == (192, 320, 3) and np.abs(first.astype(int) - second).mean() > 1
        connection.close()
    finally:
        feeder.close()
    connection, shares = get(server, "/shares.json")
    data = json.loads(shares.read())
    assert data["frame"] > 0 and data["shares"]["sky"] == pytest.approx(1 / 3, abs=0.01)
    assert data["colors"]["sky"] == "#%02x%02x%02x" % tuple(PALETTE[11])


def test_no_viewer_no_jpeg(preview):
    server, sink = preview
    sink.write(make_result(0))
    assert server.jpeg is None and json.loads(server.shares)["frame"] == 0


def test_the_printed_url_opens_with_a_token_that_needs_escaping():
    # a base64 secret (openssl rand -base64) holds '+' and '/', which a query string would read as ' '
    server = PreviewServer(LOOPBACK, 0, token="k9+Qz/7a&b=%1#x")
    try:
        query = server.url.split("/", 3)[3]  # "?token=...", as the page forwards it (location.search)
        for path in ("/", "/shares.json"):
            assert get(server, path + query)[1].status == 200
    finally:
        server.close()


def test_a_token_is_needed_for_everything_when_set():
    server = PreviewServer(LOOPBACK, 0, token="s3cret-token")
    try:
        for path in ("/", "/shares.json", "/stream.mjpg", "/?token=wrong"):
            assert get(server, path)[1].status == 403
        assert get(server, "/?token=s3cret-token")[1].status == 200
        assert server.url.endswith("/?token=s3cret-token")
    finally:
        server.close()


def test_at_most_a_few_viewers_and_a_stalled_one_holds_no_one_up(preview):
    server, sink = preview
    stalled = []
    for _ in range(MAX_VIEWERS):  # viewers that ask for the stream and never read a byte
        probe = socket.create_connection((LOOPBACK, server.port), timeout=5)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        probe.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        stalled.append(probe)
    deadline = time.monotonic() + 10
    while server.viewers < MAX_VIEWERS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get(server, "/stream.mjpg")[1].status == 503
    for index in range(60):  # the pipeline side: every write returns, whatever the viewers do
        sink.write(make_result(index, (640, 384)))
    assert json.loads(server.shares)["frame"] == 59
    for probe in stalled:
        probe.close()


def test_a_viewer_gone_before_its_reply_leaves_no_traceback(preview):
    """A tab closed or reloaded mid-request (a broken pipe, a reset), or one viewer too many, printed socketserver's
    traceback on infer's stderr each time, all flight long: tracebacks mean a bug here."""
    server, _ = preview
    server.viewers = MAX_VIEWERS  # /stream.mjpg gets the 503
    for path in ("/", "/shares.json", "/stream.mjpg", "/missing"):
        ours, viewer = socket.socketpair()
        viewer.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        viewer.close()  # gone before the reply: writing it is a broken pipe
        server._server.RequestHandlerClass(ours, ("viewer", 0), server._server)  # the server prints what this raises
        ours.close()
    server.viewers = 0


def test_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        with pytest.raises(DronsegError, match="the port is in use"):
            PreviewServer(LOOPBACK, taken.getsockname()[1])


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid"])  # TEST-NET-1: no address of this machine
def test_a_host_that_is_not_this_machine_is_named_as_the_fault_not_the_port(host):
    with pytest.raises(DronsegError, match=rf"^--preview {host}:0: cannot listen there: .*; give an address of this "
                                           r"machine \(0.0.0.0 for all of them\), or the port alone for 127.0.0.1$"):
        PreviewServer(host, 0)  # port 0, as "pick another port (0 picks a free one)" advised, fails the same


def test_the_sink_is_lossy_and_never_waits(preview):
    server, sink = preview
    assert sink.lossy and not sink.heavy
    worker = SinkWorker(sink)
    for index in range(20):
        worker.put(make_result(index))
    worker.close()
    assert sink.frames + sink.queue_dropped == 20


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for the browser test")
def test_the_page_in_headless_chromium_shows_a_moving_picture_and_the_shares(preview, tmp_path):
    server, sink = preview
    feeder = Feeder(sink)
    try:
        picture = (slice(12, 204), slice(12, 332))  # the <img>: 320x192 at the page's 12 px margin
        shots = []
        # The feeder's road grows and wraps every 64 frames (3.2 s): two shots a period apart look alike
        # on a loaded machine, so up to three more shots may be taken; a frozen page matches them all.
        for index in range(4):
            shot = tmp_path / f"shot{index}.png"
            chromium(server, f"--screenshot={shot}", "--window-size=800,400")
            shots.append(cv2.imread(str(shot)).astype(int))
            if index and np.abs(shots[0][picture] - shots[-1][picture]).mean() > 1:
                break  # the overlay moved between the first shot and this one
            time.sleep(0.5)
        for _ in range(3):  # a dump can come before the page's first poll is answered (seen once in 5 suite runs)
            dom = chromium(server, "--dump-dom").stdout
            if "sky</td>" in dom:
                break
    finally:
        feeder.close()
    assert np.abs(shots[0][picture] - shots[-1][picture]).mean() > 1, "the preview showed the same picture 4 times"
    sky = np.array(PALETTE[11][::-1])  # its swatch in the shares table, right of the picture
    assert (np.abs(shots[-1][:, 340:] - sky).sum(axis=2) == 0).sum() > 50
    assert "sky</td>" in dom and "33.3 %" in dom and "road</td>" in dom


def chromium(server: PreviewServer, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium on the preview page (3 s of the page's time, for the first frames and polls)."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                           *args, f"http://{LOOPBACK}:{server.port}/"], capture_output=True, text=True, timeout=30,
                          check=True)


def test_frames_served_counts_the_jpegs_a_viewer_got(preview):
    """summary.json's preview.frames_served: two pictures sent to one viewer -> 2."""
    server, sink = preview
    connection, stream = get(server, "/stream.mjpg")
    for number in range(2):
        server.publish(b"picture %d" % number, b"{}")
        assert read_part(stream) == b"picture %d" % number
    connection.close()
    server.close()  # ends the viewer's loop, after the count of what it sent
    deadline = time.monotonic() + 5
    while server.viewers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.record()["frames_served"] == 2
