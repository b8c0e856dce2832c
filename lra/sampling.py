"""What a training step draws: its batch (`StepBatches`), its dropout stream (`reseed`), and the
shards of an evaluation (`Shard`), each a function of the seed, the rank and the step alone.

Global batch `step` is a slice of the permutation of epoch `step // batches_per_epoch`, and each
rank takes its share of that batch. So a run resumed from a checkpoint sees exactly the batches it
would have seen, and the global batches are the same whatever the number of processes.
"""

from __future__ import annotations

import torch

from attention_zoo.draws import stable_seed

from .distributed import Dist


def reseed(seed: int, rank: int, step: int) -> None:
    """Seed torch's RNG (dropout, on CPU and CUDA) from (seed, rank, step).

    Called at the start of every training step, so a run resumed at any step boundary (an
    evaluation's checkpoint, or a preemption's) continues with exactly the random stream it
    would have had, with no RNG state to save; each rank draws its own dropout masks.
    """
    torch.manual_seed(stable_seed(seed, rank, step))


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
