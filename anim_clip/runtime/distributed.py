"""One process or many: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK, and the same code runs
DistributedDataParallel (NCCL on GPUs, gloo on CPU). Rank 0 logs and writes checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate each rank's rows in rank order (rows may differ in number across ranks)."""
        if not self.enabled:
            return tensor
        sizes = [torch.zeros((), dtype=torch.long, device=tensor.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor(tensor.shape[0], device=tensor.device))
        padded = torch.zeros((int(max(sizes)), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(n)] for p, n in zip(parts, sizes)])


def default_device() -> torch.device:
    """This process's GPU (its torchrun local rank's), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def default_shard() -> tuple[int, int]:
    """``(shard, shards)``: one shard per torchrun rank; a single process does everything."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup_distributed(device: torch.device | None = None) -> Distributed:
    """Join the process group when launched by torchrun; otherwise a single process."""
    rank, world = default_shard()
    device = device or default_device()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, device)
