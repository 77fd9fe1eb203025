import queue
import threading
import time

import pytest
from pipeline_media import scene

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.reader import FrameReader, put_unless_stopped
from dronseg_edge.pipeline.sources import FramesSource, Source, StreamSource


class PacedSource(Source):
    """Delivers ``count`` frames at ``fps`` like a camera; records how many were produced."""

    kind = "camera"
    live_default = True

    def __init__(self, count: int, fps: float, fail_after: int | None = None):
        super().__init__("paced")
        self.count, self.period, self.fail_after = count, 1.0 / fps, fail_after
        self.produced = 0

    def frames(self, stride=1):
        start = time.monotonic()
        for source_frames in FramesSource([scene(i, (32, 24)) for i in range(self.count)]).frames():
            if self.fail_after is not None and self.produced == self.fail_after:
                raise DronsegError("stream paced stopped")
            delay = start + self.produced * self.period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -self.period:  # this process was paused (a garbage collection): go on at the pace from
                start -= delay  # now, not with a burst of the frames it held up, which no consumer could take
            self.produced += 1
            yield source_frames


def test_queued_reader_delivers_every_frame_in_order_with_bounded_lookahead():
    source = PacedSource(count=40, fps=10_000)
    reader = FrameReader(source, live=False, queue_size=4)
    seen = []
    for record in reader:
        if not seen:
            time.sleep(0.2)  # a slow consumer: decoding must wait, not pile frames up
            assert source.produced <= 4 + 2
        seen.append(record.index)
    assert seen == list(range(40))
    assert reader.dropped == 0 and reader.decoded == 40


def test_decode_time_is_the_sum_over_the_frames_read():
    """summary.json's stage_ms.decode is decode_ms / decoded: every record's time counts, not the last one's."""
    records = list(FramesSource([scene(i, (32, 24)) for i in range(3)]).frames())
    for record, ms in zip(records, (1.0, 2.0, 4.0)):
        record.decode_ms = ms
    source = FramesSource([])
    source.frames = lambda stride=1: iter(records)
    reader = FrameReader(source, live=False)
    assert [record.index for record in reader] == [0, 1, 2]
    assert (reader.decoded, reader.decode_ms) == (3, 7.0)


def test_live_reader_drops_stale_frames_when_the_consumer_is_slower():
    source = PacedSource(count=60, fps=200)  # a frame every 5 ms
    reader = FrameReader(source, live=True)
    seen = []
    for record in reader:
        seen.append(record.index)
        time.sleep(0.03)  # "inference" six times slower than the source
    assert reader.dropped > 20
    assert len(seen) + reader.dropped == 60
    assert seen == sorted(seen) and seen[-1] == 59  # newest first, and the last frame is not lost


def test_live_reader_keeps_up_with_a_fast_consumer():
    source = PacedSource(count=30, fps=100)
    reader = FrameReader(source, live=True)
    seen = [record.index for record in reader]
    assert reader.dropped < 10 and len(seen) + reader.dropped == 30


def test_source_errors_reach_the_consumer_after_the_frames_before_them():
    source = PacedSource(count=10, fps=1000, fail_after=4)
    reader = FrameReader(source, live=False)
    seen = []
    with pytest.raises(DronsegError, match="stopped"):
        for record in reader:
            seen.append(record.index)
    assert seen == [0, 1, 2, 3]


def test_stop_ends_the_decode_thread():
    source = PacedSource(count=10_000, fps=1000)
    reader = FrameReader(source, live=False, queue_size=2)
    iterator = iter(reader)
    next(iterator)
    reader.stop()
    assert not any(t.name == "dronseg-decode" and t.is_alive() for t in threading.enumerate())
    assert source.produced < 100


class StalledCapture:
    """Two frames, then a read that returns (failing) only once ``resume`` is set: a pipe whose writer stalled,
    which no read timeout reaches. Records whether it was released while that read was blocked."""

    def __init__(self):
        self.left, self.resume, self.blocked, self.released_while_blocked = 2, threading.Event(), False, False

    def isOpened(self):
        return True

    def get(self, prop):
        return 0.0

    def read(self):
        if self.left:
            self.left -= 1
            return True, scene(self.left, (32, 24))
        self.blocked = True
        self.resume.wait(10)  # a bound for the old code, which waited for it
        self.blocked = False
        return False, None

    def release(self):
        self.released_while_blocked |= self.blocked


def test_a_read_that_never_returns_holds_up_neither_a_stop_nor_the_consumer_and_keeps_its_capture(caplog):
    capture = StalledCapture()
    source = StreamSource("udp://127.0.0.1:5000", reconnect_s=30, open_capture=lambda: capture)
    reader = FrameReader(source, live=False)
    frames = iter(reader)
    assert [next(frames).index for _ in range(2)] == [0, 1]
    threading.Timer(0.2, reader.stop, kwargs={"timeout": 0}).start()  # as --max-duration-s's deadline does
    assert list(frames) == [] and capture.blocked  # the consumer ended while the read was still blocked
    joins = []
    reader._thread.join = lambda timeout=None: joins.append(timeout)  # its waits, counted (the thread is blocked)
    reader.stop(timeout=0.1)
    reader.stop()  # a second stop (Segmenter.stream's, then run_inference's) does not wait again
    source.close()
    assert joins == [0.1] and not capture.released_while_blocked  # a release under a blocked read crashes it
    capture.resume.set()
    threading.Thread.join(reader._thread, 5)
    assert not reader._thread.is_alive() and "reopening" not in caplog.text  # no reconnect after the stop


def test_realtime_pacing_of_a_file_in_live_mode(video_path):
    from dronseg_edge.pipeline.source_spec import open_source

    source = open_source(video_path)  # 24 frames at 30 fps = 0.8 s of video
    reader = FrameReader(source, live=True)
    assert reader.realtime
    start = time.monotonic()
    count = sum(1 for _ in reader)
    source.close()
    assert time.monotonic() - start >= 0.7
    assert count + reader.dropped == 24


def test_puts_at_once_when_there_is_room():
    target = queue.Queue(maxsize=1)
    assert put_unless_stopped(target, "a", lambda: False)
    assert target.get_nowait() == "a"


def test_waits_while_full_until_the_consumer_takes_one():
    target = queue.Queue(maxsize=1)
    target.put("first")
    taker = threading.Timer(0.15, target.get)
    taker.start()
    started = time.monotonic()
    assert put_unless_stopped(target, "second", lambda: False)
    assert time.monotonic() - started >= 0.1
    taker.join()
    assert target.get_nowait() == "second"


def test_a_stop_drops_the_item_instead_of_waiting_forever():
    target = queue.Queue(maxsize=1)
    target.put("first")
    stop = threading.Event()
    threading.Timer(0.15, stop.set).start()
    assert not put_unless_stopped(target, "second", stop.is_set)  # nobody takes "first"
    assert target.qsize() == 1
    assert not put_unless_stopped(queue.Queue(), "x", lambda: True)  # stopped already: not put, even with room
