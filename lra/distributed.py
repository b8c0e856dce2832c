"""Multi-process training through torchrun (DistributedDataParallel), and the data order.

`torchrun --nproc_per_node=N -m lra.train ...` sets WORLD_SIZE, RANK and LOCAL_RANK; we only join
the process group torchrun describes (NCCL on CUDA, Gloo on CPU) and let DDP average gradients.
Without torchrun everything below is a one-process no-op.

The data order is a function of (seed, step) alone: global batch `step` is a slice of the
permutation of epoch `step // batches_per_epoch`, and each rank takes its share of that batch.
So a run resumed from a checkpoint sees exactly the batches it would have seen, and the global
batches are the same whatever the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from attention_zoo.draws import stable_seed


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


def reseed(seed: int, rank: int, step: int) -> None:
    """Seed torch's RNG (dropout, on CPU and CUDA) from (seed, rank, step).

    Called at the start of every training step, so a run resumed at any step boundary (an
    evaluation's checkpoint, or a preemption's) continues with exactly the random stream it
    would have had, with no RNG state to save; each rank draws its own dropout masks.
    """
    torch.manual_seed(stable_seed(seed, rank, step))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class StepBatches(torch.utils.data.Sampler):
    """Index batches for this rank, from global batch `start_step` on, forever.

    n: dataset size, at least global_batch; global_batch: examples per optimiser step over all
    ranks (a multiple of world). Epochs drop their last partial batch so every step has a full
    global batch.
    """

    def __init__(self, n: int, global_batch: int, seed: int, start_step: int, d: Dist):
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.start_step, self.d = start_step, d
        self.per_epoch = n // global_batch

    def __iter__(self):
        step = self.start_step
        while True:
            epoch, i = divmod(step, self.per_epoch)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            batch = torch.randperm(self.n, generator=gen)[i * self.global_batch:
                                                          (i + 1) * self.global_batch]
            yield batch[self.d.rank::self.d.world].tolist()
            step += 1


class Shard(torch.utils.data.Sampler):
    """This rank's share of an evaluation split: indices rank, rank + world, ... of the split,
    or, with `limit`, of a fixed random subset of `limit` examples (seeded, so every evaluation
    and every number of processes sees the same subset, whatever order the split is stored in).
    """

    def __init__(self, n: int, d: Dist, limit: int | None = None, seed: int = 0):
        indices = range(n)
        if limit is not None and limit < n:
            gen = torch.Generator().manual_seed(seed)
            indices = torch.randperm(n, generator=gen)[:limit].sort().values.tolist()
        self.indices = list(indices)[d.rank::d.world]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
