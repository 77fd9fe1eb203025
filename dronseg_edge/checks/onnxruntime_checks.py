"""ONNX Runtime: its version, and every execution provider it lists, tried with a real session.

The provider list alone proves nothing: onnxruntime-gpu lists CUDA and TensorRT even when their
libraries cannot load, and then quietly runs the session on the CPU. Each provider therefore gets a
one-node model (y = Relu(x), x: float32 [1, 4]; 100 bytes, shipped with the package as
``probe_relu.onnx``, so the core install tries its providers without the ``onnx`` package), and the
check looks at which provider the session really got and whether it computed the right answer.
The reason for a fallback is only printed by ONNX Runtime's native logger, so its stderr is captured
at the file-descriptor level for that moment. Azure's provider is not tried: it only forwards to
remote endpoints and runs nothing here.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import io
import os
import sys
import tempfile
import warnings
from typing import Iterator

from dronseg_edge.checks.base import FAIL, OK, WARN, Check, first_line, import_optional
from dronseg_edge.errors import docs_url
from dronseg_edge.machine import installed_version, onnxruntime_for_numpy_1

JETSON_WHEELS = "nvidias-torch-and-onnx-runtime-wheels"  # the section of docs/jetson.md
INSTALL = (f"pip install 'dronseg-edge[ort]' (CPU) or 'dronseg-edge[ort-gpu]'; on a Jetson, NVIDIA's onnxruntime-gpu "
           f"build: {docs_url('jetson.md', JETSON_WHEELS)}")
NOT_TRIED = {"AzureExecutionProvider"}  # forwards to remote endpoints, runs no layers here
PROBE_MODEL = "probe_relu.onnx"


def short(provider: str) -> str:
    return provider.replace("ExecutionProvider", "")


def onnxruntime_checks() -> Iterator[Check]:
    ort, why = import_optional("onnxruntime")
    if ort is None:
        yield Check("onnxruntime", WARN, f"{why}: .onnx files cannot run here ({onnxruntime_for_numpy_1() or INSTALL})",
                    {"version": None})
        return
    providers = list(ort.get_available_providers())
    version = str(ort.__version__)
    yield Check("onnxruntime", OK, f"{version} (providers: {', '.join(map(short, providers)) or 'none'})",
                {"version": version, "providers": providers})
    both = [name for name in ("onnxruntime", "onnxruntime-gpu") if installed_version(name)]
    if len(both) > 1:
        yield Check("onnxruntime install", WARN, f"{' and '.join(both)} are both installed and share one module, so "
                                                 "one silently overwrote the other: pip uninstall them both, then install one")
    model = probe_model()
    for provider in providers:
        if provider not in NOT_TRIED:
            yield provider_check(ort, provider, model)


def probe_model() -> bytes:
    """The serialized test model, y = Relu(x) with x: float32 [1, 4] (opset 13, IR version 8, which the older
    ONNX Runtime builds on Jetsons load too), from the package's data."""
    return importlib.resources.files(__package__).joinpath(PROBE_MODEL).read_bytes()


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 while the block runs (lines, filled at exit)."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (a closed stderr): run without capturing
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line.strip() for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())


def provider_check(ort, provider: str, model: bytes) -> Check:
    import numpy as np

    name = f"ort {short(provider)}"
    x = np.array([[-1.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the reason a provider did not start
    error, got, output = None, [], None
    # ONNX Runtime prints its own fallback ("EP Error ...", the TensorRT provider without TensorRT) on stdout,
    # which is where `checks --json -` writes its JSON.
    with native_stderr() as logged, warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(io.StringIO()) as printed:
        warnings.simplefilter("always")
        try:
            session = ort.InferenceSession(model, sess_options=options, providers=[provider])
            got = list(session.get_providers())
            output = session.run(None, {"x": x})[0]
        except Exception as exc:
            error = first_line(exc)
    logged = logged + [str(w.message) for w in caught] + [line.strip() for line in printed.getvalue().splitlines()]
    failed = FAIL if provider == "CPUExecutionProvider" else WARN  # others fall back to the CPU, which still works
    facts = {"provider": provider, "runs": False}
    if error is not None:
        return Check(name, failed, f"listed, but a session does not start: {error}", facts)
    if not got or got[0] != provider:
        # The most telling line of the native log: the last error, else the last line.
        errors = [line for line in logged if "error" in line.lower() or "fail" in line.lower()]
        why = (errors or logged or [""])[-1][-240:] or "its libraries did not load"
        return Check(name, failed, f"listed, but the session fell back to {', '.join(map(short, got)) or 'nothing'}: {why}", facts)
    if output is None or not np.array_equal(output, np.maximum(x, 0)):
        return Check(name, failed, f"a session starts but computed {output!r} for Relu({x.tolist()})", facts)
    return Check(name, OK, "session started and ran a test model", {**facts, "runs": True})
