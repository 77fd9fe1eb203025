"""The overlay video sink: the source's timeline, segments, a file per frame size, final names."""

import errno
import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
from pipeline_media import decode_without_errors, mp4_top_level_boxes, read_video
from test_sinks import LUT, make_result

from dronseg_edge.errors import RuntimeFailure
from dronseg_edge.pipeline import video_sink, video_writer
from dronseg_edge.pipeline.overlay import OverlayPlan, overlay
from dronseg_edge.pipeline.video_sink import VideoSink

needs_av = pytest.mark.skipif(video_writer._import_av() is None,
                              reason="PyAV is not installed (pip install 'dronseg-edge[video]')")


def test_video_sink_writes_a_playable_video_with_the_input_fps_and_size(tmp_path):
    sink = VideoSink(tmp_path / "overlay.mp4", fps=25.0, overlay=OverlayPlan(0.5, LUT))
    results = [make_result(i) for i in range(60)]
    for result in results[:10]:
        sink.write(result)
    assert not (tmp_path / "overlay.mp4").exists()  # nothing playable on disk yet: under its temporary name
    for result in results[10:]:
        sink.write(result)
    # A fragmented MP4 (PyAV) takes its final name with its first fragment (a second); mp4v once finished.
    assert (tmp_path / "overlay.mp4").exists() == sink._writer.fragmented
    sink.close()
    sink.close()  # idempotent
    frames, fps, size = read_video(tmp_path / "overlay.mp4")
    assert (len(frames), fps, size) == (60, 25.0, (64, 48))
    expected = overlay(results[5].frame, results[5].mask, LUT, 0.5)
    assert np.abs(frames[5].astype(int) - expected).mean() < 8  # lossy codec, same picture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4"]
    assert sink.outputs() == {"video": str(tmp_path / "overlay.mp4")}


def test_video_sink_blends_at_the_plans_opacity(tmp_path):
    sink = VideoSink(tmp_path / "v.mp4", fps=10.0, overlay=OverlayPlan(0.0, LUT))  # alpha 0: the frame itself
    first = make_result(0)
    first.frame[:] = 200
    sink.write(first)
    sink.close()
    frames, _, _ = read_video(tmp_path / "v.mp4")
    assert len(frames) == 1 and abs(frames[0].astype(int).mean() - 200) < 3


def test_a_frame_of_another_size_starts_a_new_file(tmp_path, caplog):
    """A stream that changes resolution: each file holds one size, nothing is squashed or resized."""
    sink = VideoSink(tmp_path / "v.mp4", fps=10.0, overlay=OverlayPlan(0.5, LUT))
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        for index in range(3):
            sink.write(make_result(index))
        for index in (4, 5):  # frame 3 was skipped: the gap is not filled with the old size's overlay
            sink.write(make_result(index, size=(96, 72)))
    sink.close()
    first, _, first_size = read_video(tmp_path / "v.mp4")
    second, _, second_size = read_video(tmp_path / "v_00001.mp4")
    assert (len(first), first_size, len(second), second_size) == (3, (64, 48), 2, (96, 72))
    assert [(s["file"], s["frames"], s["size"]) for s in sink.segments] == [("v.mp4", 3, "64x48"),
                                                                            ("v_00001.mp4", 2, "96x72")]
    assert [s["start_s"] for s in sink.segments] == [0.0, 0.4]  # where frame 4 is at 10 fps: not 0.3 (3 written)
    assert sink.outputs() == {"video": [str(tmp_path / "v.mp4"), str(tmp_path / "v_00001.mp4")]}
    assert "frame 4 is 96x72 at 10 fps, the video 64x48 at 10 fps" in caplog.text and "v_00001.mp4" in caplog.text


def test_video_sink_fills_skipped_frames_to_keep_the_timeline(tmp_path):
    sink = VideoSink(tmp_path / "v.mp4", fps=10.0, overlay=OverlayPlan(1.0, LUT))
    for index in (0, 3, 4):  # 1 and 2 were skipped (stride, live drops or damage)
        sink.write(make_result(index))
    sink.close()
    frames, _, _ = read_video(tmp_path / "v.mp4")
    assert len(frames) == sink.video_frames == 5 and sink.frames == 3
    assert np.abs(frames[2].astype(int) - frames[0]).mean() < 2  # a repeat of frame 0's overlay
    assert np.abs(frames[3].astype(int) - frames[0]).mean() > 5  # frame 3: its own overlay (another class below)


def test_video_segments_are_each_a_finished_playable_file(tmp_path):
    sink = VideoSink(tmp_path / "overlay.mp4", fps=25.0, overlay=OverlayPlan(0.5, LUT), segment_s=0.2)  # 5 frames each
    for index in (0, 1, 2, 3, 4, 5, 9, 10):  # 6..8 skipped: filled, and the fill crosses a segment's end
        sink.write(make_result(index))
    assert [s["file"] for s in sink.segments] == ["overlay_00000.mp4", "overlay_00001.mp4"]  # final while running
    sink.close()
    names = ["overlay_00000.mp4", "overlay_00001.mp4", "overlay_00002.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary file left
    assert [len(read_video(tmp_path / name)[0]) for name in names] == [5, 5, 1]
    assert sink.segments == [{"file": "overlay_00000.mp4", "frames": 5, "start_s": 0.0, "size": "64x48"},
                             {"file": "overlay_00001.mp4", "frames": 5, "start_s": 0.2, "size": "64x48"},
                             {"file": "overlay_00002.mp4", "frames": 1, "start_s": 0.4, "size": "64x48"}]
    assert sink.outputs() == {"video": [str(tmp_path / name) for name in names]} and sink.video_frames == 11


def test_a_segments_size_is_its_files_even_size(tmp_path):
    # 65x49 frames make 64x48 files (yuv420p): video_segments said 65x49
    sink = VideoSink(tmp_path / "overlay.mp4", fps=25.0, overlay=OverlayPlan(0.5, LUT), segment_s=0.2)
    for index in range(5):
        sink.write(make_result(index, (65, 49)))
    sink.close()
    assert read_video(tmp_path / "overlay_00000.mp4")[2] == (64, 48) and sink.segments[0]["size"] == "64x48"


def test_video_sink_without_frames_leaves_nothing(tmp_path, caplog):
    sink = VideoSink(tmp_path / "v.mp4", fps=None, overlay=OverlayPlan(0.5, LUT))
    sink.close()
    assert list(tmp_path.iterdir()) == [] and sink.outputs() == {}
    assert sink.fps == 30.0 and "the source reports no frame rate; the overlay video is written at 30 fps" in caplog.text


def test_a_finished_file_that_cannot_take_its_name_is_one_line(tmp_path, monkeypatch):
    sink = VideoSink(tmp_path / "v.mp4", fps=25.0, overlay=OverlayPlan(0.5, LUT), codec="mp4v")  # renamed at close
    sink.write(make_result(0))

    def refused(source, target):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(video_sink.os, "replace", refused)
    with pytest.raises(RuntimeFailure, match=r"cannot write .*v.mp4: Input/output error"):
        sink.close()  # not a segment listed under a name no file has


def test_an_unfinished_mp4v_file_is_removed_as_is_one_whose_first_frame_failed(tmp_path, monkeypatch):
    sink = VideoSink(tmp_path / "v.mp4", fps=25.0, overlay=OverlayPlan(0.5, LUT), codec="mp4v")
    sink.write(make_result(0))

    def quota_reached():
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    sink._writer.close = quota_reached
    with pytest.raises(RuntimeFailure, match=r"\(video v.mp4 could not be finished and is lost\)"):
        sink.close()  # without its index an mp4v file does not play at all
    assert list(tmp_path.iterdir()) == [] and sink.outputs() == {}
    monkeypatch.setattr(video_writer.VideoWriter, "write", lambda self, frame: quota_reached())
    sink = VideoSink(tmp_path / "w.mp4", fps=25.0, overlay=OverlayPlan(0.5, LUT), codec="mp4v")
    with pytest.raises(OSError):
        sink.write(make_result(0))  # the run stops on it; its outputs are closed
    sink.close()
    assert list(tmp_path.iterdir()) == [] and sink.outputs() == {}  # an empty file is removed, not listed


@needs_av
def test_a_fragmented_file_whose_end_cannot_be_written_is_kept(tmp_path):
    """Under a disk quota the encoder's last write fails (EDQUOT): the fragments on disk still play."""
    sink = VideoSink(tmp_path / "v.mp4", fps=25.0, overlay=OverlayPlan(0.5, LUT))
    for index in range(60):
        sink.write(make_result(index))
    writer = sink._writer
    real_close = writer.close

    def quota_reached():
        real_close()
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    writer.close = quota_reached
    with pytest.raises(RuntimeFailure) as error:
        sink.close()
    assert "(video v.mp4 could not be finished: it plays up to its last complete second)" in str(error.value)
    assert error.value.stopped == "disk_full"
    assert len(decode_without_errors(tmp_path / "v.mp4")) >= 25 and sink.outputs() == {"video": str(tmp_path / "v.mp4")}


@needs_av
def test_fragments_are_flushed_to_the_disk_at_most_once_a_second(tmp_path, monkeypatch):
    """So a power cut, not only a kill, keeps what was written up to about a second before; and a file
    encoded faster than real time (a recording being processed) does not wait on the disk per fragment."""
    synced, clock = [], [0.0]
    real_fsync = video_sink.os.fsync
    monkeypatch.setattr(video_sink.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                            real_fsync(fd)))
    monkeypatch.setattr(video_sink, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # this module's clock only
    sink = VideoSink(tmp_path / "v.mp4", fps=25.0, overlay=OverlayPlan(0.5, LUT))
    for index in range(150):  # 6 s of video at 25 fps, a fragment a second, written in 1.5 s of wall time
        clock[0] = index * 0.01
        sink.write(make_result(index))
    folder, video = str(tmp_path), str(tmp_path / "v.mp4")
    assert mp4_top_level_boxes(tmp_path / "v.mp4").count("moof") >= 4
    assert synced[:2] == [folder, video]  # the final name given with the first fragment, then its data
    assert synced.count(video) == 2  # at the first fragment, then a second later: not at each of the others
    sink.close()


def test_a_variable_rate_file_keeps_its_times_in_the_video(tmp_path):
    # A phone's or drone's variable-rate file: its frames' own times place them (ffmpeg's -fps_mode cfr),
    # not their count: a late frame's place is filled, an early one's taken place leaves it out.
    import dataclasses

    plan = OverlayPlan(0.5, LUT)
    sink = VideoSink(tmp_path / "v.mp4", fps=10.0, overlay=plan, codec="mp4v", by_time=True)
    times = (0.0, 0.3, 0.35, 0.4, 0.7)  # places 0, 3, 4 (3.5 rounds to even), 4 (taken), 7
    results = [dataclasses.replace(make_result(index), timestamp=t) for index, t in enumerate(times)]
    for result in results:
        sink.write(result)
    sink.close()
    frames, _, _ = read_video(tmp_path / "v.mp4")
    overlays = [plan.image(result).astype(int) for result in results]
    shown = [int(np.argmin([np.abs(frame.astype(int) - o).mean() for o in overlays])) for frame in frames]
    assert shown == [0, 0, 0, 1, 2, 3, 3, 4] and sink.video_frames == 8


def test_a_gap_in_a_variable_rate_files_times_is_filled_for_at_most_max_fill_s(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setattr(video_sink, "MAX_FILL_S", 0.5)  # 5 frames at 10 fps
    sink = VideoSink(tmp_path / "v.mp4", fps=10.0, overlay=OverlayPlan(0.5, LUT), codec="mp4v", by_time=True)
    for index, time in enumerate((0.0, 20.0, 20.1)):  # 20 s without a frame
        sink.write(dataclasses.replace(make_result(index), timestamp=time))
    sink.close()
    assert sink.video_frames == len(read_video(tmp_path / "v.mp4")[0]) == 1 + 5 + 1 + 1  # the times go on from 20 s
