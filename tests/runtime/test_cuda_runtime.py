"""runtime/cuda_runtime.py: the thin CUDA wrapper, against a fake ``cuda.bindings.runtime`` on the CPU,
the real binding's error path where it is installed but no GPU is, and (``gpu``-marked, no TensorRT
or torch needed) pinned round trips, a captured graph of copies and CUDA errors on a real GPU, each
also run against the fake."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading

import numpy as np
import pytest

from fake_cudart import FakeCudart, cudaError_t

from dronseg_edge.errors import BackendUnavailable, RuntimeFailure
from dronseg_edge.runtime import cuda_runtime


@pytest.fixture
def cudart(monkeypatch) -> FakeCudart:
    return FakeCudart(devices=2).install(monkeypatch)


def test_check_returns_the_values_after_the_error_code(cudart):
    assert cuda_runtime.check((cudaError_t.cudaSuccess,), "x") is None
    assert cuda_runtime.check((cudaError_t.cudaSuccess, 7), "x") == 7
    assert cuda_runtime.check((cudaError_t.cudaSuccess, 7, "b"), "x") == (7, "b")


@pytest.mark.parametrize("error, kind, words", [
    (cudaError_t.cudaErrorMemoryAllocation, RuntimeFailure, "cudaMalloc of 1.0 MiB failed: out of GPU memory"),
    (cudaError_t.cudaErrorInsufficientDriver, BackendUnavailable, "cudaErrorInsufficientDriver: CUDA driver version is insufficient"),
    (cudaError_t.cudaErrorNoDevice, BackendUnavailable, "no usable CUDA GPU or driver"),
    (cudaError_t.cudaErrorInvalidValue, RuntimeFailure, "cudaMalloc of 1.0 MiB failed with cudaErrorInvalidValue: unknown error"),
])
def test_a_failing_call_becomes_one_line_naming_it(cudart, error, kind, words):
    cudart.fail["cudaMalloc"] = error
    with pytest.raises(kind) as info:
        cuda_runtime.DeviceBuffer().ensure(1 << 20)
    assert type(info.value) is kind and words in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_binding_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    with pytest.raises(BackendUnavailable, match=r"pip install cuda-bindings .*dronseg-edge\[trt\].*JetPack"):
        cuda_runtime.Stream()


def test_importing_the_wrapper_imports_neither_the_binding_nor_torch():
    code = ("import sys, dronseg_edge.runtime.cuda_runtime\n"
            "print(sorted(m for m in ('torch', 'cuda.bindings.runtime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_device_buffer_grows_only_when_asked_for_more(cudart):
    buffer = cuda_runtime.DeviceBuffer()
    buffer.ensure(100)
    first = buffer.ptr
    assert first and cudart.live("device") == 1
    buffer.ensure(60)
    assert buffer.ptr == first
    buffer.ensure(200)
    assert buffer.ptr != first
    assert ("device", first) in cudart.freed and cudart.live("device") == 1
    buffer.free()
    assert cudart.live("device") == 0 and buffer.ptr == 0


def test_pinned_buffer_views_its_memory_and_round_trips_through_the_device(cudart):
    host, device, back = cuda_runtime.PinnedBuffer(), cuda_runtime.DeviceBuffer(), cuda_runtime.PinnedBuffer()
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for buffer in (host, device, back):
        buffer.ensure(data.nbytes)
    host.array(data.shape, data.dtype)[:] = data
    stream = cuda_runtime.Stream()
    stream.copy(device.ptr, host.ptr, data.nbytes, "h2d")
    stream.copy(back.ptr, device.ptr, data.nbytes, "d2h")
    stream.synchronize()
    assert np.array_equal(back.array(data.shape, data.dtype), data)
    assert [c["kind"].name for c in cudart.copies] == ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"]
    assert all(c["stream"] == int(stream) for c in cudart.copies)
    assert cudart.streams[int(stream)]["flags"] == cudart.cudaStreamNonBlocking
    with pytest.raises(ValueError, match="smaller than"):
        host.array((100,), np.float32)
    handle = int(stream)
    stream.close()
    assert cudart.streams[handle]["destroyed"] and stream.handle is None


def test_capture_records_without_running_and_each_launch_replays(cudart):
    stream = cuda_runtime.Stream()
    runs = []
    graph = cuda_runtime.capture(stream, lambda: cudart.enqueue(int(stream), lambda: runs.append(1)))
    assert runs == []  # captured, not run
    assert cudart.captures == [{"stream": int(stream), "mode": cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal,
                                "locked": True}]
    graph.launch(stream)
    graph.launch(stream)
    assert runs == [1, 1]
    graph.close()
    assert cudart.graphs == {} and cudart.executables == {}


@pytest.mark.parametrize("how", ["capture invalidated", "recording raises"])
def test_a_failed_capture_ends_it_and_says_so(cudart, how):
    stream = cuda_runtime.Stream()
    if how == "capture invalidated":
        cudart.capture_fails = True
        with pytest.raises(RuntimeFailure, match="cudaStreamEndCapture failed with cudaErrorStreamCaptureInvalidated"):
            cuda_runtime.capture(stream, lambda: None)
    else:
        def record():
            raise RuntimeFailure("TensorRT execute_async_v3 failed")

        with pytest.raises(RuntimeFailure, match="execute_async_v3"):
            cuda_runtime.capture(stream, record)
    assert cudart.streams[int(stream)]["capture"] is None  # the stream is usable again
    assert cudart.graphs == {} and not cuda_runtime.CAPTURE_LOCK.locked()


def test_capture_lock_is_the_one_torch_captures_take():
    pytest.importorskip("torch")
    from dronseg_edge.runtime import cuda_graph

    assert cuda_graph.CAPTURE_LOCK is cuda_runtime.CAPTURE_LOCK


def test_captures_from_two_threads_take_turns(cudart):
    streams = [cuda_runtime.Stream() for _ in range(2)]
    inside, most = [0], [0]
    lock = threading.Lock()

    def record():
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        threading.Event().wait(0.02)
        with lock:
            inside[0] -= 1

    threads = [threading.Thread(target=cuda_runtime.capture, args=(s, record)) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and len(cudart.graphs) == 2


def test_on_device_switches_and_restores(cudart):
    with cuda_runtime.on_device(1):
        assert cudart.current == 1
    assert cudart.current == 0 and cudart.set_devices == [1, 0]
    with cuda_runtime.on_device(0):
        pass
    assert cudart.set_devices == [1, 0]  # already current: no call
    with pytest.raises(BackendUnavailable, match=r"cudaSetDevice\(5\) failed with cudaErrorInvalidDevice"):
        with cuda_runtime.on_device(5):
            pass


def test_device_identity_and_index(cudart):
    cudart.gpu_name, cudart.capability = "Orin", (8, 7)
    assert cuda_runtime.device_identity(0) == {"gpu_name": "Orin", "compute_capability": "8.7"}

    class Device:
        type, index = "cuda", None

    assert cuda_runtime.resolve_index(Device()) == 0
    Device.index = 1
    assert cuda_runtime.resolve_index(Device()) == 1


def _real_binding_without_gpu() -> str | None:
    """Why the real-binding test cannot run here, or None."""
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return "cuda-bindings is not installed"
    from cuda.bindings import runtime

    err, count = runtime.cudaGetDeviceCount()
    if int(err) == 0 and count:
        return "a CUDA GPU is visible: the no-GPU error path cannot be seen"
    return None


@pytest.mark.skipif(bool(_real_binding_without_gpu()), reason=str(_real_binding_without_gpu()))
def test_real_binding_without_a_gpu_says_so_in_one_line():
    with pytest.raises(BackendUnavailable) as info:
        cuda_runtime.Stream()
    message = str(info.value)
    assert message.startswith("cudaStreamCreateWithFlags failed with cudaError") and "\n" not in message
    assert "no usable CUDA GPU or driver" in message


# -- the same calls on a real GPU (no TensorRT, no torch needed) and, for comparison, on the fake --------


def _no_gpu() -> str | None:
    """Why the real-GPU half cannot run here, or None."""
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return "needs cuda-bindings (not installed)"
    from cuda.bindings import runtime

    err, count = runtime.cudaGetDeviceCount()
    if int(err) != 0 or not count:
        return f"needs a CUDA GPU (cudaGetDeviceCount: {getattr(err, 'name', err)}, {count or 0} devices)"
    return None


@pytest.fixture(params=["fake", pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
    bool(_no_gpu()), reason=str(_no_gpu()))])])
def binding(request, monkeypatch):
    """The fake binding on the CPU, or the real cuda.bindings on GPU 0 (then None)."""
    if request.param == "fake":
        return FakeCudart(devices=1).install(monkeypatch)
    return None


def _filled(buffer: cuda_runtime.PinnedBuffer, shape, value) -> np.ndarray:
    view = buffer.array(shape, np.float32)
    view[...] = value
    return view


def test_a_round_trip_through_pinned_buffers_on_the_modules_stream(binding):
    """host -> device -> host, queued on one Stream, then one synchronize: the bytes come back."""
    data = np.random.default_rng(0).standard_normal((3, 360, 640)).astype(np.float32)  # 2.6 MiB
    host, back, device = cuda_runtime.PinnedBuffer(), cuda_runtime.PinnedBuffer(), cuda_runtime.DeviceBuffer()
    stream = cuda_runtime.Stream()
    try:
        for buffer in (host, back, device):
            buffer.ensure(data.nbytes)
        _filled(host, data.shape, data)
        _filled(back, data.shape, 0.0)
        stream.copy(device.ptr, host.ptr, data.nbytes, "h2d")
        stream.copy(back.ptr, device.ptr, data.nbytes, "d2h")
        stream.synchronize()
        assert np.array_equal(back.array(data.shape, np.float32), data)
    finally:
        for buffer in (host, back, device):
            buffer.free()
        stream.close()


def test_a_captured_graph_of_copies_replays_with_new_inputs(binding):
    """Capture h2d + d2h copies of pinned buffers: nothing moves at capture; each launch copies what the
    host buffer holds at that moment (the graph keeps the addresses, not the data)."""
    shape = (1, 64, 96)
    host_in, host_out, device = cuda_runtime.PinnedBuffer(), cuda_runtime.PinnedBuffer(), cuda_runtime.DeviceBuffer()
    nbytes = int(np.prod(shape)) * 4
    stream = cuda_runtime.Stream()
    graph = None
    try:
        for buffer in (host_in, host_out, device):
            buffer.ensure(nbytes)
        _filled(host_in, shape, 1.0)
        out = _filled(host_out, shape, 0.0)

        def record():
            stream.copy(device.ptr, host_in.ptr, nbytes, "h2d")
            stream.copy(host_out.ptr, device.ptr, nbytes, "d2h")

        graph = cuda_runtime.capture(stream, record)
        stream.synchronize()
        assert not out.any()  # captured, not run
        for value in (2.0, -3.5):
            _filled(host_in, shape, value)
            graph.launch(stream)
            stream.synchronize()
            assert (out == value).all()
    finally:
        if graph is not None:
            graph.close()
        for buffer in (host_in, host_out, device):
            buffer.free()
        stream.close()


def test_cuda_errors_come_back_through_check_as_one_line_and_the_stream_stays_usable(binding):
    with pytest.raises(RuntimeFailure) as info:
        cuda_runtime.DeviceBuffer().ensure(1 << 50)  # 1 PiB
    assert "cudaMalloc of 1073741824.0 MiB failed: out of GPU memory (cudaErrorMemoryAllocation)" in str(info.value)
    with pytest.raises(BackendUnavailable, match=r"^cudaSetDevice\(1048576\) failed with cudaErrorInvalidDevice"):
        with cuda_runtime.on_device(1 << 20):
            pass
    stream = cuda_runtime.Stream()
    try:
        # Synchronising a capturing stream is refused and ends the capture; capture() reports it and
        # leaves the stream out of capture mode, so ordinary work runs on it again.
        with pytest.raises(RuntimeFailure, match=r"^cudaStreamSynchronize failed with cudaErrorStreamCapture"):
            cuda_runtime.capture(stream, stream.synchronize)
        assert not cuda_runtime.CAPTURE_LOCK.locked()
        host, device = cuda_runtime.PinnedBuffer(), cuda_runtime.DeviceBuffer()
        host.ensure(64)
        device.ensure(64)
        view = host.array((16,), np.float32)
        view[:] = np.arange(16)
        stream.copy(device.ptr, host.ptr, 64, "h2d")
        view[:] = 0
        stream.copy(host.ptr, device.ptr, 64, "d2h")
        stream.synchronize()
        assert np.array_equal(view, np.arange(16, dtype=np.float32))
        host.free()
        device.free()
    finally:
        stream.close()
    assert "\n" not in str(info.value)
