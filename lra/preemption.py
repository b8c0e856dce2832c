"""Preemption: SIGTERM (how clusters and torchrun stop a job) and SIGUSR1 (what SLURM sends before
a job's time limit, `--signal`) end a run at the next step boundary, after an atomic checkpoint.

The handler only records the signal; the training loop asks `requested()` after each step (all
processes agree on it through one all-reduce, so no rank is left waiting in a collective), writes
`last.pt` and calls `pass_on()`, which then does what would have happened without us: a Python
handler installed before ours runs (submitit's: on SIGUSR1 it requeues the job and exits; its
SIGTERM handler ignores the signal, and training goes on), an ignored signal stays ignored, and
the default action becomes an exit with the signal's conventional code 128 + signum (143 for
SIGTERM) through Python's normal exit, so that locks and logs are released. The requeued or
re-run command resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import torch

log = logging.getLogger("lra.preemption")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """Record SIGTERM/SIGUSR1 while training (`with Preemption() as stop:`)."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():  # only there can Python
            for signum in SIGNALS:                                  # install handlers
                self.previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def _record(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def requested(self, d: Any, device: torch.device) -> bool:
        """Whether any process received a signal (d: lra.distributed.Dist)."""
        if d.world == 1:
            return self.signum is not None
        [count] = d.sum([float(self.signum is not None)], device)
        if count and self.signum is None:
            self.signum = signal.SIGTERM  # another rank was signalled: stop with it
        return count > 0

    def pass_on(self) -> None:
        """After the checkpoint: the signal's action without us (see the module's docstring);
        returns when that action is to go on."""
        signum, self.signum = self.signum, None
        assert signum is not None
        name = signal.Signals(signum).name
        previous = self.previous.get(signum) or signal.SIG_DFL  # None: not set from Python
        if previous == signal.SIG_IGN:
            return
        if callable(previous):
            log.warning("%s: checkpoint written; passed to the handler before ours", name)
            previous(signum, None)
            return
        log.warning("%s: checkpoint written; stopping (the same command resumes)", name)
        raise SystemExit(128 + signum)
