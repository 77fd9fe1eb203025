"""torchrun support: one process per GPU (or CPU processes with gloo), only rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dronseg_edge.devices import resolve_device
from dronseg_edge.errors import DronsegError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str) -> DistContext:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); NCCL on CUDA, gloo on CPU."""
    device = resolve_device(device_name)
    try:  # a WORLD_SIZE left in the environment (a shell, a job's), without torchrun's other variables
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return DistContext(device=device)
        rank = int(os.environ["RANK"])
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():  # ValueError: MASTER_ADDR or MASTER_PORT missing
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    except (KeyError, ValueError) as exc:
        raise DronsegError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but not as torchrun sets it ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}): launch with `torchrun --nproc-per-node N -m dronseg_edge train "
                           "...`, or unset WORLD_SIZE") from None
    return DistContext(rank, world_size, device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
