"""TensorRTBackend with host memory (numpy in, numpy out), on the CPU against a fake tensorrt and a
fake cuda.bindings (fake_tensorrt.py, fake_cudart.py): pinned staging, copies on the backend's own
stream, CUDA-graph capture once and replay, frames engines, and errors as one line."""

from __future__ import annotations

import numpy as np
import pytest

from fake_tensorrt import install, write_engine

from dronseg_edge.devices import Device
from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.runtime.tensorrt import TensorRTBackend

SHAPE = (1, 3, 64, 96)


def batch(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def fakes(monkeypatch):
    return install(monkeypatch)


def make(tmp_path, **options) -> TensorRTBackend:
    info = options.pop("info", {})
    return TensorRTBackend(write_engine(tmp_path, **info), Device("cuda", 0), **options)


def test_numpy_goes_through_pinned_buffers_on_the_backends_stream(tmp_path, fakes):
    cudart, trt = fakes
    x = batch(0)
    with make(tmp_path, cuda_graph=False) as backend:
        stream = int(backend._stream)
        out = backend.infer(x)
        pinned_in, pinned_out = backend._host["images"].ptr, backend._host["logits"].ptr
        device_in, device_out = backend._device["images"].ptr, backend._device["logits"].ptr
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == SHAPE
    np.testing.assert_array_equal(out, 2 * x)
    upload, download = cudart.copies
    assert (upload["kind"].name, upload["src"], upload["dst"]) == ("cudaMemcpyHostToDevice", pinned_in, device_in)
    assert (download["kind"].name, download["src"], download["dst"]) == ("cudaMemcpyDeviceToHost", device_out, pinned_out)
    assert upload["count"] == download["count"] == x.nbytes
    assert {c["stream"] for c in cudart.copies} == {stream} and [launch["stream"] for launch in trt.launches] == [stream]
    assert cudart.streams[stream]["flags"] == cudart.cudaStreamNonBlocking  # not the legacy default stream
    assert trt.launches[0]["addresses"] == {"images": device_in, "logits": device_out}


def test_the_result_is_a_copy_that_later_calls_leave_alone(tmp_path, fakes):
    x, y = batch(0), batch(1)
    with make(tmp_path) as backend:
        first = backend.infer(x)
        second = backend.infer(y)
        staged = backend._host["logits"].array(SHAPE, np.float32)
    np.testing.assert_array_equal(first, 2 * x)
    np.testing.assert_array_equal(second, 2 * y)
    assert not np.shares_memory(second, staged)


def test_the_stream_is_synchronised_before_the_result_is_read(tmp_path, fakes):
    cudart, _ = fakes
    with make(tmp_path, cuda_graph=False) as backend:
        for i in range(3):
            backend.infer(batch(i))
        assert cudart.streams[int(backend._stream)]["synchronized"] == 3


def test_cuda_graph_is_captured_once_per_shape_after_one_plain_launch_and_replayed(tmp_path, fakes):
    cudart, trt = fakes
    inputs = [batch(i) for i in range(3)] + [batch(3, (2, 3, 64, 96)), batch(4, (2, 3, 64, 96))]
    with make(tmp_path, info={"dynamic": True, "batch": None}) as backend:
        outs = [backend.infer(x) for x in inputs]
        stream = int(backend._stream)
        assert backend.cuda_graph and backend.provider.endswith("+ CUDA graph")
    for x, out in zip(inputs, outs):
        np.testing.assert_array_equal(out, 2 * x)  # replays compute on the new inputs, through the fixed buffers
    mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    assert cudart.captures == [{"stream": stream, "mode": mode, "locked": True}] * 2  # one per shape
    # Per shape: a plain enqueue (TensorRT's warm-up, which gives the first result), the captured one,
    # then only replays: 3 calls of batch 1 and 2 of batch 2 -> 2 + 1 replays.
    assert len(trt.launches) == 4 and len(cudart.launched) == 3
    assert sum(run["graph"] for run in cudart.ran) == 3  # each replay ran the captured engine work
    assert [launch["shape"][0] for launch in trt.launches] == [1, 1, 2, 2]
    assert {s for _, s in cudart.launched} == {stream}
    assert cudart.executables == {}  # the first shape's graph was released when the shape changed, the last on exit


def test_without_cuda_graph_nothing_is_captured(tmp_path, fakes):
    cudart, trt = fakes
    with make(tmp_path, cuda_graph=False) as backend:
        for i in range(3):
            np.testing.assert_array_equal(backend.infer(batch(i)), 2 * batch(i))
        assert not backend.provider.endswith("+ CUDA graph")
    assert cudart.captures == [] and cudart.launched == [] and len(trt.launches) == 3


def test_engine_that_cannot_be_captured_runs_without_a_graph(tmp_path, monkeypatch, caplog):
    cudart, trt = install(monkeypatch, {"capture_fails": True})
    with caplog.at_level("WARNING", logger="dronseg_edge"):
        with make(tmp_path) as backend:
            first = backend.infer(batch(0))
            assert backend.cuda_graph is False and not backend.provider.endswith("+ CUDA graph")
            second = backend.infer(batch(1))
    np.testing.assert_array_equal(first, 2 * batch(0))  # the warm-up enqueue's result
    np.testing.assert_array_equal(second, 2 * batch(1))
    assert len(cudart.captures) == 1 and cudart.launched == [] and len(trt.launches) == 3
    assert "CUDA graph capture failed" in caplog.text and "cudaErrorStreamCaptureInvalidated" in caplog.text


def test_fp16_engine_takes_float32_and_returns_float32_logits(tmp_path, monkeypatch):
    cudart, _ = install(monkeypatch, dtype="HALF")
    x = batch(0)
    with make(tmp_path) as backend:
        out = backend.infer(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 2 * x.astype(np.float16).astype(np.float32), rtol=1e-3)
    assert cudart.copies[0]["count"] == x.nbytes // 2  # fp16 crosses the bus


def test_frames_engine_returns_the_uint8_map_and_keeps_the_confidence(tmp_path, monkeypatch):
    install(monkeypatch, io="frames")
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 80, 3), dtype=np.uint8)
    info = {"io": "frames", "head": "argmax", "source_size": (80, 48), "batch": 2, "outputs": ["mask", "confidence"]}
    with make(tmp_path, info=info) as backend:
        mask = backend.infer(frames)
        again = backend.infer(frames[::-1].copy())
    assert mask.dtype == np.uint8 and mask.shape == (2, 48, 80)
    np.testing.assert_array_equal(mask, frames[..., 0] // 22)
    np.testing.assert_array_equal(again, frames[::-1, :, :, 0] // 22)
    np.testing.assert_array_equal(backend.last_outputs["confidence"], 255 - frames[::-1, :, :, 0])
    assert backend.last_outputs["mask"] is again


def test_an_unaccepted_shape_names_the_file_and_the_fix(tmp_path, monkeypatch):
    install(monkeypatch, accepts=lambda shape: shape[0] <= 2)
    with make(tmp_path, info={"dynamic": True, "batch": None}) as backend:
        with pytest.raises(DronsegError, match=r"does not accept input shape \(4, 3, 64, 96\).*re-export with matching"):
            backend.infer(batch(0, (4, 3, 64, 96)))


@pytest.mark.parametrize("what", ["out of memory", "execute fails"])
def test_failures_while_running_are_one_line(tmp_path, monkeypatch, what):
    cudart, trt = install(monkeypatch)
    with make(tmp_path, cuda_graph=False) as backend:
        if what == "out of memory":
            cudart.fail["cudaMalloc"] = cudart.cudaError_t.cudaErrorMemoryAllocation
        else:
            trt.execute_ok = False
        with pytest.raises(RuntimeFailure) as info:
            backend.infer(batch(0))
    message = str(info.value)
    assert "\n" not in message
    assert ("out of GPU memory" in message) if what == "out of memory" else ("execute_async_v3 failed on" in message)


def test_deactivate_releases_every_buffer_graph_and_the_stream(tmp_path, fakes):
    cudart, _ = fakes
    backend = make(tmp_path)
    with backend:
        backend.infer(batch(0))
        backend.infer(batch(1))
        stream = int(backend._stream)
        assert cudart.live("device") == 2 and cudart.live("pinned") == 2 and len(cudart.executables) == 1
    assert cudart.memory == {} and cudart.executables == {} and cudart.graphs == {}
    assert cudart.streams[stream]["destroyed"] and backend._stream is None
    np.testing.assert_array_equal(backend.infer(batch(2)), 2 * batch(2))  # infer activates it again


def test_an_engine_built_for_a_dla_core_is_loaded_onto_that_core(tmp_path, fakes):
    from fake_tensorrt import BUILT

    _, trt = fakes
    info = {"extra": {"tensorrt": {**BUILT, "dla_core": 1}, "source_checkpoint": "/runs/a/weights/best.pt"}}
    with make(tmp_path, info=info) as backend:
        backend.infer(batch(0))
    assert [runtime.DLA_core for runtime in trt.runtimes] == [1]
    (tmp_path / "gpu").mkdir()
    with make(tmp_path / "gpu", cuda_graph=False):  # a GPU engine leaves TensorRT's default alone
        pass
    assert trt.runtimes[-1].DLA_core == -1


@pytest.mark.parametrize("build", ["x", [1], {"dla_core": "x"}, {"dla_core": True}])
def test_an_engine_whose_sidecar_build_record_is_damaged_is_one_line(build, tmp_path, fakes):
    # a ValueError or TypeError traceback from dict("x") or int("x")
    from fake_tensorrt import BUILT

    backend = make(tmp_path, info={"extra": {"tensorrt": {**BUILT, **build} if isinstance(build, dict) else build}})
    with pytest.raises(DronsegError, match=f"engine {backend.path}: its sidecar's build record .* is not an object with a "
                                           "whole dla_core: rebuild it on this machine"):
        backend.activate()


@pytest.mark.parametrize("declared, info, says", [
    ({"logits": (1, 3, 64, 96)}, {}, "its metadata says 12 classes (class_names), but the model output logits has 3 channels"),
    ({"images": (4, 3, 64, 96)}, {}, "its metadata says batch 1 at 96x64 (width x height), but the model takes 4x3x64x96"),
    ({}, {"io": "frames", "head": "argmax", "layout": "NHWC", "source_size": (96, 64), "outputs": ["mask"]},
     "its metadata says io frames: (N, H, W, 3) uint8 frames, but the model takes float32 of shape ?x3x?x?"),
])
def test_an_engine_whose_sidecar_lies_is_refused_at_activation(declared, info, says, tmp_path, monkeypatch):
    """The engine's own declared shapes against its sidecar (TensorRT's binding shapes), as for ONNX files."""
    install(monkeypatch, declared=declared)
    backend = make(tmp_path, info=info)
    with pytest.raises(DronsegError) as caught:
        backend.activate()
    assert str(caught.value).startswith(f"{backend.path}: {says}") and "\n" not in str(caught.value), str(caught.value)


@pytest.mark.parametrize("failure", ["returns None", "raises"])
def test_an_engine_tensorrt_cannot_deserialise_is_one_line(failure, tmp_path, monkeypatch):
    _, trt = install(monkeypatch)

    def deserialize(self, plan):
        if failure == "raises":
            raise RuntimeError("std::exception: Serialization assertion magicTagRead == kMAGIC_TAG failed")
        return None

    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", deserialize)
    backend = make(tmp_path)
    with pytest.raises(DronsegError) as caught:
        backend.activate()
    message = str(caught.value)
    assert message.startswith(f"TensorRT 10.3.0 cannot load engine {backend.path} (see its messages above): rebuild it")
    assert "\n" not in message and caught.value.exit_code == 2
