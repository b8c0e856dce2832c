"""Multi-process training through torchrun (DistributedDataParallel): the process group.

`torchrun --nproc_per_node=N -m lra.train ...` sets WORLD_SIZE, RANK and LOCAL_RANK; we only join
the process group torchrun describes (NCCL on CUDA, Gloo on CPU) and let DDP average gradients.
Without torchrun everything below is a one-process no-op. What each rank reads, and
its random stream, are `lra.sampling`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes files, logs and the progress bar."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over processes."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


def init_from_env(use_cuda: bool) -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    local_rank = int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        if use_cuda:
            # Bind this process to its GPU first: collectives otherwise run on cuda:0 for every
            # rank (and may hang).
            torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend="gloo")
    return Dist(rank=dist.get_rank(), world=world, local_rank=local_rank)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

