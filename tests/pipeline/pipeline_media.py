"""Media for the pipeline tests, made with numpy + OpenCV (mp4v works in every OpenCV wheel)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from testkit import scene, scene_mask  # noqa: F401  (shared with the trained model's data set)


def write_video(path: Path, frames: int = 24, size: tuple[int, int] = (128, 80), fps: float = 30.0,
                fourcc: str = "mp4v", noise: bool = False) -> Path:
    """``noise``: grain on every frame, so the file is large (a decoder cannot hold all of it at once)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"test setup: cannot write {path} with {fourcc}"
    rng = np.random.default_rng(0)
    for index in range(frames):
        frame = scene(index, size)
        if noise:
            frame = np.clip(frame.astype(np.int16) + rng.integers(-40, 40, frame.shape), 0, 255).astype(np.uint8)
        writer.write(frame)
    writer.release()
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    """All frames of a video, its fps and (W, H), read back with OpenCV."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps, size


def mp4_top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4 file's top-level boxes, in file order (ftyp, moov, mdat, ...)."""
    data = Path(path).read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = int.from_bytes(data[offset:offset + 4], "big"), data[offset + 4:offset + 8].decode("latin-1")
        if size == 1:  # a 64-bit size follows the type
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        elif size == 0:  # the box runs to the end of the file
            size = len(data) - offset
        assert size >= 8, f"{path}: broken box {kind!r} at {offset}"
        boxes.append(kind)
        offset += size
    return boxes


def probe_with_pyav(path: Path) -> dict:
    """Codec, pixel format, size, rate, codec tag and decoded frames of a video's first stream, read with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]
        context = stream.codec_context
        return {"codec": context.name, "pix_fmt": context.pix_fmt, "size": (context.width, context.height),
                "rate": stream.average_rate, "tag": context.codec_tag, "frames": frames}


def write_vfr_video(path: Path, ticks: tuple[int, ...], frames: int = 12,
                    size: tuple[int, int] = (96, 64)) -> list[float]:
    """An H.264 clip whose frame durations cycle through ``ticks`` (1/90000 s each), written with
    PyAV (OpenCV writes constant rates only); returns each frame's presentation time in seconds."""
    from fractions import Fraction

    import av

    times, pts = [], 0
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 90000)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(scene(index, size), format="bgr24")
            frame.pts, frame.time_base = pts, Fraction(1, 90000)
            times.append(pts / 90000)
            pts += ticks[index % len(ticks)]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return times


def write_clip_with_longer_audio(path: Path, frames: int = 30, audio_s: float = 3.0, fps: int = 25,
                                 options: dict | None = None, cut: int = 0) -> Path:
    """An H.264 clip of ``frames`` frames with an AAC track of ``audio_s`` seconds that outlasts it, as
    recordings often have, in the container ``path``'s suffix names (muxer ``options``: e.g. fragments).
    ``cut``: that many of the frames come before the clip's start, as in a clip cut without re-encoding
    (``ffmpeg -ss T -i IN -c copy OUT``): stored, and hidden by an MP4's edit list."""
    import av

    with av.open(str(path), "w", options=options or {}) as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(scene(index, (96, 64)), format="bgr24")
            frame.pts = index - cut
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, int(audio_s * 16000), 1024):
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 16000, start
            container.mux(audio.encode(sound))
        container.mux(audio.encode(None))
    return Path(path)


def rotate_video(source: Path, path: Path, degrees: int) -> Path:
    """Copy ``source`` with a display rotation (counter-clockwise degrees), using the ffmpeg tool."""
    import shutil
    import subprocess

    ffmpeg = shutil.which("ffmpeg")
    # FFmpeg 6+ takes -display_rotation; 5.x the rotate tag, which 6+ ignores.
    for command in ([ffmpeg, "-y", "-loglevel", "error", "-display_rotation", str(degrees), "-i", str(source),
                     "-c", "copy", str(path)],
                    [ffmpeg, "-y", "-loglevel", "error", "-i", str(source), "-c", "copy",
                     "-metadata:s:v:0", f"rotate={degrees}", str(path)]):
        if subprocess.run(command, capture_output=True).returncode == 0:
            return path
    raise AssertionError(f"test setup: ffmpeg cannot set a rotation on {source}")


def write_ts_with_size_change(path: Path, sizes: tuple[tuple[int, int], ...] = ((96, 64), (128, 72)),
                              frames: int = 6, fps: int = 30, m2ts: bool = False, first: int = 0) -> Path:
    """An H.264 MPEG-TS whose frame size changes mid-way (``frames`` frames at each of ``sizes``), as a
    recorded live feed is when its camera switches modes; timestamps run on across the change. Each
    part is a TS of its own (one encoder, one size) and TS files join by concatenation. ``m2ts``: 192-byte
    packets, each after a 4-byte timestamp, as AVCHD cameras and Blu-ray write them; ``first``: the first pts."""
    import io

    import av

    data = b""
    for width, height in sizes:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mpegts", options={"mpegts_m2ts_mode": "1"} if m2ts else {}) as container:
            stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for index in range(first, first + frames):
                frame = av.VideoFrame.from_ndarray(scene(index, (width, height)), format="bgr24")
                frame.pts = index
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        data += buffer.getvalue()
        first += frames
    Path(path).write_bytes(data)
    return Path(path)


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """(type, offset, size) of the MP4 boxes in ``data[start:end]``; a last box cut short keeps its declared size."""
    end = len(data) if end is None else end
    boxes, offset = [], start
    while offset + 8 <= end:
        size, kind = int.from_bytes(data[offset:offset + 4], "big"), data[offset + 4:offset + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        elif size == 0:
            size = end - offset
        if size < 8:
            break
        boxes.append((kind, offset, size))
        offset += size
    return boxes


def fragment_frames(path: Path) -> int:
    """Frames held by the complete fragments of a fragmented MP4 (a moof whose mdat is all there), read
    from each fragment's own index (moof > traf > trun sample counts): what a player can show of it."""
    data = Path(path).read_bytes()
    top = _boxes(data)
    frames = 0
    for (kind, offset, size), following in zip(top, top[1:]):
        complete = following[0] == "mdat" and following[1] + following[2] <= len(data)
        if kind != "moof" or not complete:
            continue
        for traf in (b for b in _boxes(data, offset + 8, offset + size) if b[0] == "traf"):
            for trun in (b for b in _boxes(data, traf[1] + 8, traf[1] + traf[2]) if b[0] == "trun"):
                frames += int.from_bytes(data[trun[1] + 12:trun[1] + 16], "big")  # after version and flags
    return frames


def decode_without_errors(path: Path) -> list[float]:
    """Every frame's time (s) of ``path``, decoded by PyAV (which raises on damaged data); where the
    ffmpeg tool is installed, ``ffmpeg -v error -i PATH -f null -`` must also decode it without a word."""
    import shutil
    import subprocess

    import av

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        done = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and done.stderr == "", f"ffmpeg on {path}: {done.stderr[-2000:]}"
    with av.open(str(path)) as container:
        return [float(frame.time) for frame in container.decode(container.streams.video[0])]
