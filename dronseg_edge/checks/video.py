"""Video I/O: OpenCV's build (FFmpeg, GStreamer, GUI) and PyAV's H.264 encoders."""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from typing import Iterator

from dronseg_edge.checks import jetson
from dronseg_edge.checks.base import FAIL, OK, WARN, Check, first_line, import_optional
from dronseg_edge.errors import docs_url

JETPACK_OPENCV = ("JetPack's OpenCV (NVIDIA's apt package libopencv-python, from nvidia-opencv) in a venv made with "
                  f"--system-site-packages: {docs_url('jetson.md', 'why-opencv-and-onnx-runtime-leave-the-core-on-aarch64')}")
ENCODERS = ("libx264", "h264_nvenc")  # what `infer --codec auto` tries for H.264 (after NVENC: the CPU)


def video_checks() -> Iterator[Check]:
    yield from opencv_checks()
    yield from pyav_checks()
    yield auto_encoder_check()


def auto_encoder_check() -> Check:
    """The H.264 encoder ``infer --codec auto`` uses here for files and streams (gst_encoders.py on a Jetson)."""
    from dronseg_edge import gst_encoders

    hardware = gst_encoders.jetson_encoder()
    if hardware is not None:
        kind = "the hardware encoder" if hardware == "nvv4l2h264enc" else "CPU: nvv4l2h264enc does not open here"
        return Check("auto encoder", OK, f"{hardware} through OpenCV's GStreamer ({kind}); rtsp:// streams: PyAV")
    av, _ = import_optional("av")
    found = next((name for name in ENCODERS[::-1] if av is not None and encoder_check(av, name).status == OK), None)
    if found is None:
        return Check("auto encoder", WARN, "mp4v through OpenCV (no H.264: browsers cannot play it, no streams)")
    where = (f" (a Jetson whose OpenCV opens no GStreamer encoder: {JETPACK_OPENCV}; x264enc comes with "
             "gstreamer1.0-plugins-ugly)") if jetson.is_jetson() else ""
    return Check("auto encoder", OK, f"{found} through PyAV{where}")


def parse_build_information(text: str) -> dict[str, str]:
    """``key: value`` lines of cv2.getBuildInformation(), first occurrence of each key.

    {'FFMPEG': 'YES', 'avcodec': 'YES (62.28.101)', 'GStreamer': 'NO', 'GUI': 'NONE', 'GTK+': 'YES (ver 3.24)', ...}
    """
    entries: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            entries.setdefault(key.strip(), value.strip())
    return entries


def opencv_checks() -> Iterator[Check]:
    cv2, why = import_optional("cv2")
    if cv2 is None:
        # An OpenCV built against numpy 1.x (JetPack's) does not import under numpy 2.
        # On a Jetson pip's OpenCV has no GStreamer (no CSI cameras, no hardware encoder) and shadows JetPack's.
        fix = ("pip install 'numpy<2'" if "numpy" in why.lower() else JETPACK_OPENCV if jetson.is_jetson()
               else "pip install opencv-python-headless")
        yield Check("opencv", FAIL, f"{why}: images and video cannot be read or written ({fix})", {"version": None})
        return
    yield Check("opencv", OK, str(cv2.__version__), {"version": str(cv2.__version__)})
    build = parse_build_information(cv2.getBuildInformation())
    if build.get("FFMPEG", "").upper().startswith("YES"):
        version = build.get("avcodec", "").removeprefix("YES").strip(" ()")
        yield Check("opencv ffmpeg", OK, f"yes (avcodec {version})" if version else "yes")
    else:
        yield Check("opencv ffmpeg", WARN, "no FFmpeg: video files and RTSP streams cannot be read "
                                           "(pip install opencv-python-headless, whose wheels have it)")
    if build.get("GStreamer", "").upper().startswith("YES"):
        yield Check("opencv gstreamer", OK, "yes")
    elif jetson.is_jetson():
        yield Check("opencv gstreamer", WARN, f"no: CSI cameras (nvarguscamerasrc pipelines) need an OpenCV built with "
                                              f"GStreamer, e.g. {JETPACK_OPENCV}")
    else:
        yield Check("opencv gstreamer", OK, "no (only GStreamer pipeline sources need it)")
    gui = build.get("GUI", "")
    if gui and gui.upper() not in ("NONE", "NO"):
        yield Check("opencv gui", OK, gui)
    elif os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        # A display is there, so a window is probably wanted: say why --show will not open one.
        yield Check("opencv gui", WARN, "none (headless build): `infer --show` cannot open a window; "
                                        "pip uninstall opencv-python-headless && pip install opencv-python")
    else:
        yield Check("opencv gui", OK, "none (headless build; `infer --show` needs opencv-python and a display)")


def pyav_checks() -> Iterator[Check]:
    av, why = import_optional("av")
    if av is None:
        yield Check("pyav", WARN, f"{why}: overlay videos fall back to OpenCV's mp4v, which browsers do not play "
                                  "(pip install 'dronseg-edge[video]' for H.264)")
        return
    libavcodec = getattr(av, "library_versions", {}).get("libavcodec")
    shown = f" (libavcodec {'.'.join(map(str, libavcodec))})" if libavcodec else ""
    yield Check("pyav", OK, f"{av.__version__}{shown}", {"version": str(av.__version__)})
    for name in ENCODERS:
        yield encoder_check(av, name)


def encoder_check(av, name: str) -> Check:
    """Open encoder ``name`` on a small frame: NVENC is in PyAV's recent wheels (17 and 18; not 12) but opens only
    with an NVIDIA GPU and driver."""
    label = f"pyav {name}"
    fallback = "libx264 (CPU) is used instead" if name.endswith("nvenc") else "overlay videos fall back to mp4v"
    error, logs = None, []
    try:
        context = av.CodecContext.create(name, "w")
    except Exception as exc:
        return Check(label, WARN, f"not in this FFmpeg build ({first_line(exc)}); {fallback}")
    try:
        with ffmpeg_errors(av) as logs:
            context.width, context.height, context.pix_fmt = 256, 144, "yuv420p"
            context.time_base = Fraction(1, 30)
            context.open()
            close = getattr(context, "close", None)  # gone in PyAV 14+, where the context closes when freed
            if close is not None:
                close()
    except Exception as exc:
        error = first_line(exc)
    if error is None:
        return Check(label, OK, "opens")
    # FFmpeg's own line says why ('Cannot load libcuda.so.1'); PyAV repeats the last one in its exception,
    # and its log capture skips a message it has already seen.
    reason = logs[-1] if logs else error.split("last error log:")[-1].strip()
    return Check(label, WARN, f"does not open: {reason}; {fallback}")


@contextlib.contextmanager
def ffmpeg_errors(av) -> Iterator[list[str]]:
    """FFmpeg's own error lines while the block runs, filled at its end (PyAV's exception only says
    'Operation not permitted')."""
    lines: list[str] = []
    log = getattr(av, "logging", None)
    try:
        level, capture = log.get_level(), log.Capture()
        log.set_level(log.ERROR)
        entries = capture.__enter__()  # the list FFmpeg's (level, name, message) tuples go to
    except Exception:  # an older PyAV without these: the exception's text will do
        capture = None
    try:
        yield lines
    finally:
        if capture is not None:
            capture.__exit__(None, None, None)
            lines.extend(text for entry in entries if (text := str(entry[-1]).strip()))
            log.set_level(level)
