import queue
import threading
import time

from dronseg_edge.pipeline.queues import put_unless_stopped


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
