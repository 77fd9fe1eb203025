"""Decoding speed of OpenCV against PyAV for H.264 and H.265 at 1080p and 4K, as drones record them.

    python benchmarks/decode.py                       # 1080p and 4K, H.264 and H.265, 5 repeats
    python benchmarks/decode.py --quick               # smoke run: 320x180, 10 frames, 1 repeat
    python benchmarks/decode.py --hw                  # also PyAV with NVDEC (h264_cuvid / hevc_cuvid) where present

Clips are made with PyAV (libx264 / libx265, 3 B-frames, constant quality) from a textured scene
panned a few pixels per frame, so the encoder finds real motion, with fresh sensor grain in every
frame, so the bitrate is near a drone's (tens of Mbit/s); they are cached in --work. Beside
the four size x codec clips, two 1080p H.264 clips check what the pipeline relies on:
``rotated`` (display-matrix rotation of 90 degrees, as phones and some drones write; made with the
ffmpeg command-line tool, skipped without it) and ``vfr`` (variable frame rate: frame durations of
1/30, 1/60 and 1/15 s in turn).

Each reader decodes every frame of a clip to a (H, W, 3) uint8 BGR array, as the pipeline needs it:
OpenCV ``VideoCapture(CAP_FFMPEG).read()``; PyAV ``decode()`` + ``to_ndarray(format="bgr24")``
with frame and slice threads (``thread_type="AUTO"``; PyAV's default, slice threads only, leaves
one core idle on x264's single-slice files, so it is measured too). Per clip and reader: median
over --repeats (run interleaved) of wall ms per frame and of process CPU ms per frame (all threads), plus whether
the frames came out rotated for display and whether the timestamps match the container's.

Writes benchmarks/results/decode-cpu[-nvdec]-<date>[-TAG].json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dronseg_edge.atomic import write_json_atomic  # noqa: E402
from dronseg_edge.errors import DronsegError  # noqa: E402
from dronseg_edge.sizes import parse_size  # noqa: E402

SIZES = {"1080p": (1920, 1080), "4k": (3840, 2160)}
# Quality high enough to keep the grain, as drone cameras do: ~50 Mbit/s at 1080p for H.264.
ENCODERS = {"h264": ("libx264", {"preset": "veryfast", "crf": "18", "x264-params": "bframes=3"}),
            "hevc": ("libx265", {"preset": "veryfast", "crf": "20", "x265-params": "bframes=3:log-level=error"})}
VFR_TICKS = (3000, 1500, 6000)  # frame durations in 1/90000 s: 1/30, 1/60, 1/15
ROTATION = 90  # degrees counter-clockwise, as FFmpeg's display matrix reads
GRAIN_SIGMA = 4.0  # grey levels
# cv2.rotate for PyAV's frames too: np.rot90 + a copy took 3x as long at 1080p.
ROTATE_CCW = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1080p,4k", help=f"comma-separated, of {', '.join(SIZES)} or WxH")
    parser.add_argument("--codecs", default="h264,hevc")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hw", action="store_true", help="also PyAV with NVIDIA's hardware decoders")
    parser.add_argument("--quick", action="store_true", help="smoke run: 320x180, 10 frames, 1 repeat")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/work/decode", help="cached clips")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.frames, args.repeats = "320x180", 10, 1
    unknown = [codec for codec in args.codecs.split(",") if codec not in ENCODERS]
    if unknown:
        parser.error(f"--codecs {','.join(unknown)}: choose from {', '.join(ENCODERS)}")
    try:
        parse_sizes(args.sizes)
    except DronsegError as exc:
        parser.error(str(exc))
    return args


def parse_sizes(text: str) -> dict[str, tuple[int, int]]:
    return {name: SIZES.get(name) or parse_size(name, "--sizes") for name in text.split(",")}


# ---------------------------------------------------------------- clips


def texture(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A (H, W, 3) uint8 scene twice the clip's width: noise at several scales plus hard-edged blocks,
    roughly the detail of aerial footage (fields, roads, roofs)."""
    width, height = size
    rng = np.random.default_rng(seed)
    big = np.zeros((height, 2 * width, 3), np.float32)
    for cells, weight in ((8, 90.0), (40, 50.0), (200, 25.0), (height // 2, 12.0)):
        small = rng.random((max(cells * height // (2 * width), 2), cells, 3), dtype=np.float32)
        big += weight * cv2.resize(small, (2 * width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(60):
        x, y = int(rng.integers(0, 2 * width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 40, width // 8)), int(rng.integers(height // 40, height // 8))
        cv2.rectangle(big, (x, y), (x + w, y + h), [float(v) for v in rng.integers(0, 255, 3)], -1)
    return np.clip(big, 0, 255).astype(np.uint8)


def write_clip(path: Path, size: tuple[int, int], frames: int, codec: str, vfr: bool = False) -> None:
    import av

    encoder, options = ENCODERS[codec]
    scene = texture(size)
    width = size[0]
    # Sensor grain, new in every frame as a camera's is: without it (or at crf 23) the pan
    # compresses to ~2 Mbit/s at 1080p, far below what drones record, and decoding, whose cost
    # grows with the bitrate, would be unrealistically cheap.
    rng = np.random.default_rng(1)
    grain = [rng.normal(0, GRAIN_SIGMA, (size[1], width, 1)).astype(np.int16) for _ in range(5)]
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(encoder, rate=30, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if vfr:
            stream.codec_context.time_base = Fraction(1, 90000)
        pts = 0
        for index in range(frames):
            x = (index * 7) % width  # 7 px per frame: ~200 px/s at 30 fps, a slow drone pan
            noisy = np.roll(grain[index % len(grain)], index * 13, axis=0) + scene[:, x:x + width]
            image = np.clip(noisy, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            if vfr:
                frame.pts, frame.time_base = pts, Fraction(1, 90000)
                pts += VFR_TICKS[index % len(VFR_TICKS)]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    os.replace(tmp, path)


def rotate_clip(source: Path, path: Path) -> str | None:
    """Copy ``source`` with a 90-degree display rotation; None when done, else why not."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "no ffmpeg command-line tool (apt-get install ffmpeg)"
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    # FFmpeg 6+ sets the display matrix with -display_rotation; 5.x with the rotate tag, which 6+
    # ignores. Both as counter-clockwise degrees here (checked: ffprobe reads rotation=90 back).
    attempts = ([ffmpeg, "-y", "-loglevel", "error", "-display_rotation", str(ROTATION), "-i", str(source),
                 "-c", "copy", str(tmp)],
                [ffmpeg, "-y", "-loglevel", "error", "-i", str(source), "-c", "copy",
                 "-metadata:s:v:0", f"rotate={ROTATION}", str(tmp)])
    for command in attempts:
        if subprocess.run(command, capture_output=True).returncode == 0:
            os.replace(tmp, path)
            return None
    return "ffmpeg could not set a rotation"


def make_clips(args, sizes) -> tuple[dict[str, Path], dict[str, str]]:
    args.work.mkdir(parents=True, exist_ok=True)
    clips, skipped = {}, {}
    for size_name, size in sizes.items():
        for codec in args.codecs.split(","):
            path = args.work / f"{codec}-{size_name}-{args.frames}.mp4"
            if not path.exists():
                write_clip(path, size, args.frames, codec)
            clips[f"{codec} {size_name}"] = path
    first = next(iter(sizes))
    base = clips.get(f"h264 {first}")
    if base is not None:
        vfr = args.work / f"h264-{first}-{args.frames}-vfr.mp4"
        if not vfr.exists():
            write_clip(vfr, sizes[first], args.frames, "h264", vfr=True)
        clips[f"h264 {first} vfr"] = vfr
        rotated = args.work / f"h264-{first}-{args.frames}-rot{ROTATION}.mp4"
        why = None if rotated.exists() else rotate_clip(base, rotated)
        if why:
            skipped[f"h264 {first} rotated"] = why
        else:
            clips[f"h264 {first} rotated"] = rotated
    return clips, skipped


def container_facts(path: Path) -> dict:
    """What the container says, read with PyAV: codec, size, frames, B-frames, timestamps, rotation."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        b_frames, times, rotation = 0, [], 0
        for frame in container.decode(stream):
            b_frames += int(frame.pict_type) == 3  # AV_PICTURE_TYPE_B (PyAV 18 returns the plain number)
            times.append(float(frame.time))
            rotation = frame.rotation
        seconds = (times[-1] - times[0]) * len(times) / (len(times) - 1) if len(times) > 1 else None
        return {"codec": stream.codec_context.name, "size": [stream.codec_context.width, stream.codec_context.height],
                "frames": len(times), "b_frames": b_frames, "timestamps_s": times,
                "rotation_ccw": rotation, "average_rate": str(stream.average_rate), "bytes": path.stat().st_size,
                "mbit_per_s": round(path.stat().st_size * 8e-6 / seconds, 1) if seconds else None}


# ---------------------------------------------------------------- readers


def read_opencv(path: Path) -> tuple[list[np.ndarray], list[float]]:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames, times = [], []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
        times.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1e3)
    capture.release()
    return frames, times


def read_pyav(path: Path, thread_type: str | None = "AUTO", hwaccel=None) -> tuple[list[np.ndarray], list[float]]:
    import av

    frames, times = [], []
    with av.open(str(path), hwaccel=hwaccel) if hwaccel else av.open(str(path)) as container:
        stream = container.streams.video[0]
        if thread_type:
            stream.thread_type = thread_type
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="bgr24")
            if frame.rotation:  # PyAV leaves the display matrix to the caller
                image = cv2.rotate(image, ROTATE_CCW[round(frame.rotation / 90) % 4 * 90])
            frames.append(image)
            times.append(float(frame.time))
    return frames, times


def readers(hw: bool) -> dict:
    found = {"opencv": read_opencv, "pyav": read_pyav,
             "pyav (slice threads, its default)": lambda path: read_pyav(path, thread_type=None)}
    if hw:
        found["pyav nvdec"] = lambda path: read_pyav(path, hwaccel=nvdec())
    return found


def nvdec():
    from av.codec.hwaccel import HWAccel

    return HWAccel(device_type="cuda", allow_software_fallback=False)


def measure(all_readers: dict, path: Path, repeats: int) -> dict[str, dict]:
    """Each reader ``repeats`` times, interleaved (a, b, c, a, b, c, ...), so that load from other
    work on a shared machine falls on every reader alike."""
    runs: dict[str, dict] = {name: {"walls": [], "cpus": []} for name in all_readers}
    for repeat in range(repeats):
        for name, read in all_readers.items():
            run = runs[name]
            if "error" in run:
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                frames, times = read(path)
            except Exception as exc:  # e.g. no NVDEC on this machine
                run["error"] = f"{type(exc).__name__}: {exc}"
                continue
            count = max(len(frames), 1)
            run["walls"].append((time.perf_counter() - wall) * 1e3 / count)
            run["cpus"].append((time.process_time() - cpu) * 1e3 / count)
            run.update(frames=len(frames), frame_shape=list(frames[0].shape) if frames else None,
                       timestamps_s=times, first_frame=frames[0] if frames else None)
    results = {}
    for name, run in runs.items():
        if "error" in run:
            results[name] = {"error": run["error"]}
            continue
        results[name] = {"wall_ms_per_frame": round(statistics.median(run["walls"]), 3),
                         "cpu_ms_per_frame": round(statistics.median(run["cpus"]), 3),
                         "wall_ms_runs": [round(v, 3) for v in run["walls"]],
                         **{key: run[key] for key in ("frames", "frame_shape", "timestamps_s", "first_frame")}}
    return results


def check(result: dict, facts: dict, reference: np.ndarray | None) -> dict:
    """Rotation honoured (shape and picture against the rotated reference) and container timestamps."""
    expected = np.asarray(facts["timestamps_s"])
    got = np.asarray(result["timestamps_s"])
    checks = {"timestamps_match_container": bool(len(got) == len(expected) and np.allclose(got, expected, atol=2e-3))}
    if facts["rotation_ccw"] and reference is not None:
        want = np.rot90(reference, k=round(facts["rotation_ccw"] / 90) % 4)
        first = result["first_frame"]
        checks["rotation_applied"] = bool(first is not None and first.shape == want.shape
                                          and np.abs(first.astype(int) - want).mean() < 2)
    return checks


# ---------------------------------------------------------------- run


def versions() -> dict:
    import av

    return {"python": platform.python_version(), "opencv": cv2.__version__, "pyav": av.__version__,
            "pyav_ffmpeg": ".".join(map(str, av.library_versions["libavcodec"])),
            "opencv_ffmpeg": _opencv_avcodec(), "numpy": np.__version__}


def _opencv_avcodec() -> str:
    for line in cv2.getBuildInformation().splitlines():
        if "avcodec:" in line:
            return line.split("YES", 1)[-1].strip(" ()")
    return "?"


def cpu_description(load_start: list[float] | None) -> dict:
    from dronseg_edge.bench.system import cpu_model, load_average

    return {"model": cpu_model(), "logical_cores": os.cpu_count(), "opencv_threads": cv2.getNumThreads(),
            "load_average_start": load_start, "load_average": load_average()}


def run(args) -> dict:
    from dronseg_edge.bench.system import load_average

    load_start = load_average()  # before the clips and reads: the one at the end counts this run's own threads
    sizes = parse_sizes(args.sizes)
    clips, skipped = make_clips(args, sizes)
    all_readers = readers(args.hw)
    rows = []
    for clip, path in clips.items():
        facts = container_facts(path)
        reference = None
        if facts["rotation_ccw"]:  # the unrotated picture, from the clip it was copied from
            reference = read_pyav(args.work / path.name.replace(f"-rot{ROTATION}", ""))[0][0]
        for reader_name, result in measure(all_readers, path, args.repeats).items():
            if "error" not in result:
                result.update(check(result, facts, reference))
                result.pop("first_frame")
                result.pop("timestamps_s")
                print(f"{clip:>22} {reader_name:>36}: {result['wall_ms_per_frame']:8.2f} ms/frame wall, "
                      f"{result['cpu_ms_per_frame']:8.2f} ms CPU", flush=True)
            rows.append({"clip": clip, "reader": reader_name, **result})
        facts["timestamps_s"] = [round(t, 6) for t in facts["timestamps_s"][:8]]
        rows.append({"clip": clip, "container": facts})
    return {"benchmark": "decode", "date": date.today().isoformat(), "device": "cpu", "cpu": cpu_description(load_start),
            "versions": versions(), "settings": {"frames": args.frames, "repeats": args.repeats, "sizes": sizes,
                                                 "encoders": ENCODERS, "vfr_ticks_90khz": VFR_TICKS,
                                                 "rotation_ccw": ROTATION},
            "skipped": skipped, "results": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    document = run(args)
    device = "cpu-nvdec" if args.hw else "cpu"
    name = f"decode-{device}-{document['date']}{'-' + args.tag if args.tag else ''}.json"
    path = write_json_atomic(args.out / name, document)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
