"""The infer pipeline: decode (a thread) -> segment (this thread) -> write (one thread per sink).

Bounded queues between the stages let the slowest stage set the pace while memory stays flat.
Ctrl-C (or SIGTERM, SIGHUP) stops decoding, everything already segmented is written, the video is
finalised, and ``summary.json`` records the run; the outputs are then complete up to the last
frame. Per-stage times end in an Ultralytics-style ``Speed:`` line.

Every way a run ends is recorded in ``summary.json`` (``stopped``, ``source_end``, ``error``) and
maps to one exit code (docs/reliability.md): a failure a restart may cure (a full or read-only disk,
a stream lost beyond ``--reconnect-s``, the backend failing mid-run) is a RuntimeFailure raised once
the outputs are final. Recording is bounded by ``--max-duration-s``, ``--segment-s`` and a free-disk
floor (``--min-free-mb``, :mod:`~dronseg_edge.pipeline.disk_space`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from dronseg_edge.atomic import ensure_writable_dir, write_json_atomic
from dronseg_edge.errors import BackendFailure, DronsegError, Interrupted, RuntimeFailure
from dronseg_edge.leftovers import FolderClaim
from dronseg_edge.pictures import bgr_lut
from dronseg_edge.pipeline.disk_space import DiskFloor, SpaceReserve
from dronseg_edge.pipeline.interrupts import InterruptGuard, interrupts_deferred
from dronseg_edge.pipeline.live_outputs import build_live_sinks, check_results_target, open_preview
from dronseg_edge.pipeline.overlay import OverlayPlan
from dronseg_edge.pipeline.reader import FrameReader
from dronseg_edge.pipeline.run_state import RunOptions, RunState, RunSummary
from dronseg_edge.pipeline.segmenter import Segmenter
from dronseg_edge.pipeline.sink_worker import SinkWorker
from dronseg_edge.pipeline.sinks import (ColorMaskSink, ConfidenceSink, ContactSheetSink, MaskSink, OverlayImageSink, Sink,
                                         StatsSink)
from dronseg_edge.pipeline.source_spec import open_source
from dronseg_edge.pipeline.sources import Source
from dronseg_edge.pipeline.video_sink import VideoSink
from dronseg_edge.pipeline.video_writer import encoders_for
from dronseg_edge.runs import next_run_dir

log = logging.getLogger(__name__)

WRITE_STOPS = ("disk_full", "unwritable", "write_failed")
# After a stop signal (or a camera's or stream's --max-duration-s), a sink stuck this long in one write (a pipe whose
# reader stopped reading) is left behind: docker stop sends SIGKILL 10 s after SIGTERM.
INTERRUPT_PATIENCE_S = 3.0
WINDOW = "dronseg-edge"


def run_inference(segmenter: Segmenter, source: str | Path | int | Source, options: RunOptions | None = None) -> RunSummary:
    """Segment every frame of ``source`` and write the outputs of ``options`` to a new run folder.

    ``source``: an opened Source (the CLI opens it before loading the model, so a mistyped source
    fails at once) or anything :func:`open_source` takes; the run closes it. Raises DronsegError for
    bad input (before anything is written where possible) and, once the outputs and summary.json are
    final, a RuntimeFailure for a lost stream, a failed write or a backend failing mid-run, and
    errors.Interrupted (a KeyboardInterrupt holding the RunSummary) for a stop signal.
    ``options.max_duration`` counts seconds of the source (``RunState.source_seconds``; a camera's or
    stream's also by a timer, so a stalled stream cannot hold the run past it).
    """
    options = options or RunOptions()
    src = open_source(source, options.reconnect_s, max_pixels=options.max_pixels)
    request, live, out_dir, claim, reserve, plan, sinks = _prepare(segmenter, src, options)
    guard = InterruptGuard()
    with guard.held():  # the run folder exists: a stop signal now stops the run at its start, summary.json written
        workers = [SinkWorker(sink, options.queue_size) for sink in sinks]
        active = list(workers)  # the workers still given frames (the disk floor stops the heavy ones)
        reader = FrameReader(src, live=live, stride=options.stride, queue_size=options.queue_size)
        bar = _progress_bar(src, live, options)
        state = RunState(out_dir, options, live, classes=request.classes)
        floor = DiskFloor(out_dir, options.min_free_mb)
        results = segmenter.stream(reader, max_frames=options.max_frames, confidence=request.confidence,
                                   classes=request.classes)
        deadline = _live_deadline(src, reader, options, state)
    try:
        with guard, _core_left_for_io(segmenter):
            for result in results:
                if options.max_duration is not None and state.source_seconds(result) >= options.max_duration:
                    state.stopped = "max_duration"
                    break
                state.mark_seen(result)
                active = _check_floor(active, state, floor)
                with guard.critical():  # every sink gets the frame, or none does (unless a stop signal came, or the
                    for worker in active:  # live deadline to a sink stuck in a write: a --results reader that stalled)
                        worker.put(result, stop=lambda: guard.signal_name is not None or (
                            state.stopped is not None and worker.stuck(INTERRUPT_PATIENCE_S)))
                    state.add(result)
                bar.update(1)
                if options.show and _show(plan.image(result)):
                    state.stopped_by_key = True
                    break
    except KeyboardInterrupt:
        state.interrupted, state.interrupted_by = True, guard.signal_name
    except BackendFailure as exc:
        state.error = _backend_failure(exc, state.frames)
        if state.error is None:  # before any frame and not out of memory: more likely a bug, which keeps its traceback
            state.bug = _bug_text(exc.cause)
            raise exc.cause from None
    except DronsegError as exc:
        state.error = exc
    except Exception as exc:  # a bug: summary.json says so, the outputs are still finalised below, then the traceback
        state.bug = _bug_text(exc)
        raise
    finally:
        with interrupts_deferred():
            if deadline is not None:
                deadline.set()
            results.close()
            reader.stop()
            reserve.release()  # its room now lets the video's index and summary.json be written
            _mark_timeline_end(sinks, src, state)
            bug = _close_workers(workers, state, timed=deadline is not None)
            if bug is not None:
                state.bug = state.bug or _bug_text(bug)
            state.stop_clock()
            src.close()
            bar.close()
            if options.show:
                cv2.destroyAllWindows()
            summary, summary_error = _write_summary(out_dir, state.summary(segmenter, src, reader, sinks).to_dict())
            if claim is not None:
                claim.release()
        if bug is not None:
            raise bug
    if summary_error is not None:
        raise _without_summary(state, summary_error)
    if state.error is not None or state.interrupted:
        raise state.error or Interrupted(summary)
    return summary


def _prepare(segmenter: Segmenter, src: Source, options: RunOptions) -> tuple:
    """Everything checked and made before the first frame: (frame request, live, run folder, its claim, space
    reserve, overlay plan, sinks). What cannot work fails here, before the run folder where it can;
    on any failure the reserve is handed back and the source closed."""
    with contextlib.ExitStack() as undo:  # unwound only on a failure: pop_all() below keeps everything
        undo.callback(src.close)
        # What the model cannot give (--save-conf without logits, an unknown --classes name) fails first.
        chosen = {} if options.classes is None else {"classes": options.classes}  # else the Segmenter's own
        request = segmenter.request(confidence=options.save_conf, **chosen)
        live = src.live_default if options.live is None else bool(options.live)
        if live and src.kind == "images":  # every image is the user's: --live dropped those read during a segmentation
            raise DronsegError(f"--live drops the images read while one is segmented: leave it out for {src.name}")
        for flag, given in (("--segment-s", options.segment_s is not None), ("--codec", options.codec != "auto")):
            if given and src.kind == "images":  # images get overlay/ JPEGs: no video to cut or encode
                raise DronsegError(f"{flag} applies to a video's overlay.mp4; images get overlay/ JPEGs: leave it out "
                                   f"for {src.name}")
        segmenter.check_live(live)
        width, height = src.size or (0, 0)
        if segmenter.info.io == "frames" and width > 0:  # a static frames graph made for another size fails now
            segmenter.backend.check_input(np.empty((segmenter.info.batch or 1, height, width, 3), np.uint8))
        if options.show:
            _open_window()
        if options.save_video and src.kind != "images":
            encoders_for(options.codec)  # a --codec this machine cannot write fails before the run folder exists
        check_results_target(options)
        preview = open_preview(options)  # a port in use fails before the run folder too
        if preview is not None:
            undo.callback(preview.close)
        made = options.out is None or not Path(options.out).exists()
        out_dir, claim = _prepare_out_dir(options)
        if claim is not None:
            undo.callback(claim.release)
        undo.callback(_discard_run_dir, out_dir, made)
        reserve = undo.enter_context(SpaceReserve(out_dir))
        lut = bgr_lut(segmenter.info.palette)
        with_legend = options.legend if options.legend is not None else src.kind != "images"
        legend = tuple(segmenter.info.class_names) if with_legend else None
        plan = options.overlay_plan(lut, legend)
        sinks = _build_sinks(src, out_dir, options, lut, plan)
        undo.callback(_close_unused, sinks)
        sinks += build_live_sinks(src, out_dir, options, lut, plan, legend, preview)
        if claim is not None and any(path != claim.lock for path in out_dir.iterdir()):
            claim.release()  # the run's own files now keep other runs out (a kill leaves no lock file then)
        undo.pop_all()
    return request, live, out_dir, claim, reserve, plan, sinks


def _write_summary(out_dir: Path, data: dict) -> tuple[RunSummary, DronsegError | None]:
    """summary.json, written atomically; the error instead when it cannot be written."""
    summary = RunSummary(out_dir, data)
    try:
        write_json_atomic(out_dir / "summary.json", summary.data)
        return summary, None
    except DronsegError as exc:
        return summary, exc


def _live_deadline(src: Source, reader: FrameReader, options: RunOptions, state: RunState) -> threading.Event | None:
    """For a camera or stream with --max-duration-s: a thread that stops reading at the deadline, in case no frame
    comes to check it against (a stalled stream, a long reconnect); counted from the first frame read, as the frames'
    own check is (a camera's first frame can take seconds), from the start while none has come. Set the event to end it."""
    if options.max_duration is None or src.kind not in ("camera", "stream"):
        return None
    done, start = threading.Event(), time.monotonic()

    def left() -> float:
        return (reader.first_read_at or start) + options.max_duration - time.monotonic()

    def watch() -> None:
        while not done.wait(max(left(), 0.0)):
            if left() <= 0:
                state.stopped = "max_duration"
                reader.stop(timeout=0)
                return

    threading.Thread(target=watch, name="dronseg-deadline", daemon=True).start()
    return done


def _check_floor(active: list[SinkWorker], state: RunState, floor: DiskFloor) -> list[SinkWorker]:
    """The workers to give the next frame. Below --min-free-mb the video and the image outputs finish now
    (closed, playable); stats and the live outputs go on."""
    heavy = [w for w in active if w.sink.heavy]
    reason = floor.crossed() if state.video_stopped is None and heavy else None
    if reason is None:
        return active
    state.video_stopped = f"{reason} (after {state.frames} frames)"
    log.warning("%s: the %s stop%s here, after %d frames, %s; stats.jsonl continues, as do the live outputs (free "
                "some space, or lower --min-free-mb)", reason, " and ".join(w.sink.name for w in heavy),
                "s" if len(heavy) == 1 else "", state.frames, "closed and complete" if state.frames else "not written")
    for worker in heavy:
        worker.close()  # a write error raises here: the run stops with it
    return [w for w in active if w not in heavy]


def _backend_failure(exc: BackendFailure, frames: int) -> RuntimeFailure | None:
    """The run's error for the backend failing mid-run (after frames went through, or out of memory at
    any point), or None when it failed before any frame, where the cause is more likely a bug."""
    if not (exc.out_of_memory or frames > 0):
        return None
    log.debug("the backend failed", exc_info=exc.cause)
    return RuntimeFailure(f"{str(exc).replace(' failed (', f' failed after {frames} frames (', 1)}; the outputs are "
                          "complete up to the frame before: run again, and if it recurs check the device with "
                          "`dronseg-edge checks`", stopped=exc.stopped)


def _bug_text(exc: BaseException) -> str:
    """summary.json's ``error`` for an exception that is a bug here (its traceback follows on stderr)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]} (a bug in dronseg-edge: please report it)"


def _without_summary(state: RunState, summary_error: DronsegError) -> DronsegError:
    """The run's one error line when summary.json could not be written (the reason for it included)."""
    if state.error is None:
        return RuntimeFailure(f"{summary_error} (the run itself ended after {state.frames} frames: "
                              "its outputs are complete, summary.json is missing)")
    return type(state.error)(f"{state.error}; summary.json could not be written either: {summary_error}",
                             stopped=state.error.stopped)


def _mark_timeline_end(sinks: list[Sink], src: Source, state: RunState) -> None:
    """A video file read to its end: its overlay video runs to the source's last frame, placed by its time as the
    others are (with --stride N it would stop up to N-1 frames short); with --max-duration-s, to the last frame before
    the limit at the video's rate (with --stride N it stopped up to N-1 frames short, or past the limit where the
    source ended first). Not after another stop (--max-frames, a signal, an error)."""
    stop, limit, first = state.stop_reason(), state.options.max_duration, state.first_timestamp
    for sink in (s for s in sinks if isinstance(s, VideoSink)):
        if src.length is not None and stop == "end":
            sink.end_index, sink.end_time = src.length, src.end_time
        if limit and first is not None and src.kind == "video" and stop in ("end", "max_duration"):
            frames = math.ceil(limit * sink.fps - 1e-6)  # those before the limit, at the video's rate
            if sink.end_time is None or first + (frames - 1) / sink.fps < sink.end_time:
                sink.end_index, sink.end_time = frames, first + (frames - 1) / sink.fps


def _close_workers(workers: list[SinkWorker], state: RunState, timed: bool) -> Exception | None:
    """Finalise every sink, whatever happened to the others; a write error goes to ``state.error``
    (the first one wins), and the first bug is returned to be raised once the summary is written.

    After a failed write (a full disk most often) the frames still queued are dropped rather than
    written: the room left, and the reserve just handed back, go to finishing the files. ``timed``: a camera's or
    stream's --max-duration-s, a promise of the wall clock, which a sink stuck in one write does not hold up."""
    discard = _write_failed(state.error) or any(_write_failed(w.error) for w in workers)
    patience = INTERRUPT_PATIENCE_S if state.interrupted or (timed and state.stopped == "max_duration") else None
    bug = None
    for worker in workers:
        try:
            worker.close(discard=discard, patience=patience)
        except DronsegError as exc:
            state.error = state.error or exc
        except Exception as exc:
            bug = bug or exc
    return bug


def _write_failed(error: BaseException | None) -> bool:
    return isinstance(error, OSError) or (isinstance(error, DronsegError) and error.stopped in WRITE_STOPS)


def _prepare_out_dir(options: RunOptions) -> tuple[Path, FolderClaim | None]:
    """The run folder, and for a given --out the claim that keeps other runs out of it until its files do."""
    if options.out is None:
        return next_run_dir(options.project), None
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise DronsegError(f"--out {out} is a file: pass a folder")
    # Claimed first, then checked: two runs given the same --out at once cannot both find it empty.
    claim = FolderClaim(ensure_writable_dir(out), (), alone="pass another --out")
    if any(path != claim.lock for path in out.iterdir()):
        claim.release()
        raise DronsegError(f"--out {out} already holds files and a run never overwrites another: pass a new folder, "
                           "or leave --out out to get runs/infer/expN")
    return out, claim


def _close_unused(sinks: list[Sink]) -> None:
    for sink in sinks:
        with contextlib.suppress(Exception):  # the failure that unwinds _prepare is the one to report
            sink.close()


def _discard_run_dir(out_dir: Path, made: bool) -> None:
    """A run that fails before its first frame leaves nothing behind: the folder it made, or what it put
    in the empty ``--out`` it was given (a rerun with the same --out then works)."""
    for child in out_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    if made:
        out_dir.rmdir()


def _build_sinks(src: Source, out_dir: Path, options: RunOptions, lut: np.ndarray,
                 plan: OverlayPlan | None) -> list[Sink]:
    images = src.kind == "images"
    sinks: list[Sink] = []
    if options.save_video:  # so options.overlay_plan made a plan
        # Images may differ in size, which one video cannot hold: they get overlay images instead.
        sinks.append(OverlayImageSink(out_dir / "overlay", plan) if images
                     else VideoSink(out_dir / "overlay.mp4", src.fps, plan, options.codec, options.segment_s,
                                    by_time=src.kind == "video" or src.fps is None))  # no rate: the frames' times
    if options.save_masks if options.save_masks is not None else images:
        sinks.append(MaskSink(out_dir / "masks"))
    if options.save_color:
        sinks.append(ColorMaskSink(out_dir / "color", lut))
    if options.save_conf:
        sinks.append(ConfidenceSink(out_dir / "conf"))
    if options.contact_sheet:
        sinks.append(ContactSheetSink(out_dir / "contact_sheet.jpg", plan or OverlayPlan(options.alpha, lut)))
    if options.stats:
        sinks.append(StatsSink(out_dir / "stats.jsonl", with_file=images, with_confidence=options.save_conf))
    return sinks


def _progress_bar(src: Source, live: bool, options: RunOptions):
    from tqdm import tqdm

    total = math.ceil(src.frame_count / options.stride) if not live and src.frame_count else None
    if options.max_frames:
        total = min(total or options.max_frames, options.max_frames)
    enabled = options.progress and sys.stderr.isatty()
    return tqdm(total=total, unit="frame", desc="infer", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _open_window() -> None:
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise DronsegError("--show needs OpenCV with a GUI and a display: install opencv-python instead of "
                           "opencv-python-headless, or drop --show") from None


def _show(image: np.ndarray) -> bool:
    """Show one overlay; True when the user pressed q or Esc."""
    cv2.imshow(WINDOW, image)
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)


@contextlib.contextmanager
def _core_left_for_io(segmenter: Segmenter):
    """On the CPU, run torch on one core fewer than it would take, for the decode and writer threads.

    OpenMP threads wait for each other at every layer; when another thread holds one of their
    cores, each layer stalls, and on a 2-core machine a frame took several times longer
    (docs/facts.md#cpu-threads).
    """
    cores = os.cpu_count() or 1
    # only a checkpoint runs on torch (already imported); an ONNX or engine run never imports it
    torch = sys.modules["torch"] if segmenter.device.type == "cpu" and segmenter.backend.name == "torch" else None
    before = torch.get_num_threads() if torch is not None else 0
    if cores < 2 or before < cores:
        yield
        return
    torch.set_num_threads(cores - 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
