"""--results targets: a file, a pipe (standard output) and UDP datagrams on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket

import pytest
from live_receivers import LOOPBACK, make_result

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.results_sink import ResultsSink


def test_a_file_gets_every_line_and_an_existing_one_is_refused(tmp_path):
    sink = ResultsSink(str(tmp_path / "r.jsonl"))
    for index in range(3):
        sink.write(make_result(index))
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2] and sink.record()["lines"] == 3
    with pytest.raises(DronsegError, match="the file exists"):
        ResultsSink(str(tmp_path / "r.jsonl"))


def test_udp_sends_a_datagram_per_frame():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind((LOOPBACK, 0))
        receiver.settimeout(5)
        sink = ResultsSink(f"udp://{LOOPBACK}:{receiver.getsockname()[1]}")
        for index in range(4):
            sink.write(make_result(index))
        got = [json.loads(receiver.recv(65536)) for _ in range(4)]
        sink.close()
    assert [line["frame"] for line in got] == [0, 1, 2, 3]
    assert got[0]["classes"]["sky"]["bbox"] == [0, 0, 160, 32]
    assert sink.record() == {"target": f"udp://{LOOPBACK}:{sink.address[4][1]}", "kind": "udp", "schema": 1,
                             "lines": 4, "lines_dropped": 0}


def test_udp_to_no_one_drops_nothing_silently_and_never_fails():
    sink = ResultsSink(f"udp://{LOOPBACK}:9")  # discard: nobody listens
    for index in range(5):
        sink.write(make_result(index))
    sink.close()
    assert sink.lines + sink.dropped == 5


def test_a_pipe_whose_reader_left_stops_the_results_only():
    read_end, write_end = os.pipe()
    sink = ResultsSink("-", stdout_fd=write_end)
    sink.write(make_result(0))
    assert json.loads(os.read(read_end, 65536))["frame"] == 0
    os.close(read_end)
    sink.write(make_result(1))  # EPIPE: a warning, no exception
    sink.write(make_result(2))
    os.close(write_end)
    assert (sink.lines, sink.dropped) == (1, 2)


@pytest.mark.parametrize("target, message", [("udp://host", "udp://HOST:PORT"), ("tcp://x:1", "udp://HOST:PORT, a file"),
                                             ("udp://nohost.invalid:5", "unknown")])
def test_bad_targets_are_one_line(target, message):
    with pytest.raises(DronsegError, match=message):
        ResultsSink(target)
