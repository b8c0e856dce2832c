"""Seeded randomness for the zoo: every random tensor (features, hash planes, rotations, random
blocks) comes from a `torch.Generator` addressed by (module seed, draw number), never from the
global RNG at forward time.

Draws are addressed by number, so draw t is the same whether or not draws 0..t-1 happened in this
process: a run resumed from a checkpoint (which stores the call count) redraws exactly what an
uninterrupted run would have, and a rerun with the same seed is bit-for-bit the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn


def module_seed(seed: int | None) -> int:
    """The `seed` option, or when None a seed drawn from torch's global RNG at construction (so
    `torch.manual_seed` before building the model fixes it, and successive layers differ)."""
    if seed is None:
        return int(torch.randint(2**62, ()).item())
    return int(seed)


def stable_seed(*parts: int) -> int:
    """A 63-bit seed from integers, from hashlib (Python's `hash` of a tuple is not promised to
    stay the same across Python versions, nor `hash` of a str across processes)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int, draw: int = 0) -> torch.Generator:
    """A CPU generator for draw number `draw` of the module seeded `seed`."""
    return torch.Generator().manual_seed(stable_seed(seed, draw))


class DrawCounter(nn.Module):
    """Which draw a module's forward uses: the redraw schedule, with its count in checkpoints.

    every None: always draw 0 (drawn once, fixed for train and eval alike).
    every N: the counted calls 1..N use draw 0, calls N+1..2N draw 1, and so on.
    Training-mode calls are counted; eval calls too when `count_eval` (the published codes that
    redraw on every forward do so in eval as well), otherwise eval uses the current draw.
    The count is extra state, so `state_dict` carries it and a resumed run continues the sequence.
    Under DistributedDataParallel every rank builds the module from the same seed and counts the
    same calls, so the ranks draw alike.
    """

    def __init__(self, seed: int, every: int | None, count_eval: bool = False):
        super().__init__()
        if every is not None and every < 1:
            raise ValueError(f"redraw interval must be >= 1 or None, got {every}")
        self.seed, self.every, self.count_eval = seed, every, count_eval
        self.calls = 0

    def get_extra_state(self):
        return {"seed": self.seed, "calls": self.calls}

    def set_extra_state(self, state):
        self.seed, self.calls = state["seed"], state["calls"]

    def current(self) -> int:
        """The draw number of the most recent counted call (0 before any)."""
        return 0 if self.every is None or self.calls == 0 else (self.calls - 1) // self.every

    def next(self) -> int:
        """Count this forward call (if the mode counts) and return its draw number."""
        if self.training or self.count_eval:
            self.calls += 1
        return self.current()

    def generator(self, draw: int) -> torch.Generator:
        return generator(self.seed, draw)

    def extra_repr(self) -> str:
        return f"every={self.every}, count_eval={self.count_eval}"


@torch.no_grad()
def follow_draws(buffer: torch.Tensor, counter: DrawCounter,
                 draw: Callable[[torch.Generator], torch.Tensor]) -> None:
    """Count one forward call on `counter` and, when it moves to a new draw number, refill
    `buffer` in place with `draw(generator)` for that number (made on the CPU, then copied to
    the buffer's device and dtype). The buffer holds draw 0 from construction, so a module whose
    schedule never moves never redraws."""
    before = counter.current()
    number = counter.next()
    if number != before:
        buffer.copy_(draw(counter.generator(number)))
