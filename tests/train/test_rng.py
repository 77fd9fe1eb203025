"""train/rng.py: the loaders' worker set-up."""

from __future__ import annotations

import signal
import subprocess

import pytest
from torch.utils.data import DataLoader

from dronseg_edge.train.rng import worker_init


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
