"""The few CUDA runtime calls the TensorRT backend makes, without torch: device and pinned memory, a
stream of its own, asynchronous copies, CUDA-graph capture and replay.

Binding: NVIDIA's ``cuda.bindings.runtime`` (package ``cuda-bindings``), not Polygraphy's ctypes
``polygraphy.cuda``, which lacks pinned memory, stream capture and graphs. It covers every call
here, ships with each CUDA release (12.x and 13.x, x86-64 and aarch64), TensorRT's samples use it
and torch's CUDA 13 wheels depend on it; tests/runtime/test_cuda_runtime_names.py checks every name
and argument count against 12.9 and 13.5. Imported on first use (``cudart()``). Every call goes
through ``check``: a failure is one line naming the call and CUDA's error, a BackendUnavailable when
there is no usable driver or GPU, else a RuntimeFailure.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import threading
from typing import Callable, Iterator

import numpy as np

from dronseg_edge.errors import BackendUnavailable, RuntimeFailure

INSTALL_HINT = ("the CUDA Python bindings are not installed for this Python: pip install cuda-bindings "
                "(or pip install 'dronseg-edge[trt]'); on Jetson pick the major version of JetPack's CUDA, "
                "e.g. pip install 'cuda-bindings==12.*' on JetPack 6")

# One capture at a time in the process, shared with torch's captures (runtime/cuda_graph.py uses this
# lock): torch's graph context synchronises the device and empties its allocator cache on entry,
# which must not happen in the middle of another thread's capture.
CAPTURE_LOCK = threading.Lock()

# Errors that mean "this machine cannot run CUDA", not "this call failed".
_UNAVAILABLE = {"cudaErrorNoDevice", "cudaErrorInsufficientDriver", "cudaErrorInitializationError",
                "cudaErrorCompatNotSupportedOnDevice", "cudaErrorSystemDriverMismatch", "cudaErrorInvalidDevice"}


def import_or_explain(module: str, hint: str):
    """``module``, or BackendUnavailable(``hint``), with the loader's error when the bindings are there but
    a library they need is not (an OSError, e.g. libnvinfer missing)."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:
        detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})"
        raise BackendUnavailable(hint + detail) from None


def cudart():
    """The ``cuda.bindings.runtime`` module, or BackendUnavailable saying how to install it."""
    return import_or_explain("cuda.bindings.runtime", INSTALL_HINT)


def check(result, what: str):
    """The value(s) a cuda.bindings call returned after its error code, or a one-line error.

    Each call returns ``(err,)``, ``(err, value)`` or ``(err, v1, v2, ...)``; ``what`` names the
    call in the message (e.g. "cudaMalloc of 12.0 MiB").
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:  # cudaSuccess
        raise error_for(err, what)
    return (values[0] if len(values) == 1 else tuple(values)) if values else None


def error_for(err, what: str) -> Exception:
    name = getattr(err, "name", None) or f"CUDA error {int(err)}"
    detail = ""
    try:
        status, text = cudart().cudaGetErrorString(err)
        if int(status) == 0 and text:
            detail = ": " + (text.decode(errors="replace") if isinstance(text, bytes) else str(text))
    except Exception:  # noqa: BLE001 (the message is a courtesy: never hide the original error behind it)
        pass
    if name in _UNAVAILABLE:
        return BackendUnavailable(f"{what} failed with {name}{detail}: no usable CUDA GPU or driver for this process; "
                                  "check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu with an .onnx model")
    if name == "cudaErrorMemoryAllocation":
        return RuntimeFailure(f"{what} failed: out of GPU memory ({name}); use a smaller --batch or free the GPU")
    return RuntimeFailure(f"{what} failed with {name}{detail}")


def current_device() -> int:
    return int(check(cudart().cudaGetDevice(), "cudaGetDevice"))


def resolve_index(device) -> int:
    """The GPU index of a torch.device or dronseg_edge.devices.Device (``.index`` None: the current one)."""
    return current_device() if device.index is None else int(device.index)


@contextlib.contextmanager
def on_device(index: int) -> Iterator[None]:
    """Make GPU ``index`` current for this thread (where allocations, streams and launches go), then restore."""
    before = current_device()
    if before != index:
        check(cudart().cudaSetDevice(index), f"cudaSetDevice({index})")
    try:
        yield
    finally:
        if before != index:
            check(cudart().cudaSetDevice(before), f"cudaSetDevice({before})")


def device_identity(index: int) -> dict:
    """{'gpu_name': 'NVIDIA H100 80GB HBM3', 'compute_capability': '9.0'}: the strings torch gives too."""
    props = check(cudart().cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu_name": name.rstrip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}


class DeviceBuffer:
    """Device memory that grows to the largest size asked for (``ensure``); ``ptr`` changes when it grows."""

    pinned = False

    def __init__(self) -> None:
        self.ptr = self.nbytes = 0

    def ensure(self, nbytes: int) -> None:
        """At least ``nbytes`` allocated (growing moves the memory: earlier bindings to it are stale)."""
        if nbytes <= self.nbytes:
            return
        self.free()
        rt, size = cudart(), max(nbytes, 1)
        result, what = (rt.cudaMallocHost(size), "cudaMallocHost") if self.pinned else (rt.cudaMalloc(size), "cudaMalloc")
        self.ptr, self.nbytes = int(check(result, f"{what} of {nbytes / (1 << 20):.1f} MiB")), nbytes

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.nbytes = self.ptr, 0, 0
            rt = cudart()
            check(rt.cudaFreeHost(ptr) if self.pinned else rt.cudaFree(ptr), "cudaFreeHost" if self.pinned else "cudaFree")


class PinnedBuffer(DeviceBuffer):
    """Page-locked host memory (``cudaMallocHost``), growing like DeviceBuffer; ``array`` views it.

    From pinned memory a copy to or from the GPU is a DMA the host only queues; from ordinary
    (pageable) memory CUDA first copies through a driver buffer and the host waits.
    """

    pinned = True

    def array(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A numpy view of the first bytes of the buffer (valid until it grows or is freed)."""
        count = int(np.prod(shape, dtype=np.int64))
        if count * np.dtype(dtype).itemsize > self.nbytes:
            raise ValueError(f"pinned buffer of {self.nbytes} bytes is smaller than {shape} {np.dtype(dtype)}")
        raw = (ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class Stream:
    """A CUDA stream of our own, non-blocking: it does not serialise with the legacy default stream."""

    def __init__(self) -> None:
        rt = cudart()
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    def __int__(self) -> int:
        """The raw ``cudaStream_t`` (what TensorRT's ``execute_async_v3`` and torch's ExternalStream take)."""
        return int(self.handle)

    def copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        """Queue a copy of ``nbytes`` from address ``src`` to ``dst``; ``kind``: "h2d" or "d2h"."""
        rt = cudart()
        kinds = {"h2d": rt.cudaMemcpyKind.cudaMemcpyHostToDevice, "d2h": rt.cudaMemcpyKind.cudaMemcpyDeviceToHost}
        if nbytes:
            check(rt.cudaMemcpyAsync(dst, src, nbytes, kinds[kind], self.handle), f"cudaMemcpyAsync ({kind}, {nbytes / (1 << 20):.1f} MiB)")

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            check(cudart().cudaStreamDestroy(handle), "cudaStreamDestroy")


class Graph:
    """An instantiated CUDA graph, replayed with ``launch`` on a stream."""

    def __init__(self, graph, executable) -> None:
        self._graph = graph
        self._executable = executable

    def launch(self, stream: Stream) -> None:
        check(cudart().cudaGraphLaunch(self._executable, stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        rt = cudart()
        executable, graph, self._executable, self._graph = self._executable, self._graph, None, None
        if executable is not None:
            check(rt.cudaGraphExecDestroy(executable), "cudaGraphExecDestroy")
        if graph is not None:
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")


def capture(stream: Stream, record: Callable[[], None]) -> Graph:
    """The work ``record()`` queues on ``stream``, captured (not run) into a graph ready to launch.

    Thread-local capture mode: another thread's ordinary CUDA calls do not invalidate this capture,
    and one capture at a time in the process (``CAPTURE_LOCK``). A failure (``record`` raising, or
    work that cannot be captured, e.g. a synchronising call) raises RuntimeFailure after ending the
    capture, so the stream is usable again and the caller can run without a graph.
    """
    rt = cudart()
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    with CAPTURE_LOCK:
        check(rt.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        try:
            record()
        except BaseException:
            err, *graph = rt.cudaStreamEndCapture(stream.handle)  # ended quietly: the error that led here matters more
            if int(err) == 0 and graph and graph[0] is not None:
                rt.cudaGraphDestroy(graph[0])
            raise
        graph = check(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
    try:
        executable = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    except RuntimeFailure:
        rt.cudaGraphDestroy(graph)
        raise
    return Graph(graph, executable)
