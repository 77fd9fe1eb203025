"""train/setup: what the loaders take from the global RNG (exact resume depends on it)."""

from __future__ import annotations

import torch

from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.distributed import DistContext
from dronseg_edge.train.setup import build_loaders, prepare_data


def test_starting_the_loaders_workers_leaves_the_global_rng_alone(synth_root, tmp_path):
    # With persistent workers each loader draws its base seed once per run: from the global RNG, a resumed
    # run would draw once more than an uninterrupted one, and dropout on the CPU would then differ.
    cfg = TrainConfig(data=str(synth_root), out=str(tmp_path / "run"), model="lraspp_mobilenet_v3_large",
                      weights="none", size=(96, 64), batch=4, device="cpu", workers=1, seed=0, tensorboard=False,
                      plots=False)
    loaders = build_loaders(cfg, prepare_data(cfg, None, lambda _m: None), DistContext())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for loader in (loaders.train, loaders.val):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)
