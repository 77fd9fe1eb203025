"""TensorRT: its version, and whether it really builds an engine (a one-layer network) on this GPU.

Importing is not enough: the bindings import on machines whose GPU or driver TensorRT cannot use,
and the first sign is then an export that fails after minutes of ONNX work. The network is built
with the layer API, not the ONNX parser, so this check needs neither onnx nor a file. Every name
used here exists in the TensorRT 8.6, 10.3 and 11.4 bindings (tests/checks/test_checks_libraries.py).
A TensorRT older than the package's floor (8.6) is a FAIL naming the JetPack that has a usable one.
"""

from __future__ import annotations

import time
from typing import Iterator

from dronseg_edge.checks import jetson
from dronseg_edge.checks.base import FAIL, OK, WARN, Check, first_line, import_optional
from dronseg_edge.runtime import tensorrt_env

JETSON_HINT = ("JetPack's TensorRT is a system package: create the venv with --system-site-packages "
               "(python3 -m venv --system-site-packages .venv)")
PIP_HINT = ("pip install 'dronseg-edge[trt]' (x86-64, CUDA 13 driver) or 'dronseg-edge[trt-cu12]' (CUDA 12 driver); "
            "on a Jetson TensorRT comes with JetPack and the venv must be created with --system-site-packages")


def tensorrt_checks() -> Iterator[Check]:
    trt, why = import_optional("tensorrt")
    if trt is None:
        hint = JETSON_HINT if jetson.is_jetson() else PIP_HINT
        yield Check("tensorrt", WARN, f"{why}: no .engine export or inference here; .onnx files run through ONNX Runtime ({hint})")
        return
    yield build_check(trt)


def build_check(trt) -> Check:
    version = str(getattr(trt, "__version__", "?"))
    too_old = tensorrt_env.version_problem(trt)
    if too_old:
        return Check("tensorrt", FAIL, too_old)
    start = time.perf_counter()
    try:
        plan, messages = build_tiny_engine(trt)
    except Exception as exc:
        return Check("tensorrt", FAIL, f"{version} imports but cannot build an engine: {first_line(exc)}")
    if plan is None:
        shown = messages[-1] if messages else "no message from TensorRT"
        return Check("tensorrt", FAIL, f"{version} imports but cannot build an engine: {shown}")
    return Check("tensorrt", OK, f"{version}, built a one-layer engine in {time.perf_counter() - start:.1f} s")


def build_tiny_engine(trt) -> tuple[object | None, list[str]]:
    """(serialized plan or None, TensorRT's error messages) for y = ReLU(x), x: float32 [1, 4]."""

    class Collector(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, message):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.messages.append(str(message))

    logger = Collector()
    builder = trt.Builder(logger)
    # Explicit batch on 8.6; strong typing where it exists (11.x requires it).
    network = builder.create_network(tensorrt_env.network_flags(trt, strongly_typed=True))
    x = network.add_input("x", trt.float32, (1, 4))
    relu = network.add_activation(x, trt.ActivationType.RELU)
    network.mark_output(relu.get_output(0))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 24)
    return builder.build_serialized_network(network, config), logger.messages
