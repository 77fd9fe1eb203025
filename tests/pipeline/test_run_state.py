"""RunOptions' overlay decision and RunState's summary.json record, without a model or threads."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dronseg_edge.classes import CLASS_NAMES, PALETTE
from dronseg_edge.pictures import bgr_lut
from dronseg_edge.pipeline.overlay import OverlayPlan, overlay
from dronseg_edge.pipeline.run import RunOptions, RunState, RunSummary
from dronseg_edge.pipeline.summary import SCHEMA as SUMMARY_SCHEMA
from dronseg_edge.pipeline.segmenter import Result
from dronseg_edge.pipeline.tiling import TilePlan

LUT = bgr_lut(PALETTE)


def make_result(size=(8, 6), **timings) -> Result:
    width, height = size
    mask = np.full((height, width), 9, np.uint8)
    return Result(mask=mask, shares=np.eye(12)[9], class_names=list(CLASS_NAMES),
                  frame=np.full((height, width, 3), 100, np.uint8), timings=timings)


def test_the_overlay_is_made_for_the_video_or_the_window_only():
    assert RunOptions(alpha=0.3).overlay_plan(LUT).alpha == 0.3
    assert RunOptions(save_video=False, show=True).overlay_plan(LUT) is not None
    assert RunOptions(save_video=False, save_color=True).overlay_plan(LUT) is None


def test_overlay_plan_blends_at_its_opacity():
    plan = OverlayPlan(0.4, LUT)
    result = make_result()
    assert np.array_equal(plan.image(result), overlay(result.frame, result.mask, LUT, 0.4))


def test_options_cannot_be_changed_past_their_check():
    options = RunOptions()
    with pytest.raises(AttributeError):
        options.alpha = 2.0


class FakeSink:
    def __init__(self, name, frames, write_ms, outputs, lossy=False):
        self.name, self.frames, self.write_ms, self._outputs, self.lossy = name, frames, write_ms, outputs, lossy

    def outputs(self):
        return self._outputs


def test_summary_holds_per_frame_stage_times_and_the_slowest_writer(tmp_path):
    state = RunState(tmp_path, RunOptions(stride=2), live=False)
    for size, inference in (((8, 6), 10.0), ((8, 6), 20.0)):
        state.add(make_result(size, preprocess=1.0, inference=inference, postprocess=3.0, decode=99.0))
    state.interrupted = True
    state.wall_s = 0.5
    segmenter = SimpleNamespace(
        backend=SimpleNamespace(path=Path("m.onnx"), name="onnxruntime", provider="CPUExecutionProvider"),
        device=torch.device("cpu"), info=SimpleNamespace(precision="fp32", input_size=(96, 64)), batch=1,
        tiling=TilePlan("auto", (96, 64)))
    source = SimpleNamespace(name="clip.mp4", kind="video", fps=25.0, corrupt=1, reconnects=0, oversized=2,
                             size_changes=1, rate_changes=0, hw_decode=None, end="ended", max_pixels=1 << 26)
    reader = SimpleNamespace(decode_ms=12.0, decoded=3, dropped=0)
    sinks = [FakeSink("masks", 2, 8.0, {"masks": str(tmp_path / "masks")}),
             FakeSink("stats", 2, 2.0, {"stats": str(tmp_path / "stats.jsonl")}),
             FakeSink("stream", 2, 90.0, {}, lossy=True)]  # a live output drops frames: not the run's pace
    data = state.summary(segmenter, source, reader, sinks).to_dict()
    assert list(data)[0] == "schema" and data["schema"] == SUMMARY_SCHEMA == 1
    assert data["source_end"] is None  # interrupted: the run stopped first, whatever end the reader had met
    assert data["stage_ms"] == {"decode": 4.0, "preprocess": 1.0, "inference": 15.0, "postprocess": 3.0, "write": 4.0}
    assert data["write_ms"] == {"masks": 4.0, "stats": 1.0, "stream": 45.0}
    assert (data["frames"], data["frame_size"], data["wall_s"], data["fps"], data["stride"]) == (2, "8x6", 0.5, 4.0, 2)
    assert (data["interrupted"], data["stopped_by_key"], data["error"], data["corrupt_frames"]) == (True, False, None, 1)
    assert (data["oversized_images"], data["size_changes"], data["max_pixels"]) == (2, 1, 1 << 26)
    assert data["outputs"] == {"masks": "masks", "stats": "stats.jsonl"}
    assert data["video_codec"] is None and data["video_frames"] is None
    assert (data["tile"]["mode"], data["tile"]["window"], data["tiled_frames"]) == ("auto", [96, 64], 0)
    assert RunSummary(tmp_path, data).speed_line().startswith("Speed: decode 4.0 ms, preprocess 1.0 ms, inference 15.0 ms")
    state.add(make_result((4, 4)))
    assert state.summary(segmenter, source, reader, sinks).frame_size == "mixed"


def test_a_run_that_ends_in_a_bug_says_so_in_its_stop_reason():
    """summary.json never says ``stopped: end, error: null`` for a run that exits non-zero."""
    state = RunState(Path("."), RunOptions(), live=False)
    assert state.stop_reason() == "end"
    state.bug = "error: OpenCV(5.1.0) ... (a bug in dronseg-edge: please report it)"
    assert state.stop_reason() == "error"


@pytest.mark.parametrize("stop", ["interrupted", "stopped_by_key"])
def test_an_error_met_while_a_stopped_run_finishes_is_its_stop_reason(stop):
    """Ctrl-C, SIGTERM or q, then the overlay's index could not be written (a card full or pulled out): the run exits 5
    with that error, and summary.json said ``stopped: interrupted`` (130's reason) or ``key`` (0's)."""
    from dronseg_edge.errors import RuntimeFailure

    state = RunState(Path("."), RunOptions(), live=False)
    setattr(state, stop, True)
    state.error = RuntimeFailure("cannot write overlay.mp4: No space left on device", stopped="disk_full")
    assert state.stop_reason() == "disk_full"
    state.error, state.bug = None, "KeyError: 'x' (a bug in dronseg-edge: please report it)"  # exit 1, its traceback
    assert state.stop_reason() == "error"


def test_max_duration_counts_seconds_from_the_first_frame():
    # An MPEG-TS recorded from mid-GOP: its first picture comes 1.28 s after the stream's start, and
    # --max-duration-s 1 stopped at that first frame (0 frames, where the docs promise 1 s of footage)
    state = RunState(Path("."), RunOptions(max_duration=1.0), live=False)
    results = [make_result() for _ in range(3)]
    for result, time in zip(results, (1.28, 1.32, 2.28)):
        result.timestamp = time
    seconds = [state.source_seconds(result) for result in results]
    assert seconds == pytest.approx([0.0, 0.04, 1.0])
    assert seconds[2] >= 1.0  # the frame at the limit is not before it: 2.28 - 1.28 is 0.9999999999999998
    images = RunState(Path("."), RunOptions(max_duration=1.0), live=False)
    images._clock_start -= 5.0  # an image has no timestamp: the run's wall clock counts, here 5 s in
    assert 5.0 <= images.source_seconds(make_result()) < 6.0


def test_summary_names_the_files_it_read_by_absolute_path(tmp_path, monkeypatch):
    """summary.json names its own files relative to the run folder: a model or source typed relative to the
    working folder (``infer best.onnx clip.mp4``) was recorded as typed, so a reader resolved it in the run folder."""
    monkeypatch.chdir(tmp_path)
    segmenter = SimpleNamespace(backend=SimpleNamespace(path=Path("m.onnx"), name="onnxruntime", provider="CPU"),
                                device=torch.device("cpu"), info=SimpleNamespace(precision="fp32", input_size=(96, 64)),
                                batch=1, tiling=TilePlan("off", (96, 64)))
    reader = SimpleNamespace(decode_ms=0.0, decoded=0, dropped=0)
    state = RunState(tmp_path / "run", RunOptions(), live=False)
    for name, kind, recorded in (("clip.mp4", "video", str(tmp_path / "clip.mp4")), ("imgs", "images", str(tmp_path / "imgs")),
                                 ("rtsp://cam/live", "stream", "rtsp://cam/live"), ("0", "camera", "0")):
        source = SimpleNamespace(name=name, kind=kind, fps=None, corrupt=0, reconnects=0, oversized=0, size_changes=0,
                                 rate_changes=0, hw_decode=None, end=None, max_pixels=1000)
        data = state.summary(segmenter, source, reader, []).to_dict()
        assert (data["model"], data["source"]) == (str(tmp_path / "m.onnx"), recorded)
        # the limit the source applied: run_inference(seg, open_source(folder), RunOptions(max_pixels=1000)) read
        # images of 6000 pixels under the source's own 67 MP limit, and summary.json said 1000
        assert data["max_pixels"] == 1000 != RunOptions().max_pixels
