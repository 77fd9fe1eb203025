"""A CPU stand-in for ``cuda.bindings.runtime``: the calls runtime/cuda_runtime.py makes, with the
real signatures (tests/runtime/test_cuda_runtime_names.py checks them against the stored lists) and
the real return convention (``(err,)`` or ``(err, value)``).

"Device" and "pinned" memory are host memory (so a fake engine can read and write it through the
addresses it is bound to); copies are ``ctypes.memmove``. A stream under capture records the work
queued on it (``enqueue``) instead of running it, and a launched graph runs what was recorded, so a
replay computes with the addresses baked in at capture, as on a GPU. Errors can be injected per call
(``fail``) and a capture can be made to fail (``capture_fails``).
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import sys
import types
from typing import Callable


class cudaError_t(enum.IntEnum):  # noqa: N801 (the binding's name)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


_MESSAGES = {cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
             cudaError_t.cudaErrorInsufficientDriver: b"CUDA driver version is insufficient for CUDA runtime version",
             cudaError_t.cudaErrorNoDevice: b"no CUDA-capable device is detected",
             cudaError_t.cudaErrorStreamCaptureInvalidated: b"operation failed due to a previous error during capture",
             cudaError_t.cudaErrorStreamCaptureUnsupported: b"operation not permitted when stream is capturing"}
OK = cudaError_t.cudaSuccess


class FakeCudart(types.ModuleType):
    """Install with ``FakeCudart().install(monkeypatch)``."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = 1

    def __init__(self, gpu_name: str = "NVIDIA H100 80GB HBM3", capability: tuple[int, int] = (9, 0),
                 devices: int = 1, capture_fails: bool = False):
        super().__init__("cuda.bindings.runtime")
        self.gpu_name, self.capability, self.devices = gpu_name, capability, devices
        self.capture_fails = capture_fails
        self.memory_bytes = 80 << 30  # a cudaMalloc larger than this fails as on a real GPU
        self.fail: dict[str, cudaError_t] = {}  # call name -> error it returns
        self.current = 0
        self.set_devices: list[int] = []
        self.memory: dict[int, tuple[str, ctypes.Array]] = {}  # address -> ("device" | "pinned", buffer)
        self.freed: list[tuple[str, int]] = []
        self.copies: list[dict] = []
        self.streams: dict[int, dict] = {}  # handle -> {"flags", "capture": list | None, "synchronized": int}
        self.graphs: dict[int, list] = {}
        self.executables: dict[int, list] = {}
        self.launched: list[tuple[int, int]] = []  # (executable, stream)
        self.ran: list[dict] = []  # every piece of enqueued work that ran: {"stream", "graph"}
        self.captures: list[dict] = []
        self._handles = itertools.count(7000)

    def install(self, monkeypatch) -> "FakeCudart":
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", self)
        return self

    # -- what fake engines call ------------------------------------------------------------------

    def enqueue(self, stream: int, work: Callable[[], None]) -> None:
        """Work a kernel would do on ``stream``: recorded while it captures, else run now."""
        state = self.streams[int(stream)]
        if state["capture"] is not None:
            state["capture"].append(work)
        else:
            work()
            self.ran.append({"stream": int(stream), "graph": False})

    def live(self, kind: str) -> int:
        return sum(1 for k, _ in self.memory.values() if k == kind)

    def _failing(self, name: str):
        return self.fail.get(name)

    # -- the binding's calls (real names and arities) ----------------------------------------------

    def cudaGetErrorString(self, error):  # noqa: N802
        return OK, _MESSAGES.get(error, b"unknown error")

    def cudaGetDevice(self):  # noqa: N802
        return (self._failing("cudaGetDevice"), None) if self._failing("cudaGetDevice") else (OK, self.current)

    def cudaSetDevice(self, device):  # noqa: N802
        if device >= self.devices:
            return (cudaError_t.cudaErrorInvalidDevice,)
        self.current = device
        self.set_devices.append(device)
        return (OK,)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        if self._failing("cudaGetDeviceProperties"):
            return self._failing("cudaGetDeviceProperties"), None
        name = self.gpu_name.encode() + b"\x00" * 4
        return OK, types.SimpleNamespace(name=name, major=self.capability[0], minor=self.capability[1])

    def _alloc(self, kind: str, size: int):
        buffer = (ctypes.c_uint8 * size)()
        address = ctypes.addressof(buffer)
        self.memory[address] = (kind, buffer)
        return OK, address

    def cudaMalloc(self, size):  # noqa: N802
        if size > self.memory_bytes:
            return cudaError_t.cudaErrorMemoryAllocation, None
        return (self._failing("cudaMalloc"), None) if self._failing("cudaMalloc") else self._alloc("device", size)

    def cudaMallocHost(self, size):  # noqa: N802
        return (self._failing("cudaMallocHost"), None) if self._failing("cudaMallocHost") else self._alloc("pinned", size)

    def _free(self, kind: str, ptr) -> tuple:
        if self.memory.get(int(ptr), ("",))[0] != kind:
            return (cudaError_t.cudaErrorInvalidValue,)
        del self.memory[int(ptr)]
        self.freed.append((kind, int(ptr)))
        return (OK,)

    def cudaFree(self, devPtr):  # noqa: N802, N803
        return self._free("device", devPtr)

    def cudaFreeHost(self, ptr):  # noqa: N802
        return self._free("pinned", ptr)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        if self._failing("cudaMemcpyAsync"):
            return (self._failing("cudaMemcpyAsync"),)
        self.copies.append({"dst": int(dst), "src": int(src), "count": count, "kind": cudaMemcpyKind(kind),
                            "stream": int(stream)})
        self.enqueue(stream, lambda: ctypes.memmove(int(dst), int(src), count))
        return (OK,)

    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        if self._failing("cudaStreamCreateWithFlags"):
            return self._failing("cudaStreamCreateWithFlags"), None
        handle = next(self._handles)
        self.streams[handle] = {"flags": flags, "capture": None, "synchronized": 0, "destroyed": False}
        return OK, handle

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        state = self.streams[int(stream)]
        if state["capture"] is not None:  # illegal while capturing, and it invalidates the capture (as CUDA does)
            state["invalidated"] = True
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        state["synchronized"] += 1
        return (OK,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.streams[int(stream)]["destroyed"] = True
        return (OK,)

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        from dronseg_edge.runtime.cuda_runtime import CAPTURE_LOCK

        self.captures.append({"stream": int(stream), "mode": cudaStreamCaptureMode(mode), "locked": CAPTURE_LOCK.locked()})
        self.streams[int(stream)]["capture"] = []
        return (OK,)

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        state = self.streams[int(stream)]
        work, state["capture"] = state["capture"], None
        if self.capture_fails or state.pop("invalidated", False):
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        handle = next(self._handles)
        self.graphs[handle] = work
        return OK, handle

    def cudaGraphInstantiate(self, graph, flags):  # noqa: N802
        handle = next(self._handles)
        self.executables[handle] = self.graphs[int(graph)]
        return OK, handle

    def cudaGraphLaunch(self, graphExec, stream):  # noqa: N802, N803
        self.launched.append((int(graphExec), int(stream)))
        for work in self.executables[int(graphExec)]:
            work()
            self.ran.append({"stream": int(stream), "graph": True})
        return (OK,)

    def cudaGraphExecDestroy(self, graphExec):  # noqa: N802, N803
        del self.executables[int(graphExec)]
        return (OK,)

    def cudaGraphDestroy(self, graph):  # noqa: N802
        del self.graphs[int(graph)]
        return (OK,)
