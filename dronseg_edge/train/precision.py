"""Mixed precision of a training run: the autocast dtype, and its GradScaler across resumes."""

from __future__ import annotations

import torch

from dronseg_edge.errors import DronsegError


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on the CPU."""
    if mode == "auto":
        return None if device.type != "cuda" else torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[mode]


def make_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """Enabled for fp16 on CUDA only; disabled it is a pass-through whose state is ``{}``."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == "cuda")


def restore_scaler(scaler: torch.amp.GradScaler, state: dict | None) -> None:
    """Load a checkpoint's scaler state when both sides have one, else keep the fresh scaler.

    ``--amp auto`` picks fp16 or bf16 by GPU, so a run can resume with a scaler it saved without
    (state ``{}``, which GradScaler refuses) or without the one it saved (nothing to restore into).
    """
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


def check_amp(mode: str, device: torch.device, resumed: bool = False) -> None:
    """fp16 needs loss scaling, which runs only on CUDA here (``make_scaler``): elsewhere small
    gradients (Dice's in particular) underflow to zero and training silently stalls."""
    if mode != "fp16" or device.type == "cuda":
        return
    fix = "resume it on a CUDA GPU (--device cuda)" if resumed else f"use --amp bf16 or --amp off on the {device.type}"
    raise DronsegError(f"--amp fp16 on the {device.type} trains without a GradScaler (gradients underflow): {fix}")
