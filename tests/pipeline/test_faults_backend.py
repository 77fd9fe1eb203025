"""The backend failing mid-run (a lost GPU, CUDA out of memory, an ONNX Runtime error) is a runtime
failure, exit code 5, after the outputs are finalised; an exception that looks like a bug here
keeps its traceback (the outputs are finalised all the same)."""

from __future__ import annotations

import json

import pytest
from pipeline_media import read_video

from dronseg_edge.errors import RuntimeFailure
from dronseg_edge.pipeline import RunOptions, Segmenter, run_inference


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint):
    with Segmenter(tiny_checkpoint, device="cpu") as seg:
        yield seg


def fail_at_call(monkeypatch, segmenter, call: int, error: Exception) -> None:
    real_infer, calls = segmenter.backend._infer, []

    def infer(batch):
        calls.append(1)
        if len(calls) == call:
            raise error
        return real_infer(batch)

    monkeypatch.setattr(segmenter.backend, "_infer", infer)


def test_a_backend_failing_mid_run_is_exit_code_5_with_the_outputs_final(segmenter, video_path, tmp_path, monkeypatch):
    fail_at_call(monkeypatch, segmenter, 4, RuntimeError("CUDA error: an illegal memory access was encountered\nmore"))
    out = tmp_path / "run"
    with pytest.raises(RuntimeFailure, match=r"the torch backend failed after 3 frames \(RuntimeError: CUDA error: "
                                             r"an illegal memory access was encountered\); .*run again") as error:
        run_inference(segmenter, video_path, RunOptions(out=out, progress=False))
    assert error.value.exit_code == 5
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames"], summary["stopped"]) == (3, "backend_failure")
    assert len(read_video(out / "overlay.mp4")[0]) == summary["video_frames"] == 3


@pytest.mark.parametrize("error", [
    type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2.00 GiB"),  # torch.cuda's
    # ONNX Runtime's (a Fail, here a RuntimeError) and torch's on the CPU were tracebacks asking for a bug report
    RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. Name:'x' "
                 "Status Message: bfc_arena.cc:360 Failed to allocate memory for requested buffer of size 68719476736"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"),
    RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
                 "Name:'x' Status Message: std::bad_alloc"),
], ids=["torch-cuda", "onnxruntime", "torch-cpu", "onnxruntime-bad-alloc"])
def test_out_of_memory_is_a_runtime_failure_even_on_the_first_frame(error, segmenter, video_path, tmp_path, monkeypatch):
    fail_at_call(monkeypatch, segmenter, 1, error)
    with pytest.raises(RuntimeFailure, match="failed after 0 frames .*(out of memory|allocate memory|bad_alloc)"):
        run_inference(segmenter, video_path, RunOptions(out=tmp_path / "run", progress=False))


def test_a_bug_keeps_its_traceback_and_the_outputs_are_still_final(segmenter, video_path, tmp_path, monkeypatch):
    fail_at_call(monkeypatch, segmenter, 3, ValueError("a bug in this project"))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="a bug in this project"):
        run_inference(segmenter, video_path, RunOptions(out=out, progress=False))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 2 and (out / "overlay.mp4").exists()
    # The record agrees with the exit: never "stopped": "end", "error": null for a run that ends in a traceback.
    assert summary["stopped"] == "error" and summary["error"].startswith("ValueError: a bug in this project")


def test_a_runtime_error_before_any_frame_keeps_its_traceback(segmenter, video_path, tmp_path, monkeypatch):
    fail_at_call(monkeypatch, segmenter, 1, RuntimeError("Expected all tensors to be on the same device"))
    with pytest.raises(RuntimeError, match="same device"):  # the very first call: more likely a bug than the GPU
        run_inference(segmenter, video_path, RunOptions(out=tmp_path / "run", progress=False))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped"] == "error"


def test_onnxruntimes_own_errors_are_backend_failures_told_by_their_type(tiny_checkpoint, onnx_export, video_path,
                                                                        tmp_path, monkeypatch):
    """onnxruntime's exceptions derive from Exception alone: the backend names them (runtime_errors),
    no module name is matched."""
    pytest.importorskip("onnxruntime")
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    path = onnx_export(tiny_checkpoint)
    with Segmenter(path, device="cpu") as seg:
        fail_at_call(monkeypatch, seg, 3, Fail("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700"))
        # A CPU session keeps two frames in flight, so the third call to begin may be frame 2's (its thread came to
        # the call after frame 3's: a fresh clone's suite, 2 workers of one OpenMP thread), 3's or 4's
        with pytest.raises(RuntimeFailure, match=r"the onnxruntime backend failed after [123] frames \(Fail: ") as error:
            run_inference(seg, video_path, RunOptions(out=tmp_path / "run", progress=False))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped"] == "backend_failure"
    assert f"failed after {summary['frames']} frames" in str(error.value)  # the outputs hold what the line says
