"""Learning-rate schedules (`trainer.schedule`), one scheduler step per optimiser step.

- onecycle: torch's `OneCycleLR` as the published MRA harness called it, torch's defaults
  included: the lr rises linearly from lr/25 to lr over `warmup` steps, then falls linearly to
  lr/25e4 at `total`, and Adam's beta1 goes 0.95 -> 0.85 at the peak -> 0.95 (so
  trainer.betas[0] is not used). The small protocol's default.
- linear: linear warmup (step 0 already trains, at lr / warmup) to the peak, linear decay to 0 at
  `total`, betas fixed.
- rsqrt: the original LRA's ListOps, Text and Retrieval: linear warmup, then the base lr times
  1 / sqrt(max(step, warmup)), unnormalised as in the JAX code, so lr 0.05 with warmup 1,000
  peaks at 0.05 / sqrt(1000) = 1.6e-3 and decays as 1 / sqrt(step).
- cosine: linear warmup, then half a cosine from the peak to 0 at `total` (the original LRA's
  Image and Pathfinder).
"""

from __future__ import annotations

import enum
import math

import torch

from attention_zoo.registry import Choice


class Schedule(Choice):
    onecycle = enum.auto()
    linear = enum.auto()
    rsqrt = enum.auto()
    cosine = enum.auto()


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The factor of the base lr at optimiser step `step` (0-based) of `total`, for the
    schedules that are a factor of the base lr (all but onecycle)."""
    if schedule not in ("rsqrt", "cosine", "linear"):
        raise ValueError(f"trainer.schedule={schedule!r} is not one of {', '.join(Schedule)}")
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "rsqrt":
        return warm / math.sqrt(max(step + 1, warmup, 1))
    if step < warmup:
        return warm
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return max(0.0, (total - step) / max(1, total - warmup))  # linear


def build(optimizer: torch.optim.Optimizer, schedule: str, warmup: int,
          total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of `schedule` over `total` optimiser steps with `warmup` of them warming."""
    if schedule == "onecycle":
        lr = optimizer.param_groups[0]["lr"]
        # OneCycleLR's warmup phase ends at step warmup - 1, so one step would span zero steps
        # (a division by zero); warmup 0 decays from the peak at once, step s at the peak less
        # (s + 1) / total of the way down (the harness itself crashes at 1).
        warmup = 0 if warmup == 1 else warmup
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total, pct_start=warmup / total,
            anneal_strategy="linear")
    lr_factor(schedule, 0, warmup, total)  # an unknown name fails here, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(schedule, s, warmup, total))
