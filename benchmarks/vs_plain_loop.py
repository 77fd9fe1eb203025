"""`dronseg-edge infer` against the plain OpenCV + ONNX Runtime loop a user would write (plain_loop.py).

The edge-inference issue's targets, on the 2-core development machine, an ONNX model at 320x192 or
smaller and a 300-frame 1280x720 H.264 clip: `infer` reaches at least 1.3x the loop's throughput
(whole process, start-up included), with peak memory at most 2x the loop's, and a 1-frame clip
finishes within 1.0 s of the loop's time. Both are run as separate processes, alternately, the
same number of times (this machine is shared and noisy: medians are reported); peak memory is
each process's maximum resident set (``wait4``). Both do the same work: decode, resize, run,
argmax, resize back, colour, blend, write an mp4v overlay video (infer also writes stats.jsonl
and summary.json). Per-stage times come from the loop's own clock and from infer's summary.json.

    python benchmarks/pipeline.py --vs-plain-loop            # 320x192 LR-ASPP, 300 frames, 3 repeats
    python benchmarks/pipeline.py --vs-plain-loop --size 160x96 --repeats 5
    python benchmarks/pipeline.py --vs-plain-loop --baseline ../before   # also infer of another checkout

``--baseline DIR`` runs ``infer`` of another checkout of the package (a git worktree of the commit
before a change) in the same alternation, so a change is measured before/after on one machine at once.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
TARGETS = {"throughput_ratio_min": 1.3, "peak_memory_ratio_max": 2.0, "one_frame_extra_s_max": 1.0}


def h264_clip(source: Path, path: Path, frames: int | None = None) -> Path:
    """``source`` (the rendered drone flight) re-encoded as H.264 yuv420p with PyAV's libx264; cached by name."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    import av
    import cv2

    capture = cv2.VideoCapture(str(source))
    fps = round(capture.get(cv2.CAP_PROP_FPS) or 30)
    # A name of its own: another run sharing this --work folder may be making the same clip right now.
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.mp4", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    written = 0
    with av.open(str(tmp), "w") as container:
        stream = None
        while frames is None or written < frames:
            ok, image = capture.read()
            if not ok:
                break
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
            written += 1
        for packet in stream.encode():
            container.mux(packet)
    capture.release()
    tmp.replace(path)
    return path


# The child's peak memory is measured by a small parent: on Linux a child inherits its parent's
# maximum resident set at fork (exec does not reset it), so timing from this process, which has
# imported torch to make the model, would report at least this process's size for both commands.
_MEASURE = ("import resource, subprocess, sys\n"
            "code = subprocess.call(sys.argv[1:])\n"
            "print('peak_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(code)\n")


def _run(cmd: list[str], package: Path = HERE.parent) -> dict:
    """Run ``cmd`` with the checkout ``package`` first on the path; wall seconds, peak RSS (MiB) and its stdout."""
    start = time.perf_counter()
    # Run in the checkout: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH,
    # so from another checkout's root it would import that one's package instead. Bytecode caching as
    # Python's default has it (a user's machine keeps .pyc files; a sandbox that sets
    # PYTHONDONTWRITEBYTECODE would compile every module of the package at each start).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True,
                          cwd=package, env={**env, "PYTHONPATH": str(package)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in reversed(proc.stderr.splitlines()) if line.startswith("peak_kib"))
    return {"seconds": wall, "peak_mib": peak / 1024, "stdout": proc.stdout}


def _infer_cmd(model: Path, video: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "dronseg_edge", "infer", str(model.resolve()), str(video.resolve()),
            "--out", str(out.resolve()), "--device", "cpu", "--codec", "mp4v", "--no-progress"]


def _plain_cmd(model: Path, video: Path, out: Path) -> list[str]:
    return [sys.executable, str(HERE / "plain_loop.py"), str(model.resolve()), str(video.resolve()),
            str((out / "plain.mp4").resolve())]


def compare(model: Path, video: Path, one_frame: Path, repeats: int, baseline: Path | None = None) -> dict:
    """Run infer and the plain loop alternately ``repeats`` times on ``video`` and on ``one_frame``
    (and infer of the ``baseline`` checkout, when given, as ``infer_before``)."""
    sides = [("plain", _plain_cmd, HERE.parent), ("infer", _infer_cmd, HERE.parent)]
    if baseline is not None:
        sides.append(("infer_before", _infer_cmd, Path(baseline).resolve()))
    runs = {key: [] for name, _, _ in sides for key in (name, name + "_1")}
    stages = {name: None for name, _, _ in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make, package in sides:  # untimed: bytecode caches written, the files in the page cache
            out = Path(tmp) / f"warm-{name}"
            out.mkdir()
            _run(make(model, one_frame, out / "run" if name != "plain" else out), package)
        for i in range(repeats):
            for name, make, package in sides:
                for clip, key in ((video, name), (one_frame, name + "_1")):
                    out = Path(tmp) / f"{key}-{i}"
                    out.mkdir()
                    is_infer = name != "plain"
                    result = _run(make(model, clip, out / "run" if is_infer else out), package)
                    runs[key].append(result)
                    if clip == video and i == repeats - 1:
                        stages[name] = (json.loads((out / "run" / "summary.json").read_text())["stage_ms"]
                                        if is_infer else json.loads(result["stdout"].splitlines()[-1])["ms_per_frame"])
    med = {key: {"seconds": statistics.median(r["seconds"] for r in rs), "peak_mib": statistics.median(r["peak_mib"] for r in rs)}
           for key, rs in runs.items()}
    ratio = med["plain"]["seconds"] / med["infer"]["seconds"]
    before = {"throughput_ratio": round(med["plain"]["seconds"] / med["infer_before"]["seconds"], 3),
              "peak_memory_ratio": round(med["infer_before"]["peak_mib"] / med["plain"]["peak_mib"], 3),
              "package": str(Path(baseline).resolve())} if baseline is not None else None
    memory = med["infer"]["peak_mib"] / med["plain"]["peak_mib"]
    extra = med["infer_1"]["seconds"] - med["plain_1"]["seconds"]
    return {
        "medians": {k: {m: round(v, 3) for m, v in d.items()} for k, d in med.items()},
        "all_seconds": {k: [round(r["seconds"], 3) for r in rs] for k, rs in runs.items()},
        "stage_ms_per_frame": stages,
        "throughput_ratio": round(ratio, 3),
        "peak_memory_ratio": round(memory, 3),
        "one_frame_extra_s": round(extra, 3),
        "baseline": before,
        "targets": TARGETS,
        "met": {"throughput": ratio >= TARGETS["throughput_ratio_min"], "memory": memory <= TARGETS["peak_memory_ratio_max"],
                "one_frame": extra <= TARGETS["one_frame_extra_s_max"]},
    }


def thread_counts() -> dict:
    """What each side runs on: the machine's cores decide (stated in the results)."""
    cores = os.cpu_count() or 1
    return {"cores": cores,
            "plain_loop": {"decoder": "OpenCV's FFmpeg default", "onnxruntime_intra_op": "onnxruntime default (one per core)",
                           "writer": "same thread"},
            "infer": {"decoder": "1 reader thread (OpenCV's FFmpeg inside)", "onnxruntime_intra_op": f"{max(1, cores // 2)} "
                      "a call (infer's streaming Segmenter: each call in flight its share of the cores; a baseline before 1ba8445: "
                      "onnxruntime default, one per core), spinning off", "frames_in_flight": "2 (Backend.concurrent_calls of a CPU session)",
                      "writer": "1 thread per output (overlay video, stats)"},
            "python_bytecode_cache": "on for both sides (PYTHONDONTWRITEBYTECODE unset), written by an untimed first run"}


def table(doc: dict) -> str:
    med, stages = doc["medians"], doc["stage_ms_per_frame"]
    before = "infer_before" in med
    head = "| | plain loop | dronseg-edge infer | ratio |" + (" infer, baseline | ratio |" if before else "")
    lines = [head, "|---|---|---|---|" + ("---|---|" if before else "")]

    def row(label: str, key: str, metric: str, fmt: str, ratio: str, ratio_before: str = "") -> None:
        line = f"| {label} | {med['plain' + key][metric]:{fmt}} | {med['infer' + key][metric]:{fmt}} | {ratio} |"
        if before:
            line += f" {med['infer_before' + key][metric]:{fmt}} | {ratio_before} |"
        lines.append(line)

    base = doc.get("baseline") or {}
    row(f"whole process, {doc['video']['frames']} frames (s)", "", "seconds", ".2f",
        f"{doc['throughput_ratio']:.3f}x throughput", f"{base.get('throughput_ratio', 0):.3f}x throughput")
    row("peak memory (MiB)", "", "peak_mib", ".0f", f"{doc['peak_memory_ratio']:.2f}x", f"{base.get('peak_memory_ratio', 0):.2f}x")
    row("1-frame clip (s)", "_1", "seconds", ".2f", f"+{doc['one_frame_extra_s']:.2f} s")
    for stage in ("decode", "preprocess", "inference", "postprocess", "write"):
        values = [(stages.get(name) or {}).get(stage) for name in ("plain", "infer", "infer_before")]
        if values[0] is not None and values[1] is not None:
            line = f"| {stage} (ms/frame, own clock) | {values[0]:.2f} | {values[1]:.2f} | |"
            lines.append(line + (f" {values[2]:.2f} | |" if before and values[2] is not None else (" | |" if before else "")))
    return "\n".join(lines)
