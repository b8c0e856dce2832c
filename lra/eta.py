"""Say how long a run will take before the time is spent.

At start `lra.train` logs the steps it plans; after the first few steps, their measured time and
an estimate of the whole run. On CPU, an estimate past `CPU_PATIENCE_S` comes with a shorter
command. The first step is left out of the measurement: it pays one-off costs (allocations,
kernel selection) that later steps do not.
"""

from __future__ import annotations

import logging

from omegaconf import OmegaConf

from .overrides import CONF

log = logging.getLogger("lra.train")

CPU_PATIENCE_S = 30 * 60  # on CPU, suggest a shorter run when the estimate passes this
SHORT_RUN_S = 10 * 60  # the length of the shorter run suggested


def duration(seconds: float) -> str:
    """'42 s', '7.5 min' or '4.9 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def round_steps(steps: float) -> int:
    """Two significant digits, at least 10: a step count a user would type."""
    steps = max(10, int(steps))
    scale = 10 ** max(0, len(str(steps)) - 2)
    return steps // scale * scale


class StepClock:
    """Call `tick(seconds)` after every training step with its time; logs the plan at start,
    then one estimate once the first steps are measured."""

    def __init__(self, start_step: int, max_steps: int, eval_every: int, on_cpu: bool,
                 enabled: bool = True, measure: int = 5):
        self.steps = max_steps - start_step  # the steps this invocation trains
        self.on_cpu, self.enabled, self.measure = on_cpu, enabled, measure
        self.times: list[float] = []  # seconds of the steps measured so far
        self.step_s: float | None = None  # mean seconds per step, once measured
        if enabled:
            resumed = f" (resuming at step {start_step})" if start_step else ""
            log.info("planned: %d training steps%s, a dev evaluation every %d", self.steps,
                     resumed, eval_every)

    def tick(self, seconds: float) -> None:
        if self.step_s is not None:
            return
        self.times.append(seconds)
        if len(self.times) == 1 + self.measure:
            self.step_s = sum(self.times[1:]) / self.measure
            if self.enabled:
                self.report()

    def estimate_s(self) -> float:
        assert self.step_s is not None
        return self.step_s * self.steps

    def report(self) -> None:
        total = self.estimate_s()
        log.info("%.3f s per training step (mean of steps 2-%d): about %s for the %d steps, "
                 "plus evaluations", self.step_s, len(self.times), duration(total), self.steps)
        if self.on_cpu and total > CPU_PATIENCE_S:
            short = round_steps(SHORT_RUN_S / self.step_s)
            smoke = OmegaConf.load(CONF / "trainer" / "smoke.yaml")
            log.warning("that is long for a CPU: trainer.max_steps=%d (about %s) tries the same "
                        "run shorter; trainer=smoke (%d steps of %d examples) checks that it "
                        "works end to end", short, duration(short * self.step_s),
                        smoke.max_steps, smoke.batch_size)
