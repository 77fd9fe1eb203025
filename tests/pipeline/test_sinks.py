import json
import logging
import os
import time

import cv2
import numpy as np
import pytest
from pipeline_media import scene

from dronseg_edge.classes import CLASS_NAMES, PALETTE
from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.pictures import bgr_lut, colorize
from dronseg_edge.pipeline.overlay import OverlayPlan, overlay
from dronseg_edge.pipeline.segmenter import Result
from dronseg_edge.pipeline.request import FILTERED
from dronseg_edge.pipeline.sink_worker import SinkWorker
from dronseg_edge.pipeline.sinks import (ColorMaskSink, ConfidenceSink, ContactSheetSink, MaskSink, OverlayImageSink, Sink,
                                         StatsSink)

LUT = bgr_lut(PALETTE)


def make_result(index: int, size=(64, 48)) -> Result:
    frame = scene(index, size)
    mask = np.zeros(frame.shape[:2], np.uint8)
    mask[:, : size[0] // 2] = 9
    mask[size[1] // 2:, :] = 10 + index % 2
    counts = np.bincount(mask.ravel(), minlength=12)
    return Result(mask=mask, shares=counts / counts.sum(), class_names=list(CLASS_NAMES), frame=frame,
                  index=index, timestamp=index / 25, name=f"{index:06d}", source="clip.mp4")


def test_mask_png_round_trips_class_indices(tmp_path):
    sink = MaskSink(tmp_path / "masks")
    result = make_result(3, size=(50, 30))
    sink.write(result)
    back = cv2.imread(str(tmp_path / "masks" / "000003.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and back.shape == (30, 50)
    assert np.array_equal(back, result.mask)
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["000003.png"]  # no temporary left


def test_colour_masks_and_overlay_images(tmp_path):
    result = make_result(2)
    color = ColorMaskSink(tmp_path / "color", LUT)
    color.write(result)
    assert np.array_equal(cv2.imread(str(tmp_path / "color" / "000002.png")), colorize(result.mask, LUT))
    images = OverlayImageSink(tmp_path / "overlay", OverlayPlan(0.4, LUT))
    images.write(result)
    written = cv2.imread(str(tmp_path / "overlay" / "000002.jpg"))
    assert np.abs(written.astype(int) - overlay(result.frame, result.mask, LUT, 0.4)).mean() < 4


def test_stats_lines_hold_index_timestamp_and_shares(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an image typed relative to the working folder is named by its absolute path
    sink = StatsSink(tmp_path / "stats.jsonl", with_file=True)
    for i in range(3):
        sink.write(make_result(i))
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2]
    assert lines[1]["timestamp"] == pytest.approx(0.04) and lines[1]["file"] == str(tmp_path / "clip.mp4")
    assert set(lines[0]["shares"]) == set(CLASS_NAMES)
    assert (lines[0]["shares"]["vegetation"], lines[0]["shares"]["road"]) == (0.25, 0.5)  # top-left, bottom half
    assert sum(lines[2]["shares"].values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DronsegError, match="cannot create"):
        StatsSink(tmp_path / "stats.jsonl")  # never appends to an earlier run's file


def test_confidence_pngs_and_the_low_confidence_share_in_stats(tmp_path):
    results = [make_result(i) for i in range(2)]
    for result in results:
        result.confidence = np.full(result.mask.shape, 200, np.uint8)
        result.confidence[:12] = 127  # a quarter of the 48 rows: just below 0.5 (128 / 255)
        result.confidence[12:13] = 128  # exactly 0.5: not low
    conf = ConfidenceSink(tmp_path / "conf")
    stats = StatsSink(tmp_path / "stats.jsonl", with_confidence=True)
    plain = StatsSink(tmp_path / "plain.jsonl")
    for result in results:
        for sink in (conf, stats, plain):
            sink.write(result)
    stats.close()
    plain.close()
    back = cv2.imread(str(tmp_path / "conf" / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and np.array_equal(back, results[1].confidence)
    assert conf.outputs() == {"conf": str(tmp_path / "conf")}
    lines = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [line["low_confidence"] for line in lines] == [0.25, 0.25]
    assert all("low_confidence" not in json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines())
    assert make_result(2).low_confidence_share() is None  # Result's API: a frame segmented without confidence


def test_a_class_filter_limits_stats_and_leaves_other_pixels_uncoloured(tmp_path):
    result = make_result(0)  # left half vegetation (9), bottom half road (10)
    result.mask[result.mask == 10] = FILTERED
    result.shares[10] = 0.0
    result.classes = (9,)
    stats = StatsSink(tmp_path / "stats.jsonl")
    stats.write(result)
    stats.close()
    assert json.loads((tmp_path / "stats.jsonl").read_text())["shares"] == {"vegetation": 0.25}
    image = OverlayPlan(0.6, LUT).image(result)
    hidden = result.mask == FILTERED
    assert np.array_equal(image[hidden], result.frame[hidden])
    assert np.array_equal(image[~hidden], overlay(result.frame, result.mask, LUT, 0.6)[~hidden])


class FailingSink(Sink):
    name = "failing"

    def __init__(self, error, after=1):
        super().__init__()
        self.error, self.after, self.written = error, after, []
        self.closed = False

    def _write(self, result):
        if len(self.written) >= self.after:
            raise self.error
        self.written.append(result.index)

    def close(self):
        self.closed = True

    def outputs(self):
        return {}


def test_worker_writes_in_order_and_reports_io_errors_as_one_line():
    sink = FailingSink(OSError(28, "No space left on device"), after=3)
    worker = SinkWorker(sink, queue_size=2)
    with pytest.raises(DronsegError, match="No space left on device"):
        for i in range(50):
            worker.put(make_result(i))
    with pytest.raises(DronsegError):
        worker.close()
    assert sink.written == [0, 1, 2] and sink.closed


def test_worker_turns_a_raw_oserror_into_one_line_naming_the_sink_file_and_free_space(tmp_path):
    sink = FailingSink(PermissionError(13, "Permission denied"), after=1)
    sink.target = tmp_path / "masks"
    worker = SinkWorker(sink)
    worker.put(make_result(0))
    worker.put(make_result(1))
    with pytest.raises(RuntimeFailure, match=rf"cannot write {tmp_path}/masks: Permission denied \(.* free\): make it "
                                            "writable or choose another output folder") as error:
        worker.close()
    assert (error.value.exit_code, error.value.stopped) == (5, "unwritable")
    with pytest.raises(RuntimeFailure):
        worker.close()  # idempotent: closed once, the error stays


def test_a_close_error_after_a_write_error_is_one_line_with_both(tmp_path):
    """The sink's close fails too (a video whose index cannot be written after a full disk): both causes in one
    line, the first one's stop reason kept; a close error alone is raised as it is."""
    def close():
        raise OSError(5, "Input/output error")

    sink = FailingSink(OSError(28, "No space left on device"), after=1)
    sink.target, sink.close = tmp_path / "masks", close
    worker = SinkWorker(sink)
    worker.put(make_result(0))
    worker.put(make_result(1))
    with pytest.raises(RuntimeFailure, match="No space left on device.*; then .*Input/output error") as error:
        worker.close()
    assert error.value.stopped == "disk_full"
    sink = FailingSink(None, after=5)
    sink.target, sink.close = tmp_path / "masks", close
    with pytest.raises(RuntimeFailure, match="Input/output error") as error:
        SinkWorker(sink).close()
    assert "; then" not in str(error.value)


def test_worker_close_can_drop_what_is_queued_after_a_full_disk():
    sink = FailingSink(OSError(28, "No space left on device"), after=10)
    worker = SinkWorker(sink, queue_size=50)
    sink.write = lambda result: (time.sleep(0.05), sink.written.append(result.index))  # a slow disk
    for i in range(30):
        worker.put(make_result(i))
    worker.close(discard=True)
    assert len(sink.written) < 30 and sink.closed


def test_a_sink_stuck_in_a_write_cannot_hold_a_stop_signal_back(caplog):
    # --results - to a reader that stopped reading: its write never returns and its queue fills. A stop
    # signal (stop()) ends the wait for room, and close(patience) leaves the stuck sink behind.
    import threading

    release = threading.Event()
    sink = FailingSink(None, after=100)
    sink.write = lambda result: release.wait()  # blocked, as os.write on a full pipe
    worker = SinkWorker(sink, queue_size=2)
    stopped = threading.Event()
    threading.Timer(0.3, stopped.set).start()
    for i in range(5):  # one in the write, two queued, then a wait for room that the stop signal ends
        worker.put(make_result(i), stop=stopped.is_set)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        worker.close(patience=0.2)
    assert time.monotonic() - start < 2 and "a write has not returned for 0.2 s" in caplog.text
    release.set()


def test_a_stop_signal_leaves_out_a_frame_only_where_there_is_no_room():
    # SIGTERM while run.py hands a frame to its sinks: the video had taken it, and stats.jsonl, its queue
    # empty, left it out (summary 394 frames, video 394, stats 393)
    sink = FailingSink(None, after=100)
    worker = SinkWorker(sink, queue_size=2)
    worker.put(make_result(7), stop=lambda: True)
    worker.close()
    assert sink.written == [7]


def test_tall_strips_keep_the_contact_sheet_and_overlays_within_what_jpeg_holds(tmp_path, caplog):
    # a 4x1200 strip made a 240x72000 thumbnail: the sheet could not be encoded (exit 2) and summary.json
    # still named it; a 66000x20 image's overlay JPEG could not be encoded either
    from dronseg_edge.pictures import TEXT_HEIGHT

    plan = OverlayPlan(0.5, LUT)
    sheet = ContactSheetSink(tmp_path / "contact_sheet.jpg", plan)
    for index, size in enumerate(((64, 48), (4, 1200))):
        sheet.write(make_result(index, size))
    sheet.close()
    picture = cv2.imread(str(tmp_path / "contact_sheet.jpg"))
    assert picture.shape[:2] == (ContactSheetSink.THUMB_HEIGHT + TEXT_HEIGHT, 2 * ContactSheetSink.THUMB_WIDTH)
    assert sheet.outputs() == {"contact_sheet": str(tmp_path / "contact_sheet.jpg")}
    overlays = OverlayImageSink(tmp_path / "overlay", plan)
    overlays.write(make_result(0, (66000, 20)))
    overlays.close()
    assert [p.name for p in (tmp_path / "overlay").iterdir()] == ["000000.png"]
    assert cv2.imread(str(tmp_path / "overlay" / "000000.png")).shape == (20, 66000, 3)
    assert "000000 is 66000x20, longer than JPEG's 65500 px a side: its overlay is a PNG" in caplog.text


def test_a_mask_png_cannot_hold_is_one_line_and_no_file(tmp_path):
    # a 1000001x2 BMP's mask: libpng refuses a side over 1,000,000 px and cv2.imencode says only False
    result = make_result(0, (8, 2))
    result.mask = np.zeros((2, 1_000_001), np.uint8)
    with pytest.raises(DronsegError, match=r"OpenCV cannot encode .*000000.png \(uint8 \(2, 1000001\)\)"):
        MaskSink(tmp_path / "masks").write(result)
    assert list((tmp_path / "masks").iterdir()) == []


def test_an_image_name_of_255_bytes_is_written(tmp_path):
    # its temporary name, 5 bytes longer, was ENAMETOOLONG: exit 5 ("check the disk") for a legal name
    sink = MaskSink(tmp_path / "masks")
    result = make_result(0)
    result.name = "日本" * 41 + "abcde"  # 251 bytes: 255 with ".png", the most a name may hold
    sink.write(result)
    sink.close()
    assert [len(p.name.encode()) for p in (tmp_path / "masks").iterdir()] == [255]


def test_an_image_name_that_is_not_utf8_is_written(tmp_path):
    # Latin-1 bytes (a camera card's names, read from a folder): its temporary name was a UnicodeEncodeError
    # traceback at the first image, and no summary.json
    sink = MaskSink(tmp_path / "masks")
    result = make_result(0)
    result.name = os.fsdecode(b"ph\xf6to")
    sink.write(result)
    sink.close()
    assert os.listdir(os.fsencode(tmp_path / "masks")) == [b"ph\xf6to.png"]


def test_stats_are_never_appended_to_another_runs_file_and_a_missing_folder_is_one_line(tmp_path):
    (tmp_path / "stats.jsonl").write_text("old\n")
    with pytest.raises(DronsegError, match="it exists and a run never appends"):
        StatsSink(tmp_path / "stats.jsonl")
    with pytest.raises(RuntimeFailure, match="cannot write .*stats.jsonl: No such file or directory"):
        StatsSink(tmp_path / "gone" / "stats.jsonl")


def test_worker_reraises_bugs_unchanged():
    worker = SinkWorker(FailingSink(ValueError("a bug"), after=0))
    worker.put(make_result(0))
    with pytest.raises(ValueError, match="a bug"):
        worker.close()


def test_a_lossy_sink_drops_its_oldest_frame_instead_of_waiting():
    """Live outputs (Sink.lossy): put() never waits for a stuck sink; the newest frame goes next."""
    import threading

    release, written = threading.Event(), []

    class Stuck(Sink):
        name, lossy, heavy = "live", True, False

        def _write(self, result):
            release.wait(30)
            written.append(result.index)

        def outputs(self):
            return {}

    sink = Stuck()
    worker = SinkWorker(sink)
    for index in range(20):
        worker.put(make_result(index))  # a waiting put would hang here until the 30 s wait ends
    release.set()
    worker.close()
    assert written[-1] == 19 and len(written) <= SinkWorker.LIVE_QUEUE + 1
    assert sink.queue_dropped + len(written) == 20 and sink.dropped == 0


def test_only_video_and_images_stop_at_the_disk_floor(tmp_path):
    assert MaskSink(tmp_path / "m").heavy and not StatsSink(tmp_path / "s.jsonl").heavy


def test_the_contact_sheet_counts_the_frames_it_holds(tmp_path):
    # frames_written said 60 for a 60-frame video whose sheet holds the first 48
    sheet = ContactSheetSink(tmp_path / "contact_sheet.jpg", OverlayPlan(0.5, LUT))
    for index in range(ContactSheetSink.LIMIT + 3):
        sheet.write(make_result(index))
    sheet.close()
    assert sheet.frames == len(sheet.thumbs) == ContactSheetSink.LIMIT
