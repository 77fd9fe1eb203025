"""train/optim.py: the learning-rate schedule runs its whole length, however short."""

from __future__ import annotations

import pytest
import torch

from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.optim import build_scheduler


def stepped(cfg: TrainConfig, steps: int, key: str = "lr") -> tuple[list[float], torch.optim.Optimizer]:
    """``key`` of SGD's one parameter group before each of ``steps`` steps of ``cfg``'s schedule, and the optimiser."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr, momentum=cfg.momentum)
    scheduler = build_scheduler(optimizer, cfg, steps)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0][key])
        optimizer.step()
        scheduler.step()
    return seen, optimizer


@pytest.mark.parametrize("pct_start", [0.1, 0.05, 0.25, 0.5])
def test_onecycle_runs_every_length(tmp_path, pct_start):
    # 10 steps at 0.1 (20 at 0.05, 4 at 0.25, 2 at 0.5) put OneCycleLR's warm-up end at step 0: it divided by zero.
    cfg = TrainConfig(data=str(tmp_path), scheduler="onecycle", lr=0.01, pct_start=pct_start)
    for total in range(1, 41):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        scheduler = build_scheduler(optimizer, cfg, total)
        rates = [optimizer.param_groups[0]["lr"]]
        for _ in range(total):
            optimizer.step()
            scheduler.step()
            rates.append(optimizer.param_groups[0]["lr"])
        assert all(0 <= rate <= cfg.lr * (1 + 1e-9) for rate in rates)
        if total * pct_start == 1 and total > 2:  # the lengths that divided by zero: the peak at step 1
            assert rates[1] == pytest.approx(cfg.lr) and rates[0] < rates[1] > rates[2]


@pytest.mark.parametrize("momentum, low, high", [(0.9, 0.85, 0.95), (0.5, 0.45, 0.55), (0.98, 0.93, 0.99)])
def test_onecycle_cycles_the_momentum_given(tmp_path, momentum, low, high):
    """OneCycleLR cycled SGD's momentum over its own 0.85..0.95, so --momentum 0.5 trained as the default 0.9 did."""
    seen, _ = stepped(TrainConfig(data=str(tmp_path), momentum=momentum), 20, "momentum")
    assert min(seen) == pytest.approx(low) and max(seen) == pytest.approx(high)
    if momentum == 0.9:  # the default trains exactly as before
        assert (min(seen), max(seen)) == (0.85, 0.95)


def test_constant_keeps_the_rate_given_every_step(tmp_path):
    rates, optimizer = stepped(TrainConfig(data=str(tmp_path), scheduler="constant", lr=0.01), 5)
    assert rates == [0.01] * 5 and optimizer.param_groups[0]["lr"] == 0.01
