import functools

import numpy as np
import pytest
import torch

from dronseg_edge.errors import DronsegError
from testkit import model_input
from dronseg_edge.runtime.registry import load_backend
from dronseg_edge.runtime.torch import TorchBackend
from testkit import requires_cuda



def frames(count=1, seed=0, size=(96, 64)):
    return np.random.default_rng(seed).integers(0, 255, (count, size[1], size[0], 3), dtype=np.uint8)


def test_torch_backend_runs_checkpoint(tiny_checkpoint):
    backend = load_backend(tiny_checkpoint, device="cpu")
    assert isinstance(backend, TorchBackend)
    assert backend.info.input_size == (96, 64)
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    with backend:
        logits = backend.infer(model_input(frame, backend.info, backend.device))
    assert logits.shape == (1, 12, 64, 96) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert logits.is_inference()  # ran under torch.inference_mode
    assert backend.provider == "cpu fp32"


def test_argmax_head_returns_the_uint8_class_map_of_the_logits(tiny_checkpoint):
    batch = model_input(frames(3), load_backend(tiny_checkpoint, device="cpu").info, torch.device("cpu"))
    with load_backend(tiny_checkpoint, device="cpu") as logits_backend:
        logits = logits_backend.infer(batch)
    with load_backend(tiny_checkpoint, device="cpu", head="argmax") as argmax_backend:
        classes = argmax_backend.infer(batch)
    assert argmax_backend.info.head == "argmax"
    assert classes.shape == (3, 64, 96) and classes.dtype == torch.uint8
    assert torch.equal(classes, logits.argmax(1).to(torch.uint8))


def test_options_are_checked_and_gpu_features_are_off_on_the_cpu(tiny_checkpoint):
    with pytest.raises(DronsegError, match="needs a CUDA GPU"):
        load_backend(tiny_checkpoint, device="cpu", precision="fp16")
    for precision in ("int8", ["fp16"]):  # a list: a TypeError (unhashable) from the dict of dtypes
        with pytest.raises(DronsegError, match="^precision .* is not one of fp32, fp16, bf16 for a PyTorch checkpoint$"):
            load_backend(tiny_checkpoint, device="cpu", precision=precision)
    with pytest.raises(DronsegError, match="head"):
        load_backend(tiny_checkpoint, device="cpu", head="softmax")
    backend = load_backend(tiny_checkpoint, device="cpu", cuda_graph=True)
    assert not backend.cuda_graph and not backend.channels_last


@requires_cuda
@pytest.mark.gpu
def test_fp16_channels_last_cuda_graph_matches_fp32(tiny_checkpoint):
    info = load_backend(tiny_checkpoint, device="cpu").info
    batch_cpu = model_input(frames(1, seed=1), info, torch.device("cpu"))
    with load_backend(tiny_checkpoint, device="cpu") as reference:
        expected = reference.infer(batch_cpu).argmax(1)
    backend = load_backend(tiny_checkpoint, device="cuda", precision="fp16")
    with backend:
        assert backend.provider == "cuda fp16 channels_last + CUDA graph"
        first = backend.infer(batch_cpu.cuda())
        again = backend.infer(batch_cpu.cuda())
        other = backend.infer(model_input(frames(1, seed=2), info, backend.device))
    assert first.dtype == torch.float32 and first.device.type == "cuda"
    assert torch.equal(first, again)  # replay of the same input is exact
    assert not torch.equal(first, other)  # new input really reaches the captured graph
    assert (first.argmax(1).cpu() == expected).float().mean() > 0.99
    assert len(backend._graphs) == 0  # released by deactivate


@requires_cuda
@pytest.mark.gpu
def test_cuda_graph_equals_eager_and_keeps_earlier_results(tiny_checkpoint):
    info = load_backend(tiny_checkpoint, device="cpu").info
    device = torch.device("cuda")
    a, b = (model_input(frames(2, seed=s), info, device) for s in (3, 4))
    with load_backend(tiny_checkpoint, device="cuda", cuda_graph=False, head="argmax") as eager:
        expected_a, expected_b = eager.infer(a), eager.infer(b)
    with load_backend(tiny_checkpoint, device="cuda", head="argmax") as graphed:
        got_a = graphed.infer(a)
        got_b = graphed.infer(b)  # replays into the same static buffer
        single = graphed.infer(a[:1])  # another shape: a second graph
        assert len(graphed._graphs) == 2
    assert got_a.dtype == torch.uint8 and got_a.shape == (2, 64, 96)
    # Same kernels (cudnn.benchmark's cache is per process), so agreement is expected to be exact;
    # allow a near-tie pixel or two.
    for got, expected in ((got_a, expected_a), (got_b, expected_b), (single, expected_a[:1])):
        assert (got == expected).float().mean() > 0.999
    assert not torch.equal(got_a, got_b)


def test_compiled_model_gives_the_same_logits(tiny_checkpoint, monkeypatch):
    """The backend's torch.compile path, traced by Dynamo and AOTAutograd as Inductor's is: Inductor's own CPU
    kernels took 34 s to build in a clean clone (a cold cache), a twelfth of the suite. Inductor itself runs
    in `make gpu-check GPU_CHECK_ARGS="--latency-compile default"` (minutes on a GPU)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    batch = model_input(frames(1, seed=5), load_backend(tiny_checkpoint, device="cpu").info, torch.device("cpu"))
    with load_backend(tiny_checkpoint, device="cpu") as eager:
        expected = eager.infer(batch)
    with load_backend(tiny_checkpoint, device="cpu", compile_mode="default") as compiled:
        assert compiled.provider == "cpu fp32 torch.compile(default)"
        got = compiled.infer(batch)
    assert torch.allclose(got, expected, atol=1e-4)


@requires_cuda
@pytest.mark.gpu
def test_cuda_graph_replays_inside_and_outside_inference_mode(tiny_checkpoint):
    batch = model_input(frames(1, seed=6), load_backend(tiny_checkpoint, device="cpu").info, torch.device("cuda"))
    with load_backend(tiny_checkpoint, device="cuda") as backend:
        with torch.inference_mode():
            inside = backend.infer(batch)  # captured here, as under a Segmenter
        outside = backend.infer(batch)  # replayed outside, as benchmarks/pipeline.py does
        assert backend.cuda_graph and len(backend._graphs) == 1
    assert torch.equal(inside, outside)
