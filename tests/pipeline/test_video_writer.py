"""The overlay video's encoder: H.264 yuv420p fragmented MP4 through PyAV, the mp4v fallback, --codec."""

import errno
import logging
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pipeline_media import decode_without_errors, fragment_frames, mp4_top_level_boxes, probe_with_pyav, read_video
from test_sinks import LUT, make_result
from testkit import fake_jetson  # noqa: F401 (a fixture)

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline import disk_space, video_writer
from dronseg_edge.pipeline.overlay import OverlayPlan, overlay
from dronseg_edge.pipeline.run import RunOptions
from dronseg_edge.pipeline.video_sink import VideoSink
from dronseg_edge.pipeline.video_writer import encoder_opens, encoders_for, open_video_writer

needs_av = pytest.mark.skipif(video_writer._import_av() is None,
                              reason="PyAV is not installed (pip install 'dronseg-edge[video]')")


@pytest.fixture
def without_av(monkeypatch):
    """As if PyAV were not installed: `import av` raises ImportError; probes are forgotten before and after."""
    encoder_opens.cache_clear()
    monkeypatch.setitem(sys.modules, "av", None)
    yield
    encoder_opens.cache_clear()


def write_sink(path, codec="auto", count=12, size=(64, 48), fps=25.0):
    sink = VideoSink(path, fps=fps, overlay=OverlayPlan(0.5, LUT), codec=codec)
    results = [make_result(i, size=size) for i in range(count)]
    for result in results:
        sink.write(result)
    sink.close()
    return sink, results


@needs_av
def test_auto_writes_h264_yuv420p_with_the_index_first(tmp_path):
    sink, results = write_sink(tmp_path / "overlay.mp4")
    assert sink.codec in ("h264_nvenc", "libx264")
    video = probe_with_pyav(tmp_path / "overlay.mp4")
    assert (video["codec"], video["pix_fmt"], video["size"], video["rate"]) == ("h264", "yuv420p", (64, 48), 25)
    assert len(video["frames"]) == 12 == sink.video_frames  # B-frames and lookahead flushed at close
    expected = overlay(results[5].frame, results[5].mask, LUT, 0.5)
    assert np.abs(video["frames"][5].astype(int) - expected).mean() < 8
    boxes = mp4_top_level_boxes(tmp_path / "overlay.mp4")
    assert boxes.index("moov") < boxes.index("moof") < boxes.index("mdat"), boxes  # the index first: plays while downloading
    assert boxes[-1] == "mfra"  # finished: the fragments' random-access index at the end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4"]  # no partial left behind


@needs_av
def test_an_h264_file_plays_up_to_its_last_fragment_before_it_is_closed(tmp_path):
    """What a killed run leaves: a keyframe, and so a fragment, every second, each on disk once complete."""
    writer = open_video_writer(tmp_path / "v.mp4", (64, 48), 30.0, "libx264")
    for index in range(100):
        writer.write(make_result(index).frame)
    # Not closed: as if the process had died here (the encoder still holds its last frames and fragment).
    snapshot = tmp_path / "snapshot.mp4"
    snapshot.write_bytes((tmp_path / "v.mp4").read_bytes())
    in_fragments = fragment_frames(snapshot)
    decoded = decode_without_errors(snapshot)
    assert 60 <= in_fragments == len(decoded) < 100, (in_fragments, len(decoded))
    writer.close()
    assert len(decode_without_errors(tmp_path / "v.mp4")) == fragment_frames(tmp_path / "v.mp4") == 100


@pytest.mark.parametrize("codec", ["auto", "mp4v"])
def test_a_slow_source_keeps_its_own_timing(codec, tmp_path):
    """0.2 fps (a time-lapse): written at 1/5 fps, so 4 frames last 20 s, not 0.13 s at 30 fps."""
    if codec == "auto" and video_writer._import_av() is None:
        pytest.skip("PyAV is not installed (pip install 'dronseg-edge[video]')")
    sink, _ = write_sink(tmp_path / "slow.mp4", codec=codec, count=4, fps=0.2)
    assert sink.fps == 0.2
    frames, fps, _ = read_video(tmp_path / "slow.mp4")
    assert len(frames) == 4 and fps == pytest.approx(0.2)
    if video_writer._import_av() is not None:
        import av

        with av.open(str(tmp_path / "slow.mp4")) as container:
            stream = container.streams.video[0]
            times = [float(frame.time) for frame in container.decode(stream)]
            assert stream.average_rate == Fraction(1, 5) and times == [0.0, 5.0, 10.0, 15.0]


@needs_av
def test_odd_frame_sizes_are_cropped_by_one_pixel_and_say_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        sink, results = write_sink(tmp_path / "odd.mp4", codec="libx264", count=3, size=(65, 49))
    video = probe_with_pyav(tmp_path / "odd.mp4")
    assert video["size"] == (64, 48) and len(video["frames"]) == 3
    assert "65x49" in caplog.text and "last column and last row cropped" in caplog.text
    expected = overlay(results[1].frame, results[1].mask, LUT, 0.5)[:48, :64]
    assert np.abs(video["frames"][1].astype(int) - expected).mean() < 8  # cropped, not rescaled


@needs_av
def test_an_encoder_that_fails_at_the_real_size_falls_back_to_the_next(tmp_path, monkeypatch, caplog):
    if encoder_opens("h264_nvenc"):
        pytest.skip("NVENC really opens on this machine; the fallback cannot be staged")
    monkeypatch.setattr(video_writer, "encoder_opens", lambda name: True)  # the probe "passed", the open will not
    with caplog.at_level(logging.INFO, logger="dronseg_edge"):
        writer = open_video_writer(tmp_path / "v.mp4", (64, 48), 30.0, "auto")
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.close()
    writer.close()  # idempotent
    assert writer.codec == "libx264" and "h264_nvenc does not open" in caplog.text
    assert probe_with_pyav(tmp_path / "v.mp4")["codec"] == "h264"


@needs_av
def test_frames_too_small_or_an_encoder_failing_mid_run_are_one_line(tmp_path):
    with pytest.raises(DronsegError, match="frames of 1x48 are too small for a video; use --no-save-video"):
        open_video_writer(tmp_path / "thin.mp4", (1, 48), 30.0, "libx264")
    writer = open_video_writer(tmp_path / "v.mp4", (64, 48), 30.0, "libx264")
    fault = video_writer._import_av().error.InvalidDataError(1094995529, "Invalid data found when processing input")
    stream, writer._stream = writer._stream, SimpleNamespace(encode=lambda frame: (_ for _ in ()).throw(fault))
    with pytest.raises(DronsegError, match=r"encoding .*v.mp4 with libx264 failed: .*; try --codec mp4v"):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer._stream = stream
    writer.close()


def test_a_folder_no_encoder_can_write_into_is_one_line(tmp_path):
    with pytest.raises(DronsegError, match=r"cannot write video .*v.mp4 \(64x48; mp4v: OpenCV cannot open an mp4v "
                                           r"writer for .*\): the folder is not writable"):
        open_video_writer(tmp_path / "missing" / "v.mp4", (64, 48), 30.0, "mp4v")
    with pytest.raises(DronsegError, match=r"cannot name .* in a GStreamer pipeline \(a quote or backslash in it\)"):
        video_writer.gst_file_pipeline(tmp_path / 'a"b.mp4', "x264enc", (64, 48), 30.0)


@needs_av
def test_hevc_is_tagged_for_apple_players(tmp_path):
    if not any(encoder_opens(name) for name in ("hevc_nvenc", "libx265")):
        pytest.skip("this PyAV's FFmpeg has no H.265 encoder")
    sink, _ = write_sink(tmp_path / "v.mp4", codec="hevc", count=4)
    video = probe_with_pyav(tmp_path / "v.mp4")
    assert (video["codec"], video["tag"], video["pix_fmt"], len(video["frames"])) == ("hevc", "hvc1", "yuv420p", 4)
    assert sink.codec in ("hevc_nvenc", "libx265")


@needs_av
def test_an_error_mid_run_still_leaves_a_playable_video(tmp_path):
    sink = VideoSink(tmp_path / "v.mp4", fps=10.0, overlay=OverlayPlan(0.5, LUT))
    for index in range(5):
        sink.write(make_result(index))
    broken = make_result(5)
    broken.frame = None  # the overlay of this frame raises, as a bug or a failed GPU copy would
    with pytest.raises(Exception):
        sink.write(broken)
    sink.close()  # what the SinkWorker does after any error
    assert len(probe_with_pyav(tmp_path / "v.mp4")["frames"]) == 5


def test_without_pyav_auto_falls_back_to_mp4v_with_a_one_line_hint(tmp_path, without_av, caplog):
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        sink, _ = write_sink(tmp_path / "v.mp4", count=4)
    assert sink.codec == "mp4v"
    frames, fps, size = read_video(tmp_path / "v.mp4")
    assert (len(frames), fps, size) == (4, 25.0, (64, 48))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "mp4v" in warnings[0] and "pip install 'dronseg-edge[video]'" in warnings[0]


def test_explicit_mp4v_needs_no_pyav_and_warns_nothing(tmp_path, without_av, caplog):
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        sink, _ = write_sink(tmp_path / "v.mp4", codec="mp4v", count=2)
    assert sink.codec == "mp4v" and not caplog.records


@pytest.mark.parametrize("codec", ["h264", "libx264", "hevc", "h264_nvenc"])
def test_explicit_h264_or_hevc_without_pyav_is_one_line_naming_the_fix(codec, tmp_path, without_av):
    with pytest.raises(DronsegError, match=rf"--codec {codec} needs PyAV.*dronseg-edge\[video\].*--codec mp4v"):
        VideoSink(tmp_path / "v.mp4", fps=25.0, overlay=OverlayPlan(0.5, LUT), codec=codec)
    assert list(tmp_path.iterdir()) == []


@needs_av
def test_explicit_nvenc_without_an_nvidia_gpu_fails_before_writing(tmp_path):
    if encoder_opens("h264_nvenc"):
        pytest.skip("NVENC opens on this machine")
    with pytest.raises(DronsegError, match="--codec h264_nvenc: no h264_nvenc encoder opens.*--codec libx264"):
        encoders_for("h264_nvenc")


def test_unknown_codec_is_one_line_listing_the_choices():
    with pytest.raises(DronsegError) as error:
        RunOptions(codec="x265")
    message = str(error.value)
    assert "\n" not in message and message.startswith("--codec 'x265' is not one of auto, h264, h264_nvenc")
    with pytest.raises(DronsegError, match="--codec 'x265' is not one of"):
        encoders_for("x265")


@pytest.mark.parametrize("codec", ["auto", "mp4v"])
def test_the_writer_stops_before_the_disk_is_too_full_to_finish_the_file(codec, tmp_path, monkeypatch):
    if codec == "auto" and video_writer._import_av() is None:
        pytest.skip("PyAV is not installed (pip install 'dronseg-edge[video]')")
    writer = open_video_writer(tmp_path / "v.mp4", (64, 48), 25.0, codec)
    frames = [make_result(i).frame for i in range(4)]
    for frame in frames[:3]:
        writer.write(frame)
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 64 * 48 * 3 + disk_space.FINISH_BYTES)  # not the index too
    with pytest.raises(OSError) as error:
        writer.write(frames[3])
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(tmp_path / "v.mp4")
    writer.close()  # the room kept is what finishing needs
    assert writer.frames == 3 and len(read_video(tmp_path / "v.mp4")[0]) == 3


def test_a_week_long_fragmented_file_asks_only_for_the_room_its_end_needs(tmp_path, monkeypatch):
    # every fragment carries its own index: 32 bytes per frame of the whole file stopped a 24/7 recording
    # with "no space left" while 550 MB were free (a week at 30 fps)
    if video_writer._import_av() is None:
        pytest.skip("PyAV is not installed (pip install 'dronseg-edge[video]')")
    writer = open_video_writer(tmp_path / "v.mp4", (64, 48), 30.0, "auto")
    writer.write(make_result(0).frame)
    writer.frames = 7 * 24 * 3600 * 30
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 50_000_000)
    writer.write(make_result(1).frame)
    writer.close()


def test_an_mp4v_file_whose_index_was_not_written_is_an_error(tmp_path, monkeypatch):
    writer = open_video_writer(tmp_path / "v.mp4", (64, 48), 25.0, "mp4v")
    writer.write(make_result(0).frame)
    real = writer._writer
    monkeypatch.setattr(writer, "_writer", SimpleNamespace(release=lambda: None))  # as on a full disk: no index
    with pytest.raises(OSError, match="index could not be written"):
        writer.close()
    real.release()
    assert "moov" in mp4_top_level_boxes(tmp_path / "v.mp4")  # released for real, the index is there
    writer.close()  # closed once: the file is no longer checked


def test_a_jetson_writes_through_its_gstreamer_encoder_first(tmp_path, fake_jetson, monkeypatch):
    monkeypatch.setattr(fake_jetson, "elements", ("nvv4l2h264enc", "x264enc"))
    assert encoders_for("auto")[0] == encoders_for("h264")[0] == "nvv4l2h264enc"
    helped = RunOptions.__dataclass_fields__["codec"].metadata["option"].help  # it said auto was h264_nvenc first
    assert "auto (a Jetson's GStreamer nvv4l2h264enc or x264enc first; then h264_nvenc" in helped
    sink, _ = write_sink(tmp_path / "overlay.mp4", count=3)
    assert sink.codec == "nvv4l2h264enc"
    writer = fake_jetson.made[-1]
    assert writer.pipeline.startswith("appsrc ! videoconvert ! video/x-raw,format=BGRx ! nvvidconv")
    assert f'filesink location="{tmp_path / ".overlay.partial.mp4"}"' in writer.pipeline  # renamed when finished
    assert writer.frames == [(48, 64, 3)] * 3 and writer.size == (64, 48)


def test_gstreamer_codecs_are_refused_where_opencv_cannot_open_them(tmp_path, fake_jetson, monkeypatch):
    monkeypatch.setattr(fake_jetson, "elements", ("x264enc",))  # an Orin Nano: no hardware encoder
    assert encoders_for("x264enc") == ["x264enc"]
    with pytest.raises(DronsegError, match="--codec nvv4l2h264enc: OpenCV's GStreamer cannot open nvv4l2h264enc"):
        encoders_for("nvv4l2h264enc")


def test_pips_opencv_has_no_gstreamer_encoder():
    with pytest.raises(DronsegError, match="--codec x264enc: OpenCV's GStreamer cannot open x264enc here"):
        encoders_for("x264enc")


@pytest.mark.parametrize("codec", ["auto", "mp4v"])
def test_a_relative_name_with_a_colon_is_written_as_that_file(codec, tmp_path, monkeypatch):
    # FFmpeg read "2026-12-07T12:30:05.mp4" as the protocol "2026-12-07T12": "cannot write video ... not writable"
    if codec == "auto" and video_writer._import_av() is None:
        pytest.skip("PyAV is not installed (pip install 'dronseg-edge[video]')")
    monkeypatch.chdir(tmp_path)
    writer = video_writer.open_video_writer(Path("2026-12-07T12:30:05.mp4"), (64, 48), 25.0, codec)
    writer.write(make_result(0).frame)
    writer.close()
    assert len(read_video(tmp_path / "2026-12-07T12:30:05.mp4")[0]) == 1
