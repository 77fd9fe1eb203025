"""The verdict of ``dronseg-edge checks``: which backends can run a model here, FAIL when none can.

Read from the other groups' lines, after they ran: an ONNX Runtime provider whose test session ran,
TensorRT that built an engine together with cuda-bindings for this driver (the engine runner's CUDA
binding), torch with torchvision (checkpoints). A machine where none of them works is FAIL, so
`checks` exits 1 there, while each missing library alone is only a WARN.
"""

from __future__ import annotations

from dronseg_edge.checks.base import FAIL, OK, Check
from dronseg_edge.errors import docs_url

INSTALL = ("pip install 'dronseg-edge[ort]' (ONNX Runtime on the CPU), or 'dronseg-edge[ort-gpu]' / 'dronseg-edge[trt]' "
           f"on an NVIDIA GPU; on a Jetson: {docs_url('jetson.md', 'step-by-step-on-jetpack-6')}")


def backends_check(results: list[Check]) -> Check:
    """One line naming what can run a model (``facts['backends']``: 'onnxruntime', 'tensorrt', 'torch')."""
    ok = {check.name for check in results if check.status == OK}
    providers = [str(check.facts["provider"]).replace("ExecutionProvider", "") for check in results
                 if check.name.startswith("ort ") and check.status == OK and check.facts.get("runs")]
    found, shown = [], []
    if providers:
        found.append("onnxruntime")
        shown.append(f"onnxruntime ({', '.join(providers)}): .onnx")
    if {"tensorrt", "cuda-bindings"} <= ok:
        found.append("tensorrt")
        shown.append("tensorrt: .engine")
    if {"torch", "torchvision"} <= ok:
        found.append("torch")
        shown.append("torch: .pt")
    facts = {"backends": found, "onnxruntime_providers": providers}
    if not found:
        return Check("backends", FAIL, f"nothing here can run a model (no ONNX Runtime session ran, no TensorRT engine "
                                       f"was built, no torch with torchvision): {INSTALL}", facts)
    return Check("backends", OK, "; ".join(shown), facts)
