"""train/rng.py: the loaders' worker set-up, and --deterministic's seeding."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch
from torch.utils.data import DataLoader

from dronseg_edge.train.rng import seed_everything, worker_init


def _stop(signum, _frame):  # the CLI's SIGTERM handler (cli/main.py)
    raise KeyboardInterrupt(signal.Signals(signum).name)


@pytest.mark.parametrize("start", ["fork", "forkserver"])  # forkserver: Python 3.14's default, no handler inherited
def test_a_sigterm_to_the_whole_process_group_ends_a_loader_worker_quietly(start):
    """`timeout` and systemd signal every process of the group: torch's worker killed itself (-15), and its parent
    then failed with "DataLoader worker is killed by signal" (exit 1) instead of stopping as on Ctrl-C (130)."""
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        batches = iter(DataLoader(range(8), num_workers=1, worker_init_fn=worker_init, persistent_workers=True,
                                  multiprocessing_context=start))
        next(batches)  # the worker has run worker_init
        worker = batches._workers[0]
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # not from its parent
        worker.join(30)
        assert worker.exitcode == 0
        del batches
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_deterministic_forces_deterministic_kernels_and_a_later_false_turns_them_off(monkeypatch):
    """--deterministic: torch's deterministic algorithms (warnings only), cuDNN's too, and cuBLAS's workspace set."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        seed_everything(3, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.initial_seed() == 3
        seed_everything(4)  # a second training in the same process (Python API): they stayed on
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
        assert torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]
