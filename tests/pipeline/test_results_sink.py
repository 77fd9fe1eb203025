"""--results: the lines' fields (exact pixel counts and bounding boxes) and their targets: a file, a pipe
(standard output) and UDP datagrams on 127.0.0.1."""

from __future__ import annotations

import errno
import json
import os
import socket

import numpy as np
import pytest
from live_receivers import LOOPBACK, make_result

from dronseg_edge.classes import CLASS_NAMES
from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.pipeline.request import FILTERED
from dronseg_edge.pipeline.result import Result
from dronseg_edge.pipeline.results_sink import SCHEMA, ResultsSink, frame_results


def test_a_file_gets_every_line_and_an_existing_one_is_refused(tmp_path):
    sink = ResultsSink(str(tmp_path / "r.jsonl"))
    for index in range(3):
        sink.write(make_result(index))
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2] and sink.record()["lines"] == 3
    with pytest.raises(DronsegError, match="the file exists"):
        ResultsSink(str(tmp_path / "r.jsonl"))


def test_a_line_cut_by_a_full_disk_is_removed(tmp_path, monkeypatch):
    # the file ended in half a line (no newline): JSON Lines readers refused it, where stats.jsonl was cut back
    real_write, calls = os.write, []

    def write(fd, data):
        calls.append(fd)
        if len(calls) == 4:
            return real_write(fd, bytes(data[: len(data) // 2]))  # the disk fills half-way through the line
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    sink = ResultsSink(str(tmp_path / "r.jsonl"))
    monkeypatch.setattr(os, "write", write)
    for index in range(3):
        sink.write(make_result(index))
    with pytest.raises(RuntimeFailure, match="No space left on device"):
        sink.write(make_result(3))
    monkeypatch.undo()
    sink.close()
    text = (tmp_path / "r.jsonl").read_text()
    assert text.endswith("\n") and [json.loads(line)["frame"] for line in text.splitlines()] == [0, 1, 2]


def test_a_file_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    # summary.json's results.target: "r.jsonl" as typed was read as a file in the run folder
    monkeypatch.chdir(tmp_path)
    sink = ResultsSink("r.jsonl")
    sink.close()
    assert sink.record()["target"] == str(tmp_path / "r.jsonl")


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
    assert sink.record()["lines"] + sink.dropped == 5


def test_a_pipe_whose_reader_left_stops_the_results_only(caplog):
    read_end, write_end = os.pipe()
    sink = ResultsSink("-", stdout_fd=write_end)
    sink.write(make_result(0))
    assert json.loads(os.read(read_end, 65536))["frame"] == 0
    os.close(read_end)
    sink.write(make_result(1))  # EPIPE: a warning, no exception
    sink.write(make_result(2))
    os.close(write_end)
    assert (sink.record()["lines"], sink.dropped) == (1, 2)
    assert [r.getMessage() for r in caplog.records] == ["--results -: the program reading the results has stopped "
                                                        "(broken pipe); the run goes on, its files keep every frame"]


@pytest.mark.parametrize("target, message", [("udp://host", "udp://HOST:PORT"), ("tcp://x:1", "udp://HOST:PORT, a file"),
                                             ("udp://nohost.invalid:5", "unknown")])
def test_bad_targets_are_one_line(target, message):
    with pytest.raises(DronsegError, match=message):
        ResultsSink(target)

def result_of(mask, classes=None, confidence=None, timestamp=1.25):
    counts = np.bincount(mask.ravel(), minlength=256)[:len(CLASS_NAMES)]
    return Result(mask=mask, shares=counts / mask.size, class_names=list(CLASS_NAMES),
                  frame=np.zeros((*mask.shape, 3), np.uint8), index=7, timestamp=timestamp, name="000007",
                  classes=classes, confidence=confidence)


def test_a_line_holds_shares_and_each_present_class_with_its_pixels_and_box():
    rng = np.random.default_rng(0)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:20, 5:40] = 3  # a car
    mask[30, 60] = 3  # and a stray pixel of it
    mask[40:50, :] = 10
    mask[rng.integers(0, 50, 5), rng.integers(0, 70, 5)] = 1
    line = json.loads(frame_results(result_of(mask)))
    assert list(line)[0] == "schema" and line["schema"] == SCHEMA == 1
    assert (line["frame"], line["name"], line["timestamp"], line["size"]) == (7, "000007", 1.25, [70, 50])
    assert set(line["shares"]) == set(CLASS_NAMES) and sum(line["shares"].values()) == pytest.approx(1.0)
    assert line["low_confidence"] is None and line["wall_time"] > 1.7e9
    for name, region in line["classes"].items():
        ys, xs = np.nonzero(mask == CLASS_NAMES.index(name))
        assert region["pixels"] == len(xs)
        assert region["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert line["classes"]["car"]["bbox"] == [5, 10, 56, 21]
    assert set(line["classes"]) == {CLASS_NAMES[c] for c in np.unique(mask)}


def test_a_class_filter_and_the_confidence_are_followed():
    mask = np.full((8, 8), FILTERED, np.uint8)
    mask[:4] = 1
    confidence = np.full((8, 8), 255, np.uint8)
    confidence[:2] = 10
    line = json.loads(frame_results(result_of(mask, classes=(1,), confidence=confidence), with_confidence=True))
    assert line["shares"] == {"person": 0.5} and list(line["classes"]) == ["person"]
    assert line["classes"]["person"] == {"pixels": 32, "bbox": [0, 0, 8, 4]}
    assert line["low_confidence"] == 0.25


def test_a_line_is_one_line_of_json():
    data = frame_results(result_of(np.zeros((4, 4), np.uint8), timestamp=None))
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and json.loads(data)["timestamp"] is None


def test_lines_a_sink_left_stuck_at_the_end_holds_count_as_dropped(tmp_path):
    """--results - to a reader that stopped reading, then a stop signal: the line in the stuck write and those queued
    were counted nowhere (summary.json's lines + lines_dropped fell short of the frames), as a4c5073 did for streams."""
    import threading

    from dronseg_edge.pipeline.sink_worker import SinkWorker

    release = threading.Event()
    sink = ResultsSink(str(tmp_path / "r.jsonl"))
    sink._write = lambda result: release.wait()  # blocked, as os.write on a full pipe
    worker = SinkWorker(sink, queue_size=2)
    for index in range(3):  # one in the write, two queued
        worker.put(make_result(index))
    worker.close(patience=0.2)
    record = sink.record()
    release.set()
    assert (record["lines"], record["lines_dropped"]) == (0, 3)
