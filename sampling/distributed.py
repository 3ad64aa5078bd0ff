"""Processes of a sampling run: rank and world size from torchrun's environment, the process group, barriers.

One process without torchrun (no process group at all); several under torchrun: nccl on GPUs, gloo on CPU.
Sampling needs no collectives beyond barriers: every process writes its own batches (see sampling/shards.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(hours=2)             # a barrier may wait for the slowest process's share of the batches


@dataclass
class Dist:
    """This process's place in the run; `initialized` once a process group exists."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized: bool = False

    def barrier(self, device: torch.device) -> None:
        if not self.initialized:
            return
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        if self.initialized:
            dist.destroy_process_group()
            self.initialized = False


def dist_env() -> Dist:
    """Rank, world size and local rank from torchrun's environment (one process without it)."""
    return Dist(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(env: Dist, device: torch.device) -> None:
    """A process group only under torchrun with several processes: nccl on GPUs, gloo on CPU."""
    if env.world <= 1:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    env.initialized = True
