"""A whole run with live outputs: streams next to the files, the preview, the results, the legend, summary.json."""

from __future__ import annotations

import json
import socket

import cv2
import numpy as np
import pytest
from live_receivers import LOOPBACK, PLAN, PyAVReceiver, free_port, wait_until_bound
from pipeline_media import read_video, write_video
from testkit import fake_jetson  # noqa: F401 (a fixture)

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline import RunOptions, Segmenter, run_inference
from dronseg_edge.pipeline.live_targets import parse_stream_url, sdp_text
from dronseg_edge.pipeline.video_writer import _import_av, encoder_opens

needs_x264 = pytest.mark.skipif(_import_av() is None or not encoder_opens("libx264"),
                                reason="needs PyAV with libx264 (the `video` extra)")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint):
    with Segmenter(tiny_checkpoint, device="cpu") as seg:
        yield seg


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """40 frames of 320x192: large enough for the legend."""
    return write_video(tmp_path_factory.mktemp("live") / "clip.mp4", frames=40, size=(320, 192))


@needs_x264
def test_streams_go_out_while_the_files_keep_every_frame(segmenter, clip, tmp_path):
    udp_port, rtp_port, closed = free_port(), free_port(), free_port(socket.SOCK_STREAM)
    udp = PyAVReceiver(f"udp://{LOOPBACK}:{udp_port}", {"timeout": "5000000"})
    rtp_target = parse_stream_url(f"rtp://{LOOPBACK}:{rtp_port}")
    (tmp_path / "receiver.sdp").write_text(sdp_text(rtp_target))
    rtp = PyAVReceiver(str(tmp_path / "receiver.sdp"), {"protocol_whitelist": "file,udp,rtp"})
    wait_until_bound(udp_port)
    wait_until_bound(rtp_port)
    out = tmp_path / "run"
    summary = run_inference(segmenter, clip, RunOptions(
        out=out, progress=False, stream_out=(f"udp://{LOOPBACK}:{udp_port}", rtp_target.url,
                                             f"rtsp://{LOOPBACK}:{closed}/nobody"), stream_size="160x96"))
    udp.join()
    rtp.join()
    assert udp.decoded >= 30 and rtp.decoded >= 30 and udp.errors == rtp.errors == []
    assert udp.sizes == rtp.sizes == {(160, 96)}
    data = summary.data
    assert len(read_video(out / "overlay.mp4")[0]) == data["frames"] == 40  # the file has every frame
    streams = {s["protocol"]: s for s in data["streams"]}
    assert streams["udp"]["frames_sent"] + streams["udp"]["frames_dropped"] == 40
    assert streams["udp"]["latency_ms"]["p50"] > 0 and streams["udp"]["size"] == "160x96"
    assert streams["rtp"]["sdp"] == rtp_target.sdp_name
    assert (out / rtp_target.sdp_name).read_text() == sdp_text(rtp_target)
    # no server: every frame dropped, the run itself unharmed
    assert (streams["rtsp"]["frames_sent"], streams["rtsp"]["frames_dropped"]) == (0, 40)
    assert "refused" in streams["rtsp"]["last_error"].lower()
    assert data["stopped"] == "end" and data["error"] is None
    assert data == json.loads((out / "summary.json").read_text())


def test_preview_and_results_are_recorded_and_stop_with_the_run(segmenter, clip, tmp_path):
    results = tmp_path / "results.jsonl"
    summary = run_inference(segmenter, clip, RunOptions(out=tmp_path / "run", progress=False, preview="0",
                                                        results=str(results), max_frames=5))
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2, 3, 4]
    data = summary.data
    assert data["results"] == {"target": str(results), "kind": "file", "schema": 1, "lines": 5, "lines_dropped": 0}
    assert data["preview"]["url"].startswith("http://127.0.0.1:") and data["preview"]["token"] is False
    port = int(data["preview"]["url"].rstrip("/").rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex((LOOPBACK, port)) != 0  # the server stopped with the run
    assert data["streams"] is None


def test_a_preview_port_in_use_fails_before_the_run_folder(segmenter, clip, tmp_path):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DronsegError, match=f"--preview 127.0.0.1:{port}: cannot listen there: the port is in use"):
            run_inference(segmenter, clip, RunOptions(out=tmp_path / "run", progress=False, preview=str(port)))
    assert not (tmp_path / "run").exists()


def test_an_existing_results_file_is_refused_before_the_run_folder(segmenter, clip, tmp_path):
    (tmp_path / "r.jsonl").write_text("earlier\n")
    with pytest.raises(DronsegError, match="the file exists"):
        run_inference(segmenter, clip, RunOptions(out=tmp_path / "run", progress=False, results=str(tmp_path / "r.jsonl")))
    assert not (tmp_path / "run").exists() and (tmp_path / "r.jsonl").read_text() == "earlier\n"
    with pytest.raises(DronsegError, match=r"--results .*results is a folder: give a new file name inside it"):
        (tmp_path / "results").mkdir()  # not "the file exists"
        run_inference(segmenter, clip, RunOptions(out=tmp_path / "run", progress=False, results=str(tmp_path / "results")))


@pytest.mark.parametrize("name", ["summary.json", "stats.jsonl", "."])
def test_a_results_file_inside_out_is_refused_before_the_run_folder(segmenter, clip, tmp_path, name):
    """summary.json replaced the results at the end (exit 0, every line lost); stats.jsonl was 'the file exists', and
    so was a new --out given as --results too (`--out run --results run`), where no file existed."""
    (tmp_path / "run").mkdir()
    with pytest.raises(DronsegError, match=r"--results .*run(/\S+)? is --out .*run or inside it, which holds the run's own"):
        run_inference(segmenter, clip, RunOptions(out=tmp_path / "run", progress=False, results=str(tmp_path / "run" / name)))
    assert not any((tmp_path / "run").iterdir())
    with pytest.raises(DronsegError, match="is --out .*new or inside it"):
        run_inference(segmenter, clip, RunOptions(out=tmp_path / "new", progress=False, results=str(tmp_path / "new")))
    assert not (tmp_path / "new").exists()


def test_a_results_target_that_cannot_work_is_refused_before_the_run_folder(segmenter, clip, tmp_path, monkeypatch):
    with pytest.raises(DronsegError, match=r"--results .*missing/r.jsonl: the folder .*missing does not exist"):
        run_inference(segmenter, clip, RunOptions(out=tmp_path / "run", progress=False,
                                                  results=str(tmp_path / "missing" / "r.jsonl")))

    def unknown(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    with pytest.raises(DronsegError, match="host nowhere.invalid is unknown"):
        run_inference(segmenter, clip, RunOptions(out=tmp_path / "run", progress=False,
                                                  results="udp://nowhere.invalid:5000"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("given", [False, True])
def test_a_sink_failing_before_the_first_frame_leaves_no_half_made_run(segmenter, clip, tmp_path, monkeypatch, given):
    import dronseg_edge.pipeline.live_outputs as live_outputs

    def refuse(*args, **kwargs):
        raise DronsegError("cannot open the results target")

    monkeypatch.setattr(live_outputs, "ResultsSink", refuse)
    out = tmp_path / "run"
    if given:
        out.mkdir()  # an empty --out stays, empty
    with pytest.raises(DronsegError, match="cannot open the results target"):
        run_inference(segmenter, clip, RunOptions(out=out, progress=False, results="-"))
    assert (list(out.iterdir()) == []) if given else not out.exists()
    monkeypatch.undo()
    assert run_inference(segmenter, clip, RunOptions(out=out, progress=False, max_frames=2)).data["frames"] == 2  # same --out


@needs_x264
def test_a_streams_keyframes_count_the_frames_it_sends(tmp_path):
    # --stride 5 on a 30 fps source sends 6 frames a second: a keyframe every 6 (it was every 30: one in 5 s)
    from dronseg_edge.pipeline.live_outputs import build_live_sinks
    from dronseg_edge.pipeline.sources import FramesSource

    options = RunOptions(stream_out=(f"udp://{LOOPBACK}:{free_port()}",), stride=5, progress=False)
    sinks = build_live_sinks(FramesSource([], fps=30.0), tmp_path, options, PLAN.lut, PLAN, None, None)
    assert [sink.fps for sink in sinks] == [6.0]


def test_the_legend_is_in_the_video_corner_by_default_and_goes_with_no_legend(segmenter, clip, tmp_path):
    with_legend = run_inference(segmenter, clip, RunOptions(out=tmp_path / "a", progress=False, max_frames=3))
    without = run_inference(segmenter, clip, RunOptions(out=tmp_path / "b", progress=False, max_frames=3, legend=False))
    first = read_video(with_legend.out_dir / "overlay.mp4")[0][2].astype(int)
    second = read_video(without.out_dir / "overlay.mp4")[0][2].astype(int)
    corner, rest = (slice(96, 192), slice(0, 136)), (slice(0, 96), slice(136, 320))
    assert np.abs(first[corner] - second[corner]).mean() > 5  # swatches and names drawn there
    assert np.abs(first[rest] - second[rest]).mean() < 2  # and nowhere else


def test_images_get_no_legend_unless_asked(segmenter, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    frame = read_video(write_video(tmp_path / "c.mp4", 1, (320, 192)))[0][0]
    cv2.imwrite(str(folder / "a.png"), frame)
    plain = run_inference(segmenter, folder, RunOptions(out=tmp_path / "a", progress=False))
    asked = run_inference(segmenter, folder, RunOptions(out=tmp_path / "b", progress=False, legend=True))
    first = cv2.imread(str(plain.out_dir / "overlay" / "a.jpg")).astype(int)
    second = cv2.imread(str(asked.out_dir / "overlay" / "a.jpg")).astype(int)
    assert np.abs(first[96:, :136] - second[96:, :136]).mean() > 5


def test_a_preview_reachable_from_the_network_says_viewers_need_the_token(caplog):
    from dronseg_edge.pipeline.live_outputs import open_preview

    server = open_preview(RunOptions(preview="0.0.0.0:0", preview_token="s3cret-token"))
    server.close()
    assert f"--preview listens on 0.0.0.0:{server.port}, reachable from the network: viewers need the token" in caplog.text


def test_a_jetson_streams_udp_and_rtp_through_gstreamer_and_rtsp_through_pyav(fake_jetson, monkeypatch, caplog):
    from dronseg_edge.pipeline import live_outputs
    from dronseg_edge.pipeline.live_encoder import GStreamerLiveEncoder

    monkeypatch.setattr(fake_jetson, "elements", ("nvv4l2h264enc",))
    monkeypatch.setattr(live_outputs, "PyAVLiveEncoder", lambda *args: "pyav")
    open_encoder = live_outputs._encoder_opener("nvv4l2h264enc")
    for url in ("udp://127.0.0.1:5600", "rtp://127.0.0.1:5602"):
        encoder = open_encoder(parse_stream_url(url), (320, 192), 30.0, 2000)
        assert isinstance(encoder, GStreamerLiveEncoder) and encoder.encoder == "nvv4l2h264enc"
        assert "nvv4l2h264enc bitrate=2000000 control-rate=1" in encoder.pipeline
        assert encoder.pipeline.endswith("udpsink host=127.0.0.1 port=%d sync=false async=false" % int(url[-4:]))
        assert encoder.send(np.zeros((192, 320, 3), np.uint8)) and fake_jetson.made[-1].frames == [(192, 320, 3)]
    assert open_encoder(parse_stream_url("rtsp://127.0.0.1:8554/drone"), (320, 192), 30.0, 2000) == "pyav"
    monkeypatch.setattr(fake_jetson, "elements", ())  # the element does not open after all: PyAV's libx264
    assert open_encoder(parse_stream_url("udp://127.0.0.1:5600"), (320, 192), 30.0, 2000) == "pyav"
    assert "stream udp://127.0.0.1:5600: " in caplog.text and "; sending with PyAV's libx264 instead" in caplog.text
