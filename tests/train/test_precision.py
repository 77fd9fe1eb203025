"""Mixed precision settings: the scaler across resumes, and fp16 only where a GradScaler runs."""

from __future__ import annotations

import pytest
import torch

from dronseg_edge.errors import DronsegError
from dronseg_edge.train.precision import check_amp, make_scaler, restore_scaler

CPU = torch.device("cpu")


def _enabled_scaler(scale: float = 2.0**16) -> torch.amp.GradScaler:
    # Stands in for an fp16 GPU run's scaler; a CPU GradScaler can be enabled on a machine without CUDA.
    return torch.amp.GradScaler("cpu", enabled=True, init_scale=scale)


def test_fp16_resume_of_a_run_saved_without_a_scaler_starts_a_fresh_one():
    # --amp auto: saved on a bf16 GPU (or the CPU), resumed on an fp16-only GPU.
    scaler = _enabled_scaler()
    restore_scaler(scaler, {})
    restore_scaler(scaler, None)  # a checkpoint without the key
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16


def test_scaler_state_is_restored_when_both_sides_have_one():
    scaler = _enabled_scaler()
    restore_scaler(scaler, _enabled_scaler(512.0).state_dict())
    assert scaler.get_scale() == 512.0


def test_run_saved_with_a_scaler_resumes_without_one():
    scaler = make_scaler(None, CPU)
    restore_scaler(scaler, _enabled_scaler(512.0).state_dict())
    assert not scaler.is_enabled() and scaler.state_dict() == {}


def test_make_scaler_only_for_fp16_on_cuda():
    assert not make_scaler(torch.float16, CPU).is_enabled()
    assert not make_scaler(torch.bfloat16, CPU).is_enabled()
    assert not make_scaler(None, CPU).is_enabled()


def test_fp16_on_the_cpu_is_refused():
    with pytest.raises(DronsegError, match=r"--amp fp16.*--amp bf16 or --amp off") as error:
        check_amp("fp16", CPU)
    assert "\n" not in str(error.value)
    with pytest.raises(DronsegError, match="resume it on a CUDA GPU"):  # a resumed run keeps its --amp
        check_amp("fp16", CPU, resumed=True)
    for mode in ("auto", "bf16", "off"):
        check_amp(mode, CPU)
    check_amp("fp16", torch.device("cuda", 0))
