"""The Jetson's GStreamer encoders: the pipeline text against GStreamer itself (gst-inspect-1.0, and a real
run through gst-launch-1.0 with x264enc standing in for the hardware), and the choice with fakes (pip's
OpenCV has no GStreamer, and no Jetson is here)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dronseg_edge import machine
from dronseg_edge.gst_encoders import GST_ENCODERS, encoder_chain, jetson_encoder
from dronseg_edge.pipeline.live_encoder import stream_pipeline
from dronseg_edge.pipeline.live_targets import parse_stream_url, sdp_text
from dronseg_edge.pipeline.video_writer import gst_file_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent / "pipeline"))
from live_receivers import LOOPBACK, PyAVReceiver, free_port, wait_until_bound  # noqa: E402
from testkit import fake_jetson  # noqa: E402,F401 (a fixture)

GST_INSPECT, GST_LAUNCH = shutil.which("gst-inspect-1.0"), shutil.which("gst-launch-1.0")
# nvv4l2h264enc and nvvidconv exist on Jetsons only: their properties as NVIDIA's gst-nvvideo4linux2
# source (JetPack 5/6, gstv4l2videoenc.c and gstv4l2h264enc.c) installs them.
JETSON_ONLY = {
    "nvv4l2h264enc": {"bitrate", "control-rate", "iframeinterval", "idrinterval", "insert-sps-pps", "num-B-Frames",
                      "maxperf-enable", "preset-level", "profile", "peak-bitrate", "vbv-size", "ratecontrol-enable",
                      "insert-vui", "insert-aud", "disable-cabac"},
    "nvvidconv": set(),
}
pytestmark = pytest.mark.timeout(120)


def every_pipeline(tmp_path) -> list[str]:
    pipelines = []
    for encoder in GST_ENCODERS:
        pipelines.append(gst_file_pipeline(tmp_path / "overlay.mp4", encoder, (1280, 720), 30.0))
        for url in ("udp://127.0.0.1:5600", "rtp://127.0.0.1:5600"):
            pipelines.append(stream_pipeline(parse_stream_url(url), encoder, 30.0, 2000))
    return pipelines


def elements_and_properties(pipeline: str) -> list[tuple[str, set[str]]]:
    """(element, {property}) for each element of a pipeline's text (caps filters skipped)."""
    found = []
    for part in pipeline.split("!"):
        words = re.findall(r'[^\s"]+="[^"]*"|\S+', part)
        if not words or "/" in words[0]:
            continue
        found.append((words[0], {word.split("=", 1)[0] for word in words[1:]}))
    return found


def inspected_properties(element: str) -> set[str] | None:
    """The property names gst-inspect-1.0 lists for ``element``, or None where it is not installed."""
    shown = subprocess.run([GST_INSPECT, element], capture_output=True, text=True, timeout=30)
    if shown.returncode != 0:
        return None
    section = shown.stdout.split("Element Properties:", 1)[-1]
    return set(re.findall(r"^  ([A-Za-z][\w-]*)\s+: ", section, re.MULTILINE))


def test_live_and_file_settings():
    for encoder in GST_ENCODERS:
        live, stored = encoder_chain(encoder, 30, 2000, live=True), encoder_chain(encoder, 30, 2000, live=False)
        assert "h264parse config-interval=-1" in live and "h264parse" in stored
    x264 = encoder_chain("x264enc", 25, 1500, live=True)
    assert "tune=zerolatency" in x264 and "bitrate=1500" in x264 and "bframes=0" in x264 and "key-int-max=25" in x264
    assert "pass=qual" in encoder_chain("x264enc", 25, 1500, live=False)
    nv = encoder_chain("nvv4l2h264enc", 25, 1500, live=True)
    assert "bitrate=1500000" in nv and "control-rate=1" in nv and "idrinterval=25" in nv and "num-B-Frames=0" in nv
    with pytest.raises(ValueError):
        encoder_chain("h264_nvenc", 25, 1500, live=True)


@pytest.mark.skipif(GST_INSPECT is None, reason="needs gst-inspect-1.0 (apt-get install gstreamer1.0-tools "
                                                "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly)")
def test_every_element_and_property_is_gstreamers_own(tmp_path):
    missing, checked = [], set()
    for pipeline in every_pipeline(tmp_path):
        for element, used in elements_and_properties(pipeline):
            known = JETSON_ONLY.get(element)
            if known is None:
                known = inspected_properties(element)
                if known is None:
                    missing.append(f"{element} (not installed)")
                    continue
                checked.add(element)
            missing += [f"{element} {name}" for name in sorted(used - known)]
    assert missing == [] and {"x264enc", "h264parse", "mp4mux", "filesink", "mpegtsmux", "rtph264pay",
                              "udpsink", "videoconvert", "appsrc"} <= checked


def run_with_test_frames(pipeline: str, frames: int) -> subprocess.CompletedProcess:
    """The pipeline run by gst-launch-1.0, a test picture in BGR in place of OpenCV's appsrc."""
    source = (f"videotestsrc num-buffers={frames} pattern=ball is-live=true ! "
              "video/x-raw,format=BGR,width=320,height=240,framerate=30/1")
    text = re.sub(r"^appsrc( is-live=true)?", source, pipeline)
    # gst-launch-1.0 quotes each of its arguments as one value: the text goes word by word
    return subprocess.run([GST_LAUNCH, "-e", "-q", *shlex.split(text)], capture_output=True, text=True, timeout=60)


needs_x264enc = pytest.mark.skipif(GST_LAUNCH is None or GST_INSPECT is None or inspected_properties("x264enc") is None,
                                   reason="needs gst-launch-1.0 with x264enc (gstreamer1.0-tools, gstreamer1.0-plugins-ugly)")


@needs_x264enc
def test_the_file_pipeline_writes_an_mp4_that_plays(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "overlay.mp4"
    ran = run_with_test_frames(gst_file_pipeline(path, "x264enc", (320, 240), 30.0), 45)
    assert ran.returncode == 0, ran.stderr
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = sum(1 for _ in container.decode(stream))
        assert (stream.codec_context.name, stream.width, stream.height, decoded) == ("h264", 320, 240, 45)


@needs_x264enc
@pytest.mark.parametrize("kind", ["udp", "rtp"])
def test_the_stream_pipelines_are_received(kind, tmp_path):
    pytest.importorskip("av")
    port = free_port()
    target = parse_stream_url(f"{kind}://{LOOPBACK}:{port}")
    if kind == "udp":
        receiver = PyAVReceiver(f"udp://{LOOPBACK}:{port}", {"timeout": "5000000"})
    else:
        (tmp_path / "s.sdp").write_text(sdp_text(target))
        receiver = PyAVReceiver(str(tmp_path / "s.sdp"), {"protocol_whitelist": "file,udp,rtp"})
    wait_until_bound(port)
    ran = run_with_test_frames(stream_pipeline(target, "x264enc", 30.0, 1000), 60)
    receiver.join()
    assert ran.returncode == 0, ran.stderr
    assert receiver.decoded >= 30 and receiver.errors == [] and receiver.sizes == {(320, 240)}


@pytest.mark.parametrize("elements, chosen", [(("nvv4l2h264enc", "x264enc"), "nvv4l2h264enc"),
                                              (("x264enc",), "x264enc"),  # an Orin Nano: no hardware encoder
                                              ((), None)])  # pip's OpenCV: no GStreamer
def test_a_jetson_uses_the_first_encoder_that_opens(fake_jetson, monkeypatch, elements, chosen):
    monkeypatch.setattr(fake_jetson, "elements", elements)
    assert jetson_encoder() == chosen


def test_elsewhere_no_gstreamer_encoder_is_chosen(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "TEGRA_RELEASE", tmp_path / "none")
    monkeypatch.setattr(machine, "DEVICE_TREE_MODEL", tmp_path / "none")
    assert jetson_encoder() is None


def test_a_jetson_without_opencv_has_no_gstreamer_encoder(fake_jetson, monkeypatch):
    """A venv made without --system-site-packages does not see JetPack's cv2: `checks` gave a bug line for the group."""
    monkeypatch.setitem(sys.modules, "cv2", None)
    assert jetson_encoder() is None
