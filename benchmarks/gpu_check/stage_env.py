"""Stage env: what the machine is (GPU, driver, clocks, memory, bf16), the versions, and what really runs.

"Listed" is not "works": ONNX Runtime lists providers it cannot start (TensorRT without its
libraries, docs/facts.md#gpu-machine), so a real CUDA session is attempted on a one-node model, and
TensorRT is imported rather than looked up.
"""

from __future__ import annotations

import shutil
import subprocess

import torch

from benchmarks.gpu_check.report import StageContext, run_stage
from dronseg_edge.bench.system import system_info


def nvidia_smi() -> dict:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"available": False, "reason": "nvidia-smi not found"}
    fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,temperature.gpu"
    try:
        out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "reason": f"nvidia-smi failed: {type(exc).__name__}"}
    return {"available": True, "fields": fields.split(","), "rows": [line.split(", ") for line in out.splitlines()]}


def onnxruntime_cuda_session() -> dict:
    """Build a one-node ONNX model in memory and ask for the CUDA provider; report what really ran it."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except Exception as exc:  # missing or broken install: that is the finding
        return {"ok": False, "reason": f"import failed: {type(exc).__name__}: {exc}"}
    result = {"version": ort.__version__, "module": ort.__file__, "providers": ort.get_available_providers()}
    if "CUDAExecutionProvider" not in result["providers"]:
        return {**result, "ok": False, "reason": "CUDAExecutionProvider not in this onnxruntime (a CPU build)"}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)  # older runtimes refuse newer IR versions
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        import numpy as np

        out = session.run(None, {"x": -np.ones((1, 3, 4, 4), np.float32)})[0]
    except Exception as exc:
        return {**result, "ok": False, "reason": f"session failed: {str(exc).strip().splitlines()[0][:200]}"}
    used = session.get_providers()[0]
    ok = used == "CUDAExecutionProvider" and float(out.max()) == 0.0
    return {**result, "ok": ok, "used": used, "reason": "" if ok else f"fell back to {used}"}


def tensorrt_import() -> dict:
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or bindings whose libraries are missing (OSError)
        return {"importable": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
    return {"importable": True, "version": tensorrt.__version__}


def body(ctx: StageContext) -> None:
    with ctx.timed("describe"):
        describe(ctx)


def describe(ctx: StageContext) -> None:
    report = ctx.report
    cuda = torch.cuda.is_available()
    report.figure("cuda_available", cuda)
    device = torch.device("cuda") if cuda else torch.device("cpu")
    info = report.figure("system", system_info(device))
    if cuda:
        props = torch.cuda.get_device_properties(0)
        report.figure("gpu", {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                              "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
                              "bf16_supported": torch.cuda.is_bf16_supported(), "driver": info["device"].get("driver"),
                              "clocks_mhz": info["device"].get("clocks"), "device_count": torch.cuda.device_count()})
    report.figure("nvidia_smi", nvidia_smi())
    report.figure("onnxruntime", onnxruntime_cuda_session())
    report.figure("tensorrt", tensorrt_import())
    if ctx.plan.cuda and not cuda:
        report.finish("failed", "GPU plan but torch sees no CUDA device")


if __name__ == "__main__":
    run_stage("env", body)
