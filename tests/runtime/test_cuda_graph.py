"""runtime/cuda_graph.py: capture on the owner's stream, one capture at a time, eager fallback; with
torch.cuda faked on the CPU (fake_cuda.py), and for real on a GPU."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from fake_cuda import FakeCuda

from testkit import model_input
import dronseg_edge.runtime.cuda_graph as cuda_graph
from dronseg_edge.runtime.cuda_graph import GraphCache
from dronseg_edge.runtime.registry import load_backend
from testkit import requires_cuda

CPU = torch.device("cpu")


def doubling(x):
    return x * 2


def test_capture_uses_the_owners_stream_thread_local_mode_and_the_lock(monkeypatch):
    cuda = FakeCuda().install(monkeypatch)
    cache = GraphCache(CPU, max_graphs=2)
    own = cache.stream
    warmups = []

    def forward(x):
        warmups.append(torch.cuda.current_stream())
        return x * 2

    entry = cache.capture("a", torch.ones(3), forward, warmup=2)
    assert entry is not None and len(cache) == 1 and "a" in cache
    assert cuda.captures == [{"stream": own, "mode": "thread_local", "locked": True, "thread": threading.get_ident()}]
    # Two warm-ups on a side stream (neither the owner's nor the default), then the capture on the owner's.
    side = warmups[0]
    assert warmups == [side, side, own] and side not in (own, cuda.default)
    assert side.waited_for == [own] and own.waited_for[-1] is side
    assert torch.equal(entry.output, torch.full((3,), 2.0))


def test_replay_runs_on_the_owners_stream_between_the_callers_work(monkeypatch):
    cuda = FakeCuda().install(monkeypatch)
    cache = GraphCache(CPU)
    own = cache.stream
    entry = cache.capture("a", torch.ones(3), doubling)
    own.waited_for.clear()
    cuda.default.waited_for.clear()
    out = cache.replay(entry, torch.full((3,), 5.0))
    assert entry.graph.replays == 1
    assert torch.equal(entry.input, torch.full((3,), 5.0))  # the new input reached the graph's buffer
    assert out is not entry.output and torch.equal(out, entry.output)  # a copy: the next replay cannot change it
    assert own.waited_for == [cuda.default] and cuda.default.waited_for == [own]


def test_a_graph_cache_without_a_stream_makes_its_own(monkeypatch):
    cuda = FakeCuda().install(monkeypatch)
    cache = GraphCache(CPU)
    cache.capture("a", torch.ones(1), doubling)
    assert cuda.captures[0]["stream"] is cache.stream and cache.stream is not cuda.default


def test_full_cache_drops_old_graphs(monkeypatch):
    FakeCuda().install(monkeypatch)
    cache = GraphCache(CPU, max_graphs=2)
    for key in "abc":
        cache.capture(key, torch.ones(1), doubling)
    assert len(cache) == 1 and "c" in cache


def test_two_threads_never_capture_at_once(monkeypatch):
    cuda = FakeCuda(capture_seconds=0.2).install(monkeypatch)
    caches = [GraphCache(CPU, label=f"model{i}") for i in range(2)]
    start = threading.Barrier(2)
    errors = []

    def capture(cache):
        try:
            start.wait()
            assert cache.capture("a", torch.ones(2), doubling) is not None
        except Exception as exc:  # reported below: an assert in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=capture, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cuda.captures) == 2 and cuda.most_concurrent_captures == 1
    assert {id(c["stream"]) for c in cuda.captures} == {id(c.stream) for c in caches}


def test_failed_capture_warns_and_synchronises_only_its_own_stream(monkeypatch, caplog):
    cuda = FakeCuda(capture_fails=True).install(monkeypatch)
    cache = GraphCache(CPU, label="tiny.pt")
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        assert cache.capture("a", torch.ones(1), doubling) is None
    assert ("CUDA graph capture failed (operation not permitted when stream is capturing); running tiny.pt without it"
            in caplog.text)
    # The capture stream, never the device: a device-wide synchronize breaks other threads' captures.
    assert len(cache) == 0 and cache.stream.synchronized == 1 and cuda.synchronized == 0
    assert not cuda_graph.CAPTURE_LOCK.locked()


def test_a_warm_up_that_fails_also_synchronises_only_the_capture_stream(monkeypatch):
    cuda = FakeCuda().install(monkeypatch)
    cache = GraphCache(CPU)

    def forward(x):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    assert cache.capture("a", torch.ones(1), forward) is None
    assert cache.stream.synchronized == 1 and cuda.synchronized == 0 and cuda.captures == []
    assert cache.stream.waited_for[-1] is cuda.created[-1]  # the stream waited for the side stream's warm-up first


def autotuning(calls: list, tuned: threading.local):
    """The forward of a model whose first run in each thread autotunes cuDNN, which synchronises the device."""

    def forward(x):
        calls.append(cuda_graph.CAPTURE_LOCK.locked())
        if not getattr(tuned, "done", False):  # the benchmark cache is per thread (ATen's Conv_v8.cpp)
            torch.cuda.synchronize()
            tuned.done = True
        return x * 2
    return forward


def test_warm_up_runs_under_the_capture_lock(monkeypatch):
    FakeCuda().install(monkeypatch)
    calls: list[bool] = []
    GraphCache(CPU).capture("a", torch.ones(1), autotuning(calls, threading.local()), warmup=3)
    assert calls == [True] * 4  # three warm-ups and the capture, every one with the lock held


def test_an_autotuning_warm_up_never_synchronises_during_another_threads_capture(monkeypatch):
    cuda = FakeCuda(capture_seconds=0.2).install(monkeypatch)
    tuned = threading.local()
    caches = [GraphCache(CPU, label=f"model{i}") for i in range(2)]
    start = threading.Barrier(2)
    results, calls = [], []

    def capture(cache):
        start.wait()
        results.append(cache.capture("a", torch.ones(2), autotuning(calls, tuned), warmup=3))

    threads = [threading.Thread(target=capture, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and all(r is not None for r in results)
    assert cuda.synchronized == 2 and cuda.syncs_during_capture == 0


def frames(count=1, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (count, 64, 96, 3), dtype=np.uint8)


def test_torch_backend_keeps_one_graph_per_shape_and_falls_back_to_eager(monkeypatch, tiny_checkpoint):
    batch = model_input(frames(2), load_backend(tiny_checkpoint, device="cpu").info, CPU)
    with load_backend(tiny_checkpoint, device="cpu") as eager:
        expected = eager.infer(batch)
    cuda = FakeCuda().install(monkeypatch)
    backend = load_backend(tiny_checkpoint, device="cpu")
    with backend:
        backend.cuda_graph = True  # as on a GPU: the fake graphs run the model eagerly while "capturing"
        first = backend.infer(batch)
        backend.infer(batch)
        backend.infer(batch[:1])
        assert len(backend._graphs) == 2 and len(cuda.captures) == 2
        assert all(c["stream"] is backend._graphs.stream and c["mode"] == "thread_local" for c in cuda.captures)
    assert torch.allclose(first, expected, atol=1e-5)
    failing = FakeCuda(capture_fails=True).install(monkeypatch)
    with load_backend(tiny_checkpoint, device="cpu") as backend:
        backend.cuda_graph = True
        backend._describe_provider()
        got = backend.infer(batch)
        assert backend.cuda_graph is False and backend.provider == "cpu fp32" and len(failing.captures) == 1
    assert torch.allclose(got, expected, atol=1e-5)


@requires_cuda
@pytest.mark.gpu
def test_two_backends_capture_in_two_threads_at_once(tiny_checkpoint):
    info = load_backend(tiny_checkpoint, device="cpu").info
    device = torch.device("cuda")
    inputs = [model_input(frames(1, seed=s), info, device) for s in (1, 2)]
    with load_backend(tiny_checkpoint, device="cuda", cuda_graph=False, head="argmax") as eager:
        expected = [eager.infer(x).cpu() for x in inputs]
    backends = [load_backend(tiny_checkpoint, device="cuda", head="argmax") for _ in inputs]
    for backend in backends:
        backend.activate()
        backend.active = True
    start = threading.Barrier(len(backends))
    results, errors = [None] * len(backends), []

    def run(i):
        try:
            start.wait()
            results[i] = [backends[i].infer(inputs[i]).cpu() for _ in range(3)]  # capture, then two replays
        except Exception as exc:  # reported below: an exception in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(backends))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for backend, got, want in zip(backends, results, expected):
        assert backend.cuda_graph and len(backend._graphs) == 1  # captured, no fallback to eager
        for mask in got:
            assert (mask == want).float().mean() > 0.999
        backend.deactivate()
