"""gpu-check's ort-cuda stage compares the Segmenter's torch and host pre/post on one ONNX file.

On the GPU that comparison decides which path a GPU with torch takes; here it runs on the CPU, where
both paths exist too, to prove the function measures and judges (it runs only with staged
onnxruntime-gpu wheels on the device, so nothing else would run it before a GPU session).
"""

from types import SimpleNamespace

import pytest

from benchmarks.gpu_check.stage_ort import compare_prepost
from dronseg_edge.export import export_artifact


@pytest.fixture(scope="module")
def onnx_file(trained_checkpoint, tmp_path_factory):
    return export_artifact(trained_checkpoint, fmt="onnx", precision="fp32", parity=False, device="cpu",
                           out_dir=tmp_path_factory.mktemp("prepost")).path


def _ctx(size):
    return SimpleNamespace(plan=SimpleNamespace(device="cpu", ort_size=size, cuda=False))


def test_both_paths_are_timed_and_their_masks_compared(onnx_file):
    out = compare_prepost(_ctx((96, 64)), onnx_file, frames=8)
    assert out["status"] == "passed", out
    assert out["frames"] == 3 and out["torch_ms"] > 0 and out["host_ms"] > 0
    assert out["faster"] in ("torch", "host") and 0.9 <= out["mask_agreement_min"] <= 1.0
    assert out["frame"] == "192x128"


def test_a_failure_is_reported_not_raised(tmp_path):
    out = compare_prepost(_ctx((96, 64)), tmp_path / "missing.onnx", frames=8)
    assert out["status"] == "failed" and "missing.onnx" in out["reason"]
