"""Checks that need 2 real gloo processes, launched by the tests through torchrun.

``launch(mode, out, *args)`` starts ``python -m torch.distributed.run --nproc-per-node 2 ddp_probe.py mode out args``;
each mode writes what it saw (as JSON, from rank 0) to ``out`` for the test to assert on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    """The command line that runs ``args`` (a module: ``-m name ...``, or a script) in 2 processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), *args]


def launch(mode: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(torchrun(__file__, mode, str(out), *args), capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(out).read_text())


def _gather(tensor):
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def unfreeze(out: Path, data: str, run: str) -> None:
    """Train with the first stages frozen for one epoch and unfrozen for the next; after each epoch record
    whether a stem parameter (frozen, then unfrozen) is the same on both ranks and where it stands."""
    import torch.distributed as dist

    import dronseg_edge.train.fit as fit_module
    from dronseg_edge.models import backbone_stages
    from dronseg_edge.train.config import TrainConfig

    real_epoch, seen = fit_module.train_one_epoch, []

    def probed_epoch(net, *args, **kwargs):
        result = real_epoch(net, *args, **kwargs)
        param = next(backbone_stages(net.module)[0][0].parameters())
        ranks = _gather(param.detach())
        seen.append({"requires_grad": param.requires_grad, "rank_gap": (ranks[0] - ranks[1]).abs().max().item(),
                     "value": param.detach().double().sum().item()})
        return result

    fit_module.train_one_epoch = probed_epoch
    # The ranks draw different shards of the train split, so unsynchronised gradients would show.
    cfg = TrainConfig(data=data, out=run, model="lraspp_mobilenet_v3_large", weights="none", size=(96, 64), epochs=2,
                      batch=4, lr=0.01, optimizer="sgd", scheduler="constant", bn_momentum=0.1, freeze_stages=2,
                      unfreeze_epoch=1, max_steps_per_epoch=3, device="cpu", workers=0, tensorboard=False, plots=False)
    fit_module.fit(cfg, log=lambda _m: None)
    if int(os.environ["RANK"]) == 0:
        Path(out).write_text(json.dumps(seen))
    assert not dist.is_initialized()


def metrics_empty_rank(out: Path) -> None:
    """Rank 1 sees no validation image; the reduced scores must equal rank 0's alone, on both ranks."""
    import torch
    import torch.distributed as dist

    from dronseg_edge.metrics import SegmentationMetrics

    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        target = torch.tensor([[[0, 0, 1], [2, 2, 1]]])
        pred = torch.tensor([[[0, 1, 1], [2, 0, 1]]])
        metrics, alone = SegmentationMetrics(num_classes=3), SegmentationMetrics(num_classes=3)
        alone.update(pred, target)
        if rank == 0:
            metrics.update(pred, target)
        metrics.all_reduce()
        scores = metrics.compute()
        gathered = [None, None]
        dist.all_gather_object(gathered, {k: scores[k] for k in ("confusion", "images", "competition")})
    finally:
        dist.destroy_process_group()
    if rank == 0:
        expected = alone.compute()
        Path(out).write_text(json.dumps({"ranks": gathered, "expected": {k: expected[k] for k in ("confusion", "images", "competition")}}))


if __name__ == "__main__":
    {"unfreeze": unfreeze, "metrics_empty_rank": metrics_empty_rank}[sys.argv[1]](*sys.argv[2:])
