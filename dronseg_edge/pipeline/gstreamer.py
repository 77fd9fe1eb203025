"""GStreamer sources: a pipeline given as SOURCE, and the ``csi://N`` shortcut for a Jetson's CSI camera.

Both are opened through OpenCV's GStreamer backend (``cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)``),
which pip's OpenCV wheels lack; JetPack's OpenCV has it (docs/jetson.md#cameras-and-streams). This
module builds and checks the pipeline text, and :class:`GStreamerSource` reads frames from it.
"""

from __future__ import annotations

import re
import shlex
from importlib import metadata
from pathlib import Path
from urllib.parse import parse_qsl

import cv2

from dronseg_edge.errors import BackendUnavailable, DronsegError, docs_url
from dronseg_edge.pipeline.source_base import shown_url, split_url
from dronseg_edge.pipeline.sources import CaptureSource, opened

# Appended when a pipeline has no appsink of its own. A live source keeps only the newest frame (a
# slow reader must not make the camera's frames queue up); a file is read whole, and as fast as it
# decodes rather than at its playback rate (sync=false), the GStreamer counterpart of a video file.
LIVE_APPSINK = "appsink drop=true max-buffers=1"
FILE_APPSINK = "appsink sync=false"
# First elements that read a finite file: such a pipeline ends at its end instead of being reopened.
FILE_ELEMENTS = ("filesrc", "multifilesrc", "splitfilesrc")
CSI_DEFAULTS = {"width": 1920, "height": 1080, "fps": 30}
CSI_EXAMPLE = "csi://0?width=1920&height=1080&fps=30"


def is_pipeline(text: str) -> bool:
    """Whether a SOURCE text is a GStreamer pipeline (elements joined by ``!``); a URL with a ``!`` in
    it (``http://host/a!b.ts``: one word, a scheme) is not."""
    return "!" in text and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S*", text.strip()) is None


def elements(pipeline: str) -> list[str]:
    """The factory name of each element, in order (``"videotestsrc is-live=true ! appsink"`` -> both names)."""
    return [part.split()[0] for part in pipeline.split("!") if part.split()]


def reads_file(pipeline: str) -> bool:
    """Whether the pipeline starts from a file (finite: it ends, and reopening it would replay it)."""
    first = pipeline.split("!", 1)[0]
    return (elements(first) or [""])[0] in FILE_ELEMENTS or re.search(r"\buri=\"?file:", first) is not None


def with_appsink(pipeline: str) -> str:
    """The pipeline ending in an appsink, appended where the user wrote none.

    OpenCV reads frames from an element named ``appsink*`` or ``opencvsink``; it must receive BGR (or
    GRAY8) frames, e.g. after ``videoconvert ! video/x-raw,format=BGR``.
    """
    text = pipeline.strip()
    if "appsink" in elements(text):
        return text
    text = text.rstrip("!").rstrip()
    return f"{text} ! {FILE_APPSINK if reads_file(text) else LIVE_APPSINK}"


def csi_pipeline(spec: str) -> str:
    """The pipeline for ``csi://N[?width=W&height=H&fps=F]`` (defaults 1920x1080 at 30 fps).

    The frames go from the camera's NVMM buffers through ``nvvidconv`` (the Jetson's converter) to
    BGRx, then ``videoconvert`` to the BGR that OpenCV takes. Raises DronsegError naming the bad part.
    """
    parts = split_url(spec, "source")
    if not parts.netloc.isdecimal() or parts.path not in ("", "/"):
        raise DronsegError(f"source {spec}: a CSI camera is csi://N with N its sensor id (0, 1, ...), "
                           f"e.g. {CSI_EXAMPLE}")
    settings = dict(CSI_DEFAULTS)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in settings:
            raise DronsegError(f"source {spec}: unknown option {key!r}; csi:// takes "
                               f"{', '.join(CSI_DEFAULTS)} (e.g. {CSI_EXAMPLE})")
        if not value.isdecimal() or int(value) <= 0:
            raise DronsegError(f"source {spec}: {key}={value} must be a whole number above 0 (e.g. {CSI_EXAMPLE})")
        settings[key] = int(value)
    return (f"nvarguscamerasrc sensor-id={int(parts.netloc)} ! "
            f"video/x-raw(memory:NVMM),width={settings['width']},height={settings['height']},"
            f"framerate={settings['fps']}/1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
            f"video/x-raw,format=BGR ! {LIVE_APPSINK}")


def has_gstreamer() -> bool:
    """Whether this OpenCV can open GStreamer pipelines (built in, or as a loadable plugin)."""
    return bool(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER))


def require_gstreamer(source: str) -> None:
    """Raise BackendUnavailable (exit code 3, as for any optional runtime) naming the fix when this OpenCV has no
    GStreamer backend."""
    if has_gstreamer():
        return
    package = pip_opencv()
    origin = f"pip {package[0]} {package[1]}" if package else f"OpenCV {cv2.__version__}"
    remove = f", with `pip uninstall {package[0]}` so that JetPack's is the one imported" if package else ""
    raise BackendUnavailable(f"source {source!r} needs OpenCV's GStreamer backend, and this OpenCV ({origin}) has "
                             "no GStreamer: on a Jetson use JetPack's OpenCV (a venv made with --system-site-packages, "
                             f"dronseg-edge installed without the opencv extra{remove}: "
                             f"{docs_url('jetson.md', 'cameras-and-streams')}); "
                             "elsewhere an OpenCV built with -DWITH_GSTREAMER=ON")


def pip_opencv() -> tuple[str, str] | None:
    """(name, version) of the pip package that installed this cv2, or None (a system or source build)."""
    cv2_folder = Path(getattr(cv2, "__file__", "") or ".").resolve().parent
    for name in metadata.packages_distributions().get("cv2", []):
        dist = metadata.distribution(name)
        if Path(dist.locate_file("cv2")).resolve() == cv2_folder:  # installed, and the cv2 imported here
            return name, dist.version
    return None


class GStreamerSource(CaptureSource):
    """A GStreamer pipeline (or a CSI camera's, ``csi://N``) read through OpenCV's GStreamer backend.

    A camera or network pipeline is live and, when it stops, the same pipeline is reopened with
    back-off (as a stream is); a pipeline that reads a file (``filesrc ...``) is recorded: every frame,
    and its end is the run's end. OpenCV has no read timeout for GStreamer, so a pipeline that stalls
    without an error or end-of-stream holds the reader until ``--max-duration-s`` or Ctrl-C.
    """

    def __init__(self, pipeline: str, reconnect_s: float = 30.0, name: str | None = None, kind: str = "stream"):
        self.pipeline, self.kind = with_appsink(pipeline), kind
        self.is_file = self.ends = reads_file(self.pipeline)
        self.live_default = not self.is_file
        require_gstreamer(shown_url(name or pipeline))
        name = shown_url(name or self.pipeline)  # an rtspsrc location=rtsp://user:***@...
        # Quoted for a shell as NVIDIA's examples are: bash refuses the '(' of video/x-raw(memory:NVMM) bare.
        shell = " ".join(word if word == "!" else shlex.quote(word) for word in self.pipeline.rsplit(" ! appsink", 1)[0].split())
        cannot_open = (f"CSI camera {name} cannot be opened: check its ribbon cable and sensor id, that nvargus-daemon "
                       "runs (sudo systemctl restart nvargus-daemon) and that no other program holds it; try "
                       f"`gst-launch-1.0 {shell} ! fakesink`" if kind == "camera" else
                       f"GStreamer pipeline {name!r} cannot be opened: run it with `gst-launch-1.0 PIPELINE` (ending "
                       "in fakesink instead of appsink) to see GStreamer's error, and end it in BGR frames "
                       "(... ! videoconvert ! video/x-raw,format=BGR)")
        super().__init__(name, lambda: opened(cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)), reconnect_s,
                         cannot_open)
