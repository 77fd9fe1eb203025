"""`dronseg-edge infer` through the real entry point (main): outputs, warnings and every bad input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from fake_captures import CaptureRecorder, FakeCapture  # noqa: E402
from pipeline_media import scene, write_video  # noqa: E402

from dronseg_edge.cli import main  # noqa: E402
from dronseg_edge.pipeline import gstreamer  # noqa: E402
from dronseg_edge.pipeline.capture_options import acceleration_names  # noqa: E402
from dronseg_edge.pipeline.video_writer import _import_av  # noqa: E402

HAVE_AV = _import_av() is not None


@pytest.fixture(autouse=True, scope="module")
def one_compute_thread():
    """See tests/pipeline/conftest.py: two OpenMP threads on a shared 2-core box stall the pipeline."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer-media")
    video = write_video(root / "clip.mp4", frames=12, size=(128, 80))
    folder = root / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "one.jpg"), scene(0, (96, 64)))
    cv2.imwrite(str(folder / "two.png"), scene(4, (70, 50)))
    (folder / "notes.txt").write_text("x")
    empty = root / "no-images"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    bad_video = root / "text.mp4"
    bad_video.write_text("not a video")
    zero = root / "zero.mp4"
    cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (96, 64)).release()
    corrupt_model = root / "corrupt.pt"
    corrupt_model.write_bytes(b"\x00" * 100)
    blocker = root / "a-file"
    blocker.write_text("x")
    return {"video": video, "folder": folder, "empty": empty, "bad_video": bad_video, "zero": zero,
            "corrupt_model": corrupt_model, "blocker": blocker, "root": root}


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", *map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_error_line(code, out, err, message):
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert sum(line.startswith("error") for line in lines) == 1
    assert "Traceback" not in err + out


def test_video_to_overlay_masks_stats_and_summary(tiny_checkpoint, media, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, tiny_checkpoint, media["video"], "--out", out_dir, "--device", "cpu",
                             "--save-masks", "--save-color", "--alpha", "0.3")
    assert code == 0, err
    assert "torch (cpu fp32)" in out and "input 96x64" in out
    assert "Speed: decode" in out and "per frame at 128x80 (12 frames" in out
    assert f"Results saved to {out_dir}" in out
    capture = cv2.VideoCapture(str(out_dir / "overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12 and capture.get(cv2.CAP_PROP_FPS) == 30.0
    assert len(list((out_dir / "masks").iterdir())) == len(list((out_dir / "color").iterdir())) == 12
    assert len((out_dir / "stats.jsonl").read_text().splitlines()) == 12
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["frames"] == 12 and summary["device"].startswith("cpu")
    assert summary["video_codec"] in (("h264_nvenc", "libx264") if HAVE_AV else ("mp4v",))  # the encoder used


def test_default_output_folder_counts_up(tiny_checkpoint, media, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for expected in ("exp", "exp2"):
        code, out, err = run_cli(capsys, tiny_checkpoint, media["video"], "--max-frames", "2", "--no-save-video")
        assert code == 0, err
        assert f"Results saved to {Path('runs/infer') / expected}" in out
    assert sorted(p.name for p in (tmp_path / "runs/infer").iterdir()) == ["exp", "exp2"]


def test_folder_warns_about_non_images_and_writes_per_image_outputs(tiny_checkpoint, media, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, media["folder"], "--out", tmp_path / "run")
    assert code == 0, err
    assert "warning: skipped 1 non-image file(s)" in err and "notes.txt" in err
    assert sorted(p.name for p in (tmp_path / "run" / "masks").iterdir()) == ["one.png", "two.png"]
    two = cv2.imread(str(tmp_path / "run" / "masks" / "two.png"), cv2.IMREAD_UNCHANGED)
    assert two.shape == (50, 70) and two.dtype == np.uint8
    assert "at mixed (2 frames" in out


def test_images_skipped_above_max_pixels_are_noted_under_the_speed_line(tiny_checkpoint, media, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, media["folder"], "--out", tmp_path / "run", "--device", "cpu",
                             "--max-pixels", "4000")  # one.jpg is 96x64: 6144 pixels
    assert code == 0 and "Notes: 1 images above --max-pixels skipped" in out.splitlines(), out + err


def test_half_on_cpu_is_a_warning(tiny_checkpoint, media, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, media["video"], "--out", tmp_path / "run", "--half",
                             "--max-frames", "1", "--device", "cpu")
    assert code == 0 and "warning: --half is ignored on the CPU" in err


@pytest.mark.parametrize("case, message", [
    ("missing_model", "does not exist"),
    ("unknown_model", "unknown kind"),
    ("corrupt_model", "cannot be read"),
    ("missing_source", "does not exist"),
    ("bad_video", "cannot be opened"),
    ("zero_frames", "zero.mp4"),
    ("no_images", "holds no images"),
    ("camera", "camera 57 cannot be opened"),
    ("unwritable_out", "cannot create output folder"),
    ("existing_out", "already holds files"),
    ("alpha", "--alpha"),
    ("batch", "--batch 0"),
    ("stride", "--stride"),
    ("codec", "--codec 'x265' is not one of auto, h264"),
    ("live_batch", "cannot be used with --live"),
    ("live_images", "--live drops the images read while one is segmented: leave it out for "),
    ("segment_images", "--segment-s applies to a video's overlay.mp4; images get overlay/ JPEGs: leave it out for "),
    ("codec_image", "--codec applies to a video's overlay.mp4; images get overlay/ JPEGs: leave it out for "),
    ("max_duration", "--max-duration-s 0.0 must be above 0 seconds"),
    ("segment_s", "--segment-s -1.0 must be above 0 seconds"),
    ("min_free", "--min-free-mb -1.0 must be 0 (no floor) or more MB"),
    ("show", "--show needs OpenCV with a GUI"),
    ("cuda", "no CUDA GPU"),
    ("classes", "--classes ufo: tiny.pt has no such class; its classes are background, person, bike"),
    ("tile", "--tile 'sometimes' is not one of auto, on, off"),
    ("tile_overlap", "--tile-overlap 0.9 must be between 0 and 0.75"),
    ("overlap_untiled", "--tile-overlap 0.5 has no effect with --tile off (the default): add --tile auto or --tile on"),
    ("stream_size_alone", "--stream-size has no effect without --stream-out: add --stream-out URL, or drop it"),
])
def test_bad_input_gives_one_error_line(case, message, tiny_checkpoint, media, tmp_path, capsys):
    if case == "show" and hasattr(cv2, "imshow") and "GUI:                           NONE" not in cv2.getBuildInformation():
        pytest.skip("this OpenCV has a GUI, so --show would open a window")
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible, so --device cuda works")
    model, source, extra = tiny_checkpoint, media["video"], ["--out", tmp_path / "run"]
    if case == "missing_model":
        model = tmp_path / "nothing.pt"
    elif case == "unknown_model":
        model = media["folder"] / "notes.txt"
    elif case == "corrupt_model":
        model = media["corrupt_model"]
    elif case == "missing_source":
        source = tmp_path / "nothing.mp4"
    elif case == "bad_video":
        source = media["bad_video"]
    elif case == "zero_frames":
        source = media["zero"]
    elif case == "no_images":
        source = media["empty"]
    elif case == "camera":
        source = "57"
    elif case == "unwritable_out":
        extra = ["--out", media["blocker"] / "run"]
    elif case == "existing_out":
        extra = ["--out", media["folder"]]
    elif case == "alpha":
        extra += ["--alpha", "2"]
    elif case == "batch":
        extra += ["--batch", "0"]
    elif case == "stride":
        extra += ["--stride", "0"]
    elif case == "codec":
        extra += ["--codec", "x265"]
    elif case == "live_batch":
        extra += ["--live", "--batch", "2"]
    elif case == "live_images":
        source, extra = media["folder"], extra + ["--live"]
    elif case == "segment_images":  # taken silently, nothing read it
        source, extra = media["folder"], extra + ["--segment-s", "5"]
    elif case == "codec_image":
        source, extra = media["folder"] / "one.jpg", extra + ["--codec", "mp4v"]
    elif case == "max_duration":
        extra += ["--max-duration-s", "0"]
    elif case == "segment_s":
        extra += ["--segment-s", "-1"]
    elif case == "min_free":
        extra += ["--min-free-mb", "-1"]
    elif case == "show":
        extra += ["--show"]
    elif case == "cuda":
        extra += ["--device", "cuda"]
    elif case == "classes":
        extra += ["--classes", "car,ufo"]
    elif case == "tile":
        extra += ["--tile", "sometimes"]
    elif case == "tile_overlap":
        extra += ["--tile-overlap", "0.9"]
    elif case == "overlap_untiled":  # taken silently, nothing read it
        extra += ["--tile-overlap", "0.5"]
    elif case == "stream_size_alone":  # taken silently, nothing read it
        extra += ["--stream-size", "640x360"]
    code, out, err = run_cli(capsys, model, source, *extra)
    assert_one_error_line(code, out, err, message)
    assert not (tmp_path / "run").exists() or case == "existing_out"  # nothing started for a run that cannot


def test_tiles_confidence_and_a_class_filter_from_the_command_line(tiny_checkpoint, media, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, tiny_checkpoint, media["video"], "--out", out_dir, "--device", "cpu",
                             "--max-frames", "2", "--tile", "on", "--tile-overlap", "0.5", "--save-conf",
                             "--classes", "3,road", "--save-masks")  # car by its index, as Ultralytics users write it
    assert code == 0, err
    assert "Tiled: 2 of 2 frames in windows of 96x64 (--tile on, overlap 0.5)" in out
    assert sorted(p.name for p in (out_dir / "conf").iterdir()) == ["000000.png", "000001.png"]
    mask = cv2.imread(str(out_dir / "masks" / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (80, 128) and set(np.unique(mask)) <= {3, 10, 255}
    line = json.loads((out_dir / "stats.jsonl").read_text().splitlines()[0])
    assert set(line["shares"]) == {"car", "road"} and 0.0 <= line["low_confidence"] <= 1.0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (summary["tiled_frames"], summary["tile"]["overlap"], summary["classes"]) == (2, 0.5, ["car", "road"])


def test_help_lists_the_exit_codes_and_the_recording_bounds(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "-h"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    for words in ("--max-duration-s", "--segment-s", "--min-free-mb", "Exit codes: 0 finished", "2 usage or configuration",
                  "3 a backend is missing", "5 runtime failure a restart may cure", "130 interrupted",
                  "a source or output that cannot be opened) makes no folder"):
        assert words in out, words
    # It promised summary.json "in every case but a usage error": a camera that cannot be opened is 5, no folder.
    code, _, err = run_cli(capsys, tiny_checkpoint, "57", "--out", tmp_path / "run", "--device", "cpu")
    assert code == 5 and not (tmp_path / "run").exists(), err


def test_bounded_recording_from_the_command_line(tiny_checkpoint, media, tmp_path, capsys):
    """Through the old spellings of --max-duration-s and --min-free-mb, which still work."""
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, tiny_checkpoint, media["video"], "--out", out_dir, "--device", "cpu",
                             "--max-duration", "0.3", "--segment-s", "0.1", "--min-free", "0")
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (summary["frames"], summary["stopped"], summary["min_free_mb"]) == (9, "max_duration", 0.0)
    assert [s["frames"] for s in summary["video_segments"]] == [3, 3, 3]
    assert "Video: 3 segments of 0.1 s (overlay_00000.mp4 ... overlay_00002.mp4)" in out
    assert "Stopped: --max-duration-s reached" in out


@pytest.mark.parametrize("extra, message", [
    (["--rtsp-transport", "quic"], "--rtsp-transport 'quic' is not one of tcp, udp"),
    (["--latency-ms", "-5"], "--latency-ms -5 must be a whole number, from 0 to 60000 (milliseconds"),
    (["--rtsp-transport", "tcp", "--latency-ms", "100"], "--rtsp-transport and --latency-ms apply to rtsp:// sources "
                                                         "only, and"),
])
def test_bad_stream_options_give_one_error_line(extra, message, tiny_checkpoint, media, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, media["video"], "--out", tmp_path / "run", *extra)
    assert_one_error_line(code, out, err, message)
    assert not (tmp_path / "run").exists()


def test_a_pipeline_without_gstreamer_gives_one_error_line(tiny_checkpoint, tmp_path, capsys):
    if gstreamer.has_gstreamer():
        pytest.skip("this OpenCV has GStreamer, so the pipeline would open")
    code, out, err = run_cli(capsys, tiny_checkpoint, "videotestsrc ! videoconvert", "--out", tmp_path / "run")
    assert_one_error_line(code, out, err, "has no GStreamer: on a Jetson use JetPack's OpenCV")
    assert code == 3 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, requested", [(None, False), ("--hw-decode", True), ("--no-hw-decode", False)])
def test_hw_decode_is_recorded_in_the_summary(flag, requested, tiny_checkpoint, media, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, tiny_checkpoint, media["video"], "--out", out_dir, "--device", "cpu",
                             "--max-frames", "2", "--no-save-video", *([flag] if flag else []))
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["hw_decode"]["requested"] is requested and summary["frames"] == 2
    assert summary["hw_decode"]["used"] in acceleration_names().values()  # "none" with pip's FFmpeg


@pytest.mark.parametrize("source, kind, pipeline_part", [
    ("videotestsrc is-live=true ! videoconvert", "stream",
     "videotestsrc is-live=true ! videoconvert ! appsink drop=true max-buffers=1"),
    ("csi://0?width=64&height=48&fps=15", "camera", "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=64,"
                                                    "height=48,framerate=15/1 ! nvvidconv"),
])
def test_gstreamer_sources_from_the_command_line(source, kind, pipeline_part, tiny_checkpoint, tmp_path, capsys,
                                                 monkeypatch):
    """A stand-in GStreamer backend (pip's OpenCV has none): the pipeline OpenCV would get, and a run on its frames."""
    monkeypatch.setattr(gstreamer, "has_gstreamer", lambda: True)
    recorder = CaptureRecorder(FakeCapture(None, size=(64, 48), delay_s=0.01)).install(monkeypatch, cv2.CAP_GSTREAMER)
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, tiny_checkpoint, source, "--out", out_dir, "--device", "cpu", "--max-frames", "3",
                             "--no-save-video")
    assert code == 0, err
    (call,) = recorder.calls
    assert call.api == cv2.CAP_GSTREAMER and pipeline_part in call.target
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (summary["source"], summary["source_kind"], summary["live"]) == (source if kind == "camera" else
                                                                             call.target, kind, True)
    assert (summary["frames"], summary["frame_size"], summary["hw_decode"]) == (3, "64x48", None)


def _foreign_copy(ours, folder):
    """(``ours``, an fp32 ONNX file of ours, the same graph with its metadata stripped, as a foreign tool leaves it)."""
    import onnx

    graph = onnx.load(str(ours))
    del graph.metadata_props[:]
    foreign = folder / "foreign.onnx"
    onnx.save(graph, str(foreign))
    return ours, foreign


def test_a_foreign_onnx_runs_with_meta_and_is_refused_without(tiny_checkpoint, onnx_export, media, tmp_path, capsys):
    ours, foreign = _foreign_copy(onnx_export(tiny_checkpoint), tmp_path)
    code, out, err = run_cli(capsys, foreign, media["folder"], "--out", tmp_path / "a", "--device", "cpu", "--meta", ours)
    assert code in (0, None), err
    assert f"model: {foreign} -> onnxruntime" in out and (tmp_path / "a" / "masks" / "one.png").is_file()
    # infer streams: its CPU session gives each call in flight its share of the cores (Segmenter(streaming=True))
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["provider"] == \
        f"CPUExecutionProvider, {threads} thread{'s' if threads > 1 else ''} a call"
    assert_one_error_line(*run_cli(capsys, foreign, media["folder"], "--out", tmp_path / "b", "--device", "cpu"),
                          "foreign.onnx has no dronseg-edge metadata")
    code, out, err = run_cli(capsys, foreign, media["folder"], "--out", tmp_path / "c", "--device", "cpu")
    assert "or pass --meta FILE" in err.strip().splitlines()[-1]


def test_a_file_url_to_a_missing_file_is_exit_2_not_a_stream_to_wait_for(tiny_checkpoint, tmp_path, capsys):
    """Issue 19: file:///nonexistent.mp4 exited 5 (a supervisor restarts it forever); it is a bad input."""
    code, out, err = run_cli(capsys, tiny_checkpoint, f"file://{tmp_path}/nonexistent.mp4", "--out", tmp_path / "run",
                             "--device", "cpu")
    assert code == 2
    assert_one_error_line(code, out, err, f"source file://{tmp_path}/nonexistent.mp4: no such file {tmp_path}/nonexistent.mp4")
    assert not (tmp_path / "run").exists()


def test_three_class_metadata_on_a_twelve_class_model_is_exit_2(tiny_checkpoint, onnx_export, media, tmp_path, capsys):
    """Issue 19: it ran with exit 0, mask values up to 9, every stat 0.0 and black colours."""
    import onnx

    ours, _ = _foreign_copy(onnx_export(tiny_checkpoint), tmp_path)
    graph = onnx.load(str(ours))
    for entry in graph.metadata_props:
        if entry.key in ("class_names", "palette"):
            entry.value = json.dumps(["a", "b", "c"] if entry.key == "class_names" else [[1, 2, 3]] * 3)
    lying = tmp_path / "lying.onnx"
    onnx.save(graph, str(lying))
    code, out, err = run_cli(capsys, lying, media["folder"], "--out", tmp_path / "run", "--device", "cpu")
    assert code == 2
    assert_one_error_line(code, out, err, f"{lying}: its metadata says 3 classes (class_names), but the model output "
                                          "logits has 12 channels")
    assert not list((tmp_path / "run").rglob("*.png"))  # no mask written with the wrong classes


RESULTS_READER = """
import json, sys
frames = []
for line in sys.stdin:
    record = json.loads(line)  # every line on stdout is a results line: nothing else gets there
    assert record["schema"] == 1 and set(record["classes"]) <= set(record["shares"]), record
    frames.append(record["frame"])
print(json.dumps({"frames": frames}))
"""


def test_results_to_stdout_feed_a_reader_through_a_pipe(tiny_checkpoint, media, tmp_path):
    """`infer ... --results - | reader`: the reader gets one JSON line per frame and nothing else; the
    command's own lines go to stderr."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    infer = subprocess.Popen([sys.executable, "-m", "dronseg_edge", "infer", str(tiny_checkpoint), str(media["video"]),
                              "--out", str(tmp_path / "run"), "--device", "cpu", "--results", "-", "--no-save-video"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    reader = subprocess.Popen([sys.executable, "-c", RESULTS_READER], stdin=infer.stdout, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    infer.stdout.close()  # the reader holds the pipe's only read end
    try:
        got, reader_errors = reader.communicate(timeout=240)
        errors = infer.communicate(timeout=60)[1].decode()
    finally:
        infer.kill()
        reader.kill()
    assert (infer.returncode, reader.returncode, reader_errors) == (0, 0, ""), errors + reader_errors
    assert json.loads(got)["frames"] == list(range(12))
    assert "Speed: decode" in errors and f"Results saved to {tmp_path / 'run'}" in errors
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["results"]["lines"] == 12


@pytest.mark.parametrize("args, message", [
    (["--stream-out", "http://gcs:5600"], "--stream-out 'http://gcs:5600': not a stream URL"),
    (["--preview", "0.0.0.0:8080"], "add --preview-token"),
    (["--results", "tcp://h:1"], "--results 'tcp://h:1'"),
])
def test_bad_live_outputs_are_one_line_before_the_model_loads(media, tmp_path, capsys, args, message):
    code, out, err = run_cli(capsys, tmp_path / "no-model.pt", media["video"], *args)
    assert code == 2
    assert_one_error_line(code, out, err, message)


def test_help_has_an_example_per_live_output(capsys):
    code, out, _ = run_cli(capsys, "-h")
    text = " ".join(out.split())
    for example in ("--stream-out rtp://GCS_IP:5600", "'UDP h.264 Video Stream'", "--stream-out udp://",
                    "--stream-out rtsp://", "--preview 8080", "--results - |"):
        assert example in text


def test_an_interrupted_run_says_so_in_one_line(tiny_checkpoint, media, tmp_path, capsys, monkeypatch):
    import signal

    from dronseg_edge.pipeline import run

    real = run.DiskFloor  # SIGTERM as the run starts (docker stop)
    monkeypatch.setattr(run, "DiskFloor", lambda *a: (os.kill(os.getpid(), signal.SIGTERM), real(*a))[1])
    code, out, err = run_cli(capsys, tiny_checkpoint, media["video"], "--out", tmp_path / "run", "--device", "cpu",
                             "--no-progress")
    assert code == 130 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert lines == ["interrupted: outputs are complete up to the last of 0 frames"]  # and a second, bare "interrupted"


def test_a_warning_on_a_standard_error_whose_reader_has_gone_does_not_stop_the_run(monkeypatch):
    """`infer ... 2>&1 | logger` with the logger gone: a stream's "retrying" warning raised BrokenPipeError in its sink,
    and the run stopped after 3 frames (exit 1, summary.json: write_failed, "cannot write udp://...: Broken pipe")."""
    import logging

    from dronseg_edge.cli.infer_cmd import _LogLines

    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        flush = write

    monkeypatch.setattr(sys, "stderr", Gone())
    record = logging.LogRecord("dronseg_edge.pipeline.stream_sink", logging.WARNING, __file__, 1, "stream lost", None, None)
    _LogLines(err=True).emit(record)  # no BrokenPipeError
