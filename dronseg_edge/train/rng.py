"""Seeding and RNG state capture, in a form ``torch.load(weights_only=True)`` accepts."""

from __future__ import annotations

import os
import random
import signal
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; ``deterministic`` also forces deterministic kernels (slower), and False turns
    them off again (an earlier training in the same process may have turned them on)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # fixed input size: let cuDNN pick the fastest kernels


def capture_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    if not state:
        return
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def worker_init(worker_id: int) -> None:
    """DataLoader workers: derive python/numpy seeds from torch's per-worker seed; SIGTERM ends them as Ctrl-C does.

    torch's worker kills itself with a SIGTERM not sent by its parent, so a whole process group stopped (`timeout`,
    systemd's KillMode=control-group) failed in the parent with "DataLoader worker is killed by signal" (exit 1, a
    traceback) instead of exit 130; raised as KeyboardInterrupt, the worker's loop ends it quietly."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
