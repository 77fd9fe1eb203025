"""TensorRTBackend with torch tensors, on the CPU: a host tensor takes the host path and comes back a
host tensor; a CUDA tensor is bound zero-copy (or copied into the graph's fixed buffers) on the
backend's own stream, ordered with the caller's torch stream. torch.cuda's streams are faked
(fake_cuda.py) and the CUDA path is pointed at CPU tensors (``_gpu_target``), so the pointers the
fake engine reads are real memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fake_cuda import FakeCuda, FakeStream
from fake_tensorrt import install, write_engine

from dronseg_edge.runtime.tensorrt import TensorRTBackend

SHAPE = (1, 3, 64, 96)


@pytest.fixture
def fakes(monkeypatch):
    return install(monkeypatch)


@pytest.fixture
def gpu_path(monkeypatch):
    """torch.cuda's streams faked, and the backend's "GPU" tensors on the CPU: the FakeCuda."""
    cuda = FakeCuda().install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "ExternalStream", lambda stream_ptr, device=None: FakeStream(handle=stream_ptr),
                        raising=False)
    monkeypatch.setattr(TensorRTBackend, "_gpu_target", lambda self, batch, torch_module: torch.device("cpu"))
    return cuda


def make(tmp_path, **options) -> TensorRTBackend:
    return TensorRTBackend(write_engine(tmp_path), torch.device("cuda", 0), **options)


def test_a_host_tensor_takes_the_host_path_and_comes_back_a_host_tensor(tmp_path, fakes):
    cudart, _ = fakes
    x = torch.randn(SHAPE)
    with make(tmp_path) as backend:
        out = backend.infer(x)
        with torch.inference_mode():
            again = backend.infer(x + 1)
    assert isinstance(out, torch.Tensor) and out.device.type == "cpu" and out.dtype == torch.float32
    assert torch.equal(out, 2 * x) and torch.equal(again, 2 * (x + 1))
    assert cudart.copies[0]["kind"].name == "cudaMemcpyHostToDevice"


def test_a_cuda_tensor_is_bound_zero_copy_on_the_backends_stream_ordered_with_the_callers(tmp_path, fakes, gpu_path):
    cudart, trt = fakes
    cuda = gpu_path
    x = torch.randn(SHAPE)
    with make(tmp_path, cuda_graph=False) as backend:
        cuda.default.waited_for.clear()
        out = backend.infer(x)
        own = backend._torch_stream
        assert own.cuda_stream == int(backend._stream)
    assert torch.equal(out, 2 * x)
    assert trt.launches[0]["addresses"] == {"images": x.data_ptr(), "logits": out.data_ptr()}  # no copies
    assert cudart.copies == [] and [launch["stream"] for launch in trt.launches] == [own.cuda_stream]
    assert own.cuda_stream != cuda.default.cuda_stream  # not the legacy default stream
    assert own.waited_for == [cuda.default]  # the input is complete before the engine reads it
    assert cuda.default.waited_for == [own]  # and whatever reads the output comes after the engine


def test_a_cuda_tensor_with_a_graph_goes_through_the_fixed_buffers(tmp_path, fakes, gpu_path):
    cudart, trt = fakes
    inputs = [torch.randn(SHAPE) for _ in range(3)]
    with make(tmp_path) as backend:
        outs = [backend.infer(x) for x in inputs]
        host = backend.infer(inputs[0].numpy())  # same shape: the same graph serves numpy
        fixed_in, fixed_out = backend._device_in.ptr, backend._device_out["logits"].ptr
        stream = int(backend._stream)
        assert backend.provider.endswith("+ CUDA graph")
    for x, out in zip(inputs, outs):
        assert torch.equal(out, 2 * x)
    np.testing.assert_array_equal(host, 2 * inputs[0].numpy())
    assert outs[0].data_ptr() != outs[1].data_ptr()  # each result is its own tensor, not the graph's buffer
    assert len(cudart.captures) == 1 and len(cudart.launched) == 3 and len(trt.launches) == 2
    first_in, first_out = cudart.copies[:2]
    assert (first_in["kind"].name, first_in["src"], first_in["dst"]) == ("cudaMemcpyDeviceToDevice", inputs[0].data_ptr(), fixed_in)
    assert (first_out["kind"].name, first_out["src"], first_out["dst"]) == ("cudaMemcpyDeviceToDevice", fixed_out, outs[0].data_ptr())
    assert {c["stream"] for c in cudart.copies} == {stream}


def test_a_cuda_tensor_whose_graph_cannot_be_captured_switches_to_zero_copy(tmp_path, monkeypatch, gpu_path, caplog):
    cudart, trt = install(monkeypatch, {"capture_fails": True})
    x, y = torch.randn(SHAPE), torch.randn(SHAPE)
    with caplog.at_level("WARNING", logger="dronseg_edge"):
        with make(tmp_path) as backend:
            first = backend.infer(x)
            second = backend.infer(y)
            assert backend.cuda_graph is False
    assert torch.equal(first, 2 * x) and torch.equal(second, 2 * y)
    assert trt.launches[-1]["addresses"]["images"] == y.data_ptr()
    assert "CUDA graph capture failed" in caplog.text
