"""The runtime half of ``tensorrt`` on the CPU, for the TensorRT backend's tests.

An "engine" whose work is done through the addresses the backend binds (so wrong bindings give
wrong numbers), queued on the stream handle ``execute_async_v3`` gets through a FakeCudart
(tests/runtime/fake_cudart.py): run at once, or recorded into a graph while that stream captures,
with the addresses of that moment baked in, as a GPU kernel's would be.

- ``io="tensors"``: input ``images`` (N, 3, H, W) of ``dtype`` (FLOAT or HALF), output ``logits``
  of the same shape and type, 2 x the input.
- ``io="frames"``: input ``frames`` (N, H, W, 3) uint8, outputs ``mask`` (N, H, W) uint8 = the first
  channel // 22 (a class 0..11) and ``confidence`` (N, H, W) uint8 = 255 - the first channel.

The engine declares every dimension but the input's 3 channels open (-1), as a dynamic profile does;
``declared`` ({tensor name: shape}) overrides that, e.g. to make an engine whose metadata lies.
"""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np

_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "UINT8": np.uint8}


def view(address: int, shape: tuple, dtype) -> np.ndarray:
    """A numpy view of memory at ``address`` (the fake's device memory is host memory)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class FakeTensorRT(types.ModuleType):
    def __init__(self, cudart, version: str = "10.3.0", io: str = "tensors", dtype: str = "FLOAT",
                 accepts=lambda shape: True, execute_ok: bool = True, declared: dict | None = None):
        super().__init__("tensorrt")
        self.__version__ = version
        self.launches: list[dict] = []  # every execute_async_v3: stream, shape, addresses
        self.contexts: list = []
        self.runtimes: list = []  # every Runtime made (its DLA_core as the backend left it)
        fake = self
        self.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT32="INT32", INT8="INT8", UINT8="UINT8",
                                              BOOL="BOOL", INT64="INT64", BF16="BF16")
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        known = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8,
                 "BOOL": np.bool_, "INT64": np.int64}

        def nptype(dtype):  # as tensorrt.nptype: TypeError for BF16 and FP8, which numpy lacks
            if dtype not in known:
                raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
            return known[dtype]

        self.nptype = nptype
        names = ["images", "logits"] if io == "tensors" else ["frames", "mask", "confidence"]
        dtypes = {n: dtype for n in names} if io == "tensors" else {n: "UINT8" for n in names}

        def output_shape(shape):
            return shape if io == "tensors" else shape[:3]

        def compute(shape, addresses):
            source = view(addresses[names[0]], shape, _NUMPY[dtypes[names[0]]])
            if io == "tensors":
                view(addresses["logits"], shape, source.dtype)[:] = source * 2
            else:
                view(addresses["mask"], shape[:3], np.uint8)[:] = source[..., 0] // 22
                view(addresses["confidence"], shape[:3], np.uint8)[:] = 255 - source[..., 0]

        class Context:
            def __init__(self):
                self.shape, self.addresses = None, {}
                fake.contexts.append(self)

            def set_input_shape(self, name, shape):
                if not accepts(tuple(shape)):
                    return False
                self.shape = tuple(shape)
                return True

            def set_tensor_address(self, name, address):
                self.addresses[name] = int(address)

            def get_tensor_shape(self, name):
                return self.shape if name == names[0] else output_shape(self.shape)

            def execute_async_v3(self, stream_handle):
                shape, addresses = self.shape, dict(self.addresses)
                fake.launches.append({"stream": stream_handle, "shape": shape, "addresses": addresses})
                if not fake.execute_ok:
                    return False
                cudart.enqueue(stream_handle, lambda: compute(shape, addresses))
                return True

        class Engine:
            num_io_tensors = len(names)

            def get_tensor_name(self, index):
                return names[index]

            def get_tensor_mode(self, name):
                return "INPUT" if name == names[0] else "OUTPUT"

            def get_tensor_dtype(self, name):
                return dtypes[name]

            def get_tensor_shape(self, name):
                if name in (declared or {}):
                    return declared[name]
                if name == names[0]:
                    return (-1, 3, -1, -1) if io == "tensors" else (-1, -1, -1, 3)
                return (-1, -1, -1, -1) if io == "tensors" else (-1, -1, -1)

            def create_execution_context(self):
                return Context()

        class Runtime:
            def __init__(self, logger):
                self.DLA_core = -1  # TensorRT's default: no DLA core
                fake.runtimes.append(self)

            def deserialize_cuda_engine(self, plan):
                return Engine()

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity):
                pass

        self.Logger, self.Runtime = Logger, Runtime
        self.execute_ok = execute_ok


BUILT = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def write_engine(folder, name: str = "best_fp16_h100-80gb-hbm3_sm90_trt10.3.0.engine", **info):
    """An engine file (fake plan bytes) and its sidecar, built per ``BUILT``; ``info`` overrides ModelInfo fields."""
    from dronseg_edge.metadata import ModelInfo, write_engine_sidecar

    path = folder / name
    path.write_bytes(b"plan bytes")
    fields = {"arch": "lraspp_mobilenet_v3_large", "input_size": (96, 64), "precision": "fp16",
              "extra": {"tensorrt": dict(BUILT), "source_checkpoint": "/runs/a/weights/best.pt"}, **info}
    write_engine_sidecar(path, ModelInfo(**fields))
    return path


def install(monkeypatch, cudart_options: dict | None = None, **trt_options):
    """A FakeCudart and a FakeTensorRT on it, both installed: (cudart, trt)."""
    from fake_cudart import FakeCudart

    cudart = FakeCudart(**(cudart_options or {})).install(monkeypatch)
    trt = FakeTensorRT(cudart, **trt_options)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return cudart, trt
