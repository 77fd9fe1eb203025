"""--stream-out: what a receiver gets (real receivers on 127.0.0.1), drops, reconnects and latency.

PyAV receives everywhere; ffmpeg, where it is installed, receives the same streams as a player would.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from live_receivers import FFMPEG, LOOPBACK, PLAN, PyAVReceiver, feed, ffmpeg_receiver, free_port, make_result, wait_until_bound

from dronseg_edge.pipeline.live_encoder import PyAVLiveEncoder
from dronseg_edge.pipeline.live_targets import parse_stream_url, sdp_text
from dronseg_edge.pipeline.sink_worker import SinkWorker
from dronseg_edge.pipeline.stream_sink import FIRST_RETRY_S, MAX_RETRY_S, LatencySample, StreamSink
from dronseg_edge.pipeline.video_writer import _import_av, encoder_opens

needs_x264 = pytest.mark.skipif(_import_av() is None or not encoder_opens("libx264"),
                                reason="needs PyAV with libx264 (the `video` extra)")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg program (not installed here)")
# PyAV 12 cannot switch FFmpeg's log callback off (set_level(None)), and its RTSP listener then stalls in the
# handshake, the publisher waiting for its answer (seen with PyAV 12.0.0); the ffmpeg-program test below still runs.
needs_quiet_pyav_listener = pytest.mark.skipif(_import_av() is not None and int(_import_av().__version__.split(".")[0]) < 13,
                                               reason="PyAV 12's RTSP listener stalls with FFmpeg's log on, which PyAV 12 "
                                                      "cannot turn off")
pytestmark = pytest.mark.timeout(60)


def stream_sink(url: str, size=None, open_encoder=PyAVLiveEncoder) -> StreamSink:
    return StreamSink(parse_stream_url(url), PLAN, "overlay", size, 30.0, 1000, open_encoder=open_encoder)


def send_until_received(sink: StreamSink, receiver, frames: int = 150) -> None:
    """Send frames at 60 fps until the receiver (a PyAVReceiver or an ffmpeg process) has stopped, or 150 frames."""
    feed(sink, frames, until=lambda: receiver.poll() is not None)
    sink.close()


@needs_x264
def test_udp_mpegts_is_decoded_by_pyav(tmp_path):
    port = free_port()
    receiver = PyAVReceiver(f"udp://{LOOPBACK}:{port}", {"timeout": "5000000"})
    wait_until_bound(port)
    sink = stream_sink(f"udp://{LOOPBACK}:{port}")
    send_until_received(sink, receiver)
    receiver.join()
    assert receiver.decoded >= 30 and receiver.errors == []
    assert receiver.sizes == {(160, 96)}
    record = sink.record()
    assert (record["protocol"], record["encoder"], record["frames_dropped"], record["reconnects"]) == ("udp", "libx264", 0, 0)
    assert record["frames_sent"] >= 30 and 0 < record["latency_ms"]["p50"] <= record["latency_ms"]["p99"]


@needs_x264
def test_a_udp_stream_no_one_receives_is_sent_without_an_error():
    sink = stream_sink(f"udp://{LOOPBACK}:{free_port()}")
    feed(sink, 10, fps=200)
    sink.close()
    record = sink.record()
    assert (record["frames_sent"], record["frames_dropped"], record["last_error"]) == (10, 0, None)


@needs_x264
def test_rtp_is_decoded_from_its_sdp_file_by_pyav_at_the_stream_size(tmp_path):
    port = free_port()
    target = parse_stream_url(f"rtp://{LOOPBACK}:{port}")
    sdp = tmp_path / target.sdp_name
    sdp.write_text(sdp_text(target))
    receiver = PyAVReceiver(str(sdp), {"protocol_whitelist": "file,udp,rtp"})
    wait_until_bound(port)
    sink = StreamSink(target, PLAN, "overlay", (81, 49), 30.0, 500, open_encoder=PyAVLiveEncoder)
    send_until_received(sink, receiver)
    receiver.join()
    assert receiver.decoded >= 30 and receiver.errors == []
    assert receiver.sizes == {(80, 48)}  # --stream-size, each side even for yuv420p


@needs_x264
@needs_quiet_pyav_listener
def test_rtsp_publish_is_received_by_a_listening_pyav_server():
    port = free_port(socket.SOCK_STREAM)
    url = f"rtsp://{LOOPBACK}:{port}/drone"
    receiver = PyAVReceiver(url, {"rtsp_flags": "listen", "listen_timeout": "15"})
    wait_until_bound(port, socket.SOCK_STREAM)
    sink = stream_sink(url)
    send_until_received(sink, receiver)
    receiver.join()
    assert receiver.decoded >= 30 and receiver.errors == []
    assert sink.record()["frames_sent"] >= 30


@needs_x264
@needs_ffmpeg
@pytest.mark.parametrize("kind", ["udp", "rtp", "rtsp"])
def test_ffmpeg_decodes_30_frames_without_an_error(kind, tmp_path):
    port = free_port(socket.SOCK_STREAM if kind == "rtsp" else socket.SOCK_DGRAM)
    url = f"{kind}://{LOOPBACK}:{port}" + ("/drone" if kind == "rtsp" else "")
    target = parse_stream_url(url)
    if kind == "udp":
        args = ["-analyzeduration", "1000000", "-i", f"udp://{LOOPBACK}:{port}?timeout=5000000"]
    elif kind == "rtp":
        (tmp_path / "stream.sdp").write_text(sdp_text(target))
        args = ["-protocol_whitelist", "file,udp,rtp", "-i", str(tmp_path / "stream.sdp")]
    else:
        args = ["-rtsp_flags", "listen", "-listen_timeout", "15", "-i", url]
    receiver = ffmpeg_receiver(*args)
    try:
        wait_until_bound(port, socket.SOCK_STREAM if kind == "rtsp" else socket.SOCK_DGRAM)
        send_until_received(stream_sink(url), receiver)
        _, errors = receiver.communicate(timeout=20)
    finally:
        receiver.kill()
    assert (receiver.returncode, errors) == (0, "")


@needs_x264
@needs_quiet_pyav_listener
def test_an_rtsp_server_that_goes_away_is_reconnected_with_back_off():
    port = free_port(socket.SOCK_STREAM)
    url = f"rtsp://{LOOPBACK}:{port}/drone"
    first = PyAVReceiver(url, {"rtsp_flags": "listen", "listen_timeout": "15"}, frames=10)
    wait_until_bound(port, socket.SOCK_STREAM)
    sink = stream_sink(url)
    feed(sink, 400, until=lambda: first.poll() is not None)  # the server takes 10 frames and goes away
    first.join()
    feed(sink, 10)  # sent into a closed connection, then refused: dropped
    second = PyAVReceiver(url, {"rtsp_flags": "listen", "listen_timeout": "15"}, frames=10)
    wait_until_bound(port, socket.SOCK_STREAM)
    feed(sink, 600, until=lambda: second.poll() is not None)
    sink.close()
    second.join()
    record = sink.record()
    assert first.decoded == second.decoded == 10 and second.errors == []
    assert record["reconnects"] == 1 and record["frames_dropped"] > 0 and record["last_error"]


class FakeEncoder:
    """A LiveEncoder that refuses to open ``refusals`` times, then sends; ``attempts``: the clock at each open."""

    encoder = "fake"
    refusals = 0
    attempts: list = []
    opened: list = []
    clock = staticmethod(time.monotonic)

    def __init__(self, target, size, fps, kbps):
        FakeEncoder.attempts.append(FakeEncoder.clock())
        if FakeEncoder.refusals:
            FakeEncoder.refusals -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        self.size = size
        self.frames = []
        FakeEncoder.opened.append(self)

    def send(self, frame):
        self.frames.append(frame)
        return True

    def close(self):
        pass


@pytest.fixture
def fake_encoder(monkeypatch):
    FakeEncoder.refusals, FakeEncoder.attempts, FakeEncoder.opened = 0, [], []
    yield FakeEncoder


def test_refusals_drop_frames_and_retry_with_doubling_back_off(monkeypatch, fake_encoder):
    clock = [100.0]
    monkeypatch.setattr("dronseg_edge.pipeline.stream_sink.time.monotonic", lambda: clock[0])
    monkeypatch.setattr(FakeEncoder, "clock", staticmethod(lambda: clock[0]))
    FakeEncoder.refusals = 3
    sink = stream_sink("rtsp://127.0.0.1:8554/drone", open_encoder=FakeEncoder)
    for index in range(40):  # a frame every 1/8 s (exact in binary)
        sink.write(make_result(index))
        clock[0] += 0.125
    # refused at 0 s, retried 0.5 s, 1 s and 2 s after each refusal; sending from 3.5 s on
    assert [round(t - 100.0, 1) for t in FakeEncoder.attempts] == [0.0, 0.5, 1.5, 3.5]
    assert len(FakeEncoder.opened[0].frames) == sink.record()["frames_sent"] == 12 and sink.dropped == 28
    assert sink.frames == 12  # summary.json's frames_written: the frames sent, not the 40 given
    assert sink.reconnects == 0 and "Connection refused" in sink.last_error
    assert FakeEncoder.opened[0].size == (160, 96) and (FIRST_RETRY_S, MAX_RETRY_S) == (0.5, 10.0)


def test_a_lost_connection_is_reopened_and_counted(fake_encoder, caplog):
    class Dropping(FakeEncoder):
        def send(self, frame):
            if len(FakeEncoder.opened) == 1 and len(self.frames) == 3:
                raise BrokenPipeError(32, "Broken pipe")
            return super().send(frame)

    sink = stream_sink("rtsp://127.0.0.1:8554/drone", open_encoder=Dropping)
    for index in range(4):
        sink.write(make_result(index))
    sink._retry_at = 0.0  # the back-off has passed
    sink.write(make_result(4))
    assert (sink.record()["frames_sent"], sink.dropped, sink.reconnects, len(FakeEncoder.opened)) == (4, 1, 1, 2)
    assert [r.getMessage() for r in caplog.records] == [
        "stream rtsp://127.0.0.1:8554/drone was lost ([Errno 32] Broken pipe): retrying every 0.5..10 s; frames for it "
        "are dropped meanwhile", "stream rtsp://127.0.0.1:8554/drone: sending"]
    assert "Broken pipe" in sink.record()["last_error"]


def test_a_publish_password_is_masked_in_logs_and_summary(fake_encoder, caplog):
    class Refused(FakeEncoder):
        def __init__(self, target, *args):
            raise ConnectionRefusedError(111, f"Connection refused: '{target.url}'")  # as PyAV names the URL

    sink = stream_sink("rtsp://pilot:s3cret@127.0.0.1:8554/drone", open_encoder=Refused)
    sink.write(make_result(0))
    record = sink.record()
    assert sink.name == record["url"] == "rtsp://pilot:***@127.0.0.1:8554/drone"  # summary.json's frames_written key
    assert "s3cret" not in str(record) + caplog.text and "pilot:***@" in record["last_error"]


def test_latency_is_counted_from_the_frames_read(fake_encoder):
    sink = stream_sink("udp://127.0.0.1:5600", open_encoder=FakeEncoder)
    for index in range(5):
        result = make_result(index)
        result.read_at -= 0.050  # read 50 ms ago
        sink.write(result)
    latency = sink.record()["latency_ms"]
    assert 50.0 <= latency["p50"] <= latency["p99"] < 5000.0


def test_latency_sample_is_bounded_and_keeps_the_percentiles():
    sample = LatencySample(size=1000, seed=1)
    for value in range(100_000):
        sample.add(float(value % 100))
    assert len(sample.values) == 1000 and sample.count == 100_000
    assert sample.percentiles()["p50"] == pytest.approx(49.5, abs=6)
    assert sample.percentiles()["p99"] == pytest.approx(99, abs=2)
    assert LatencySample().percentiles() is None


def stuck_stream(release: threading.Event):
    """A stream sink whose sender is stuck in each send until ``release`` is set, and its worker."""
    class Stuck(FakeEncoder):
        def send(self, frame):
            release.wait(30)
            return super().send(frame)

    sink = stream_sink("udp://127.0.0.1:5600", open_encoder=Stuck)
    return sink, SinkWorker(sink, queue_size=8)


def test_a_sender_that_is_stuck_never_holds_up_the_run(fake_encoder):
    """The stream's worker drops its oldest frame while the sender is stuck (a TCP send to a server that
    stopped reading): every put returns at once (a waiting put would have dropped nothing), and the
    newest frame is the next one sent."""
    release = threading.Event()
    sink, worker = stuck_stream(release)
    results = [make_result(index) for index in range(50)]
    for result in results:
        worker.put(result)
    release.set()
    worker.close()
    sent = FakeEncoder.opened[0].frames
    assert sink.queue_dropped >= 50 - SinkWorker.LIVE_QUEUE - 1 and sink.frames_dropped + len(sent) == 50
    assert (sent[-1] == PLAN.image(results[-1])).all()  # the last frame given is the last one sent


def test_a_sender_still_stuck_at_the_end_counts_the_frames_it_holds_as_dropped(fake_encoder, caplog):
    """A receiver frozen until the run's end (SIGSTOP): summary.json gave 173 frames, 22 sent and 149 dropped; the
    frame in the stuck write and the one still queued were in neither count."""
    release = threading.Event()
    sink, worker = stuck_stream(release)
    for index in range(50):
        worker.put(make_result(index))
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        worker.close()
    counts = (sink.frames, sink.frames_dropped)
    release.set()
    assert counts == (0, 50)
    assert "did not finish within 1 s (one send has gone on that long: its receiver stopped reading?)" in caplog.text


def test_a_sender_slower_than_the_frames_is_not_said_to_have_a_receiver_that_stopped_reading(fake_encoder, caplog,
                                                                                             monkeypatch):
    """A software encoder at 4K (0.8 s a frame, a UDP target: no receiver can hold it) was said at the end to have
    'its receiver stopped reading'. Its send under way began just now (the clock held still), so it is still sending."""
    release = threading.Event()
    sink, worker = stuck_stream(release)
    monkeypatch.setattr("dronseg_edge.pipeline.sink_worker.time.monotonic", lambda: 100.0)
    for index in range(3):
        worker.put(make_result(index))
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        worker.close()
    release.set()
    assert "(still sending: its encoder or link is slower than the frames came)" in caplog.text
    assert "receiver" not in caplog.text


def test_stream_what_color_sends_the_class_colours_with_the_legend(fake_encoder):
    from dronseg_edge.classes import CLASS_NAMES, PALETTE
    from dronseg_edge.pictures import bgr_lut, colorize
    from dronseg_edge.pipeline.overlay import OverlayPlan

    lut = bgr_lut(PALETTE)
    plain = StreamSink(parse_stream_url("udp://127.0.0.1:5600"), OverlayPlan(1.0, lut), "color", None, 30.0, 1000,
                       open_encoder=FakeEncoder)
    result = make_result(0, (320, 192))
    plain.write(result)
    assert (FakeEncoder.opened[0].frames[0] == colorize(result.mask, lut)).all()
    labelled = StreamSink(parse_stream_url("udp://127.0.0.1:5602"), OverlayPlan(1.0, lut, CLASS_NAMES), "color",
                          None, 30.0, 1000, open_encoder=FakeEncoder)
    result = make_result(0, (320, 192))
    result.seen_classes = (10, 11)
    labelled.write(result)
    sent = FakeEncoder.opened[1].frames[0]
    assert (sent[:100] == colorize(result.mask, lut)[:100]).all()  # the legend only in the bottom-left corner
    assert (sent[-60:, :130] != colorize(result.mask, lut)[-60:, :130]).any()
