"""OpenCV build parsing and PyAV encoders."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from testkit import fake_jetson  # noqa: F401 (a fixture)

from dronseg_edge.checks import FAIL, OK, WARN, jetson, video

BUILD = """
General configuration for OpenCV 5.0.0 =====================================
  GUI:                           NONE
    VTK support:                 NO

  Video I/O:
    FFMPEG:                      YES
      avcodec:                   YES (62.28.101)
    GStreamer:                   NO
    v4l/v4l2:                    YES (linux/videodev2.h)
"""


def test_build_information_is_parsed():
    entries = video.parse_build_information(BUILD)
    assert entries["FFMPEG"] == "YES" and entries["avcodec"] == "YES (62.28.101)"
    assert entries["GStreamer"] == "NO" and entries["GUI"] == "NONE"


class FakeCv2:
    __version__ = "4.10.0"

    def __init__(self, build):
        self.build = build

    def getBuildInformation(self):
        return self.build


def opencv_lines(monkeypatch, build, on_jetson=False, display=None):
    monkeypatch.setitem(sys.modules, "cv2", FakeCv2(build))
    monkeypatch.setattr(jetson, "is_jetson", lambda: on_jetson)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if display:
        monkeypatch.setenv("DISPLAY", display)
    else:
        monkeypatch.delenv("DISPLAY", raising=False)
    return {c.name: c for c in video.opencv_checks()}


def test_a_headless_ffmpeg_build(monkeypatch):
    checks = opencv_lines(monkeypatch, BUILD)
    assert checks["opencv"].detail == "4.10.0"
    assert checks["opencv ffmpeg"] == video.Check("opencv ffmpeg", OK, "yes (avcodec 62.28.101)")
    assert checks["opencv gstreamer"].status == OK and checks["opencv gui"].status == OK


def test_a_build_without_ffmpeg_and_gstreamer_on_a_jetson_with_a_display(monkeypatch):
    build = BUILD.replace("FFMPEG:                      YES", "FFMPEG:                      NO")
    checks = opencv_lines(monkeypatch, build, on_jetson=True, display=":0")
    assert checks["opencv ffmpeg"].status == WARN and "RTSP" in checks["opencv ffmpeg"].detail
    assert checks["opencv gstreamer"].status == WARN and "nvarguscamerasrc" in checks["opencv gstreamer"].detail
    # JetPack's own package (Ubuntu's python3-opencv is another build), and the docs by URL: a pip user has no docs/.
    assert "libopencv-python" in checks["opencv gstreamer"].detail and "python3-opencv" not in checks["opencv gstreamer"].detail
    assert "https://" in checks["opencv gstreamer"].detail and "/docs/jetson.md#" in checks["opencv gstreamer"].detail
    assert checks["opencv gui"].status == WARN and "--show" in checks["opencv gui"].detail


def test_a_gui_build(monkeypatch):
    checks = opencv_lines(monkeypatch, BUILD.replace("GUI:                           NONE", "GUI:    GTK3"))
    assert checks["opencv gui"] == video.Check("opencv gui", OK, "GTK3")


def test_without_opencv_nothing_reads_images(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    [check] = list(video.opencv_checks())
    assert check.status == FAIL and "opencv-python-headless" in check.detail


def test_a_jetson_without_opencv_is_told_jetpacks_not_pips(monkeypatch):
    """pip's OpenCV has no GStreamer and shadows JetPack's (docs/jetson.md): the fix is a venv that sees JetPack's."""
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setattr(jetson, "is_jetson", lambda: True)
    [check] = list(video.opencv_checks())
    assert check.status == FAIL and "libopencv-python" in check.detail and "--system-site-packages" in check.detail
    assert "pip install opencv" not in check.detail


def test_an_opencv_built_for_numpy_1_under_numpy_2_names_the_fix(tmp_path, monkeypatch):
    """JetPack's OpenCV in a venv where pip put numpy 2: the import fails, the line says to go back to numpy 1.x."""
    (tmp_path / "cv2.py").write_text("raise ImportError('numpy.core.multiarray failed to import "
                                     "(A module that was compiled using NumPy 1.x cannot be run in NumPy 2.2.6)')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cv2", raising=False)
    [check] = list(video.opencv_checks())
    assert check.status == FAIL and "NumPy 1.x" in check.detail and check.detail.endswith("(pip install 'numpy<2')")


def test_without_pyav_videos_fall_back_to_mp4v(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    [check] = list(video.pyav_checks())
    assert check.status == WARN and "mp4v" in check.detail and "dronseg-edge[video]" in check.detail


def test_pyav_encoders_are_opened_for_real():
    pytest.importorskip("av")
    checks = {c.name: c for c in video.pyav_checks()}
    assert checks["pyav"].status == OK
    assert checks["pyav libx264"] == video.Check("pyav libx264", OK, "opens")
    nvenc = checks["pyav h264_nvenc"]
    # Opens only with an NVIDIA GPU and driver; elsewhere FFmpeg's own reason is shown, not PyAV's errno (PyAV 12's
    # wheels lack the encoder: "not in this FFmpeg build").
    assert nvenc.status == OK or (("does not open" in nvenc.detail or "not in this FFmpeg build" in nvenc.detail)
                                  and nvenc.detail.endswith("; libx264 (CPU) is used instead"))
    assert "Operation not permitted" not in nvenc.detail


def test_an_encoder_that_does_not_open_warns_with_ffmpegs_reason():
    class Context:
        def open(self):
            raise OSError("Operation not permitted; last error log: [h264_nvenc] Cannot load libcuda.so.1")

    av = SimpleNamespace(CodecContext=SimpleNamespace(create=lambda name, mode: Context()))  # no av.logging: PyAV 12
    check = video.encoder_check(av, "h264_nvenc")
    assert (check.status, check.detail) == (WARN, "does not open: [h264_nvenc] Cannot load libcuda.so.1; libx264 (CPU) "
                                                  "is used instead")


def test_an_encoder_missing_from_the_build():
    pytest.importorskip("av")
    import av

    check = video.encoder_check(av, "no_such_encoder")
    assert check.status == WARN and "not in this FFmpeg build" in check.detail
    assert check.detail.endswith("; overlay videos fall back to mp4v")


@pytest.mark.parametrize("elements, status, detail", [
    (("nvv4l2h264enc", "x264enc"), OK, "nvv4l2h264enc through OpenCV's GStreamer (the hardware encoder)"),
    (("x264enc",), OK, "x264enc through OpenCV's GStreamer (CPU: nvv4l2h264enc does not open here)"),
])
def test_the_auto_encoder_line_names_a_jetsons_gstreamer_encoder(fake_jetson, monkeypatch, elements, status, detail):
    monkeypatch.setattr(fake_jetson, "elements", elements)
    check = video.auto_encoder_check()
    assert (check.name, check.status) == ("auto encoder", status) and check.detail.startswith(detail)


def test_a_jetson_whose_opencv_opens_no_gstreamer_encoder_is_told_jetpacks_package(fake_jetson):
    """JetPack's OpenCV is NVIDIA's libopencv-python; Ubuntu's python3-opencv is another build (docs/jetson.md)."""
    pytest.importorskip("av")
    check = video.auto_encoder_check()
    assert "through PyAV" in check.detail and "libopencv-python" in check.detail and "python3-opencv" not in check.detail
    assert "gstreamer1.0-plugins-ugly" in check.detail


def test_the_auto_encoder_line_elsewhere_names_pyavs(monkeypatch, tmp_path):
    from dronseg_edge import machine

    monkeypatch.setattr(machine, "TEGRA_RELEASE", tmp_path / "none")
    monkeypatch.setattr(machine, "DEVICE_TREE_MODEL", tmp_path / "none")
    check = video.auto_encoder_check()
    av = pytest.importorskip("av")
    expected = "h264_nvenc" if video.encoder_check(av, "h264_nvenc").status == OK else "libx264"
    assert (check.status, check.detail) == (OK, f"{expected} through PyAV")
    monkeypatch.setitem(sys.modules, "av", None)
    assert video.auto_encoder_check().status == WARN
