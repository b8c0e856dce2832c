"""Learning-rate schedules (`trainer.schedule`), as factors of the peak `trainer.lr` per step.

Each warms up linearly over `warmup` steps (step 0 already trains, at lr / warmup), then:
- onecycle: decays linearly to 0 at `total` (the small protocol's harnesses);
- rsqrt: the original LRA's ListOps, Text and Retrieval: the base lr times 1 / sqrt(max(step,
  warmup)), unnormalised as in the JAX code, so lr 0.05 with warmup 1,000 peaks at 0.05 / sqrt(1000)
  = 1.6e-3 and decays as 1 / sqrt(step);
- cosine: decays as half a cosine from the peak to 0 at `total` (the original LRA's Image and
  Pathfinder).
"""

from __future__ import annotations

import math


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The factor of the base lr at optimiser step `step` (0-based) of `total`."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "rsqrt":
        return warm / math.sqrt(max(step + 1, warmup, 1))
    if step < warmup:
        return warm
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        return max(0.0, (total - step) / max(1, total - warmup))
    raise ValueError(f"trainer.schedule={schedule!r} is not one of onecycle, rsqrt, cosine")
