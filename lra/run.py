"""A run folder and its lifecycle: where one (task, attention, seed) run lives, whether it is
finished, what it resumes from, and the order in which its files are written.

`<runs_dir>/<data>/<tag>/<task>-<attention>-s<seed>-<fingerprint>/` holds

    lock           held by the one process (group) that trains the run (`RunLock`)
    config.yaml    the resolved config
    metrics.jsonl  one line per evaluation: step, loss, lr, dev_accuracy
    best.pt        the model of the best dev accuracy so far
    last.pt        what the run goes on from: model, optimizer, schedule, scaler, progress
    summary.json   written last of all: a folder that has one holds a finished run

The write order is what makes a kill at any moment harmless. Every file but the metrics log is
written atomically (whole or not at all, data_prep.atomic), and at an evaluation the metrics line
comes first, then best.pt (when the dev accuracy improved), then last.pt. So last.pt never claims
more than is on disk: every metrics line up to its step, and the best.pt of its best dev accuracy,
were written before it. What a kill leaves beyond last.pt (a later evaluation's metrics line,
whole or cut short, and its best.pt) is redone on resume: the lines after last.pt's step are
dropped and written again, and best.pt again when the redone evaluation beats last.pt's best.

Under torchrun only rank 0 (the folder's `writer`) writes or locks; every rank reads.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from data_prep.atomic import atomic_write, atomic_write_text

from .cli import UserError
from .config import Config, fingerprint
from .results import PRIOR_Z, at_prior, check_summary, read_summary, write_json, z_vs_majority

log = logging.getLogger("lra.train")  # its lines are the trainer's, as lra.eta's are


class RunFolder:
    """One run's folder (`RunFolder.of(cfg, data_digest)` for a config's), and what it holds."""

    def __init__(self, path: str | Path, name: str, *, writer: bool = True):
        self.path, self.name, self.writer = Path(path), name, writer
        self.metrics, self.last, self.best, self.summary = (
            self.path / n for n in ("metrics.jsonl", "last.pt", "best.pt", "summary.json"))

    @classmethod
    def of(cls, cfg: Config, data_digest: str, *, writer: bool = True) -> RunFolder:
        """The folder of `cfg`'s run over the data of `data_digest`: its name says the task, the
        attention and the seed, its fingerprint every setting that changes the result
        (lra.config.fingerprint), so a changed setting or rebuilt data is a new run."""
        name = f"{cfg.task.name}-{cfg.attention.name}-s{cfg.seed}"
        folder = f"{name}-{fingerprint(cfg, data_digest)}"
        return cls(Path(cfg.runs_dir) / cfg.data.name / cfg.tag / folder, name, writer=writer)

    def lock(self) -> AbstractContextManager:
        """`with run.lock():` makes the folder and holds it for this process (group): a second
        launch of the same run fails at once with RunLocked, naming the holder."""
        if not self.writer:
            return nullcontext()
        self.path.mkdir(parents=True, exist_ok=True)
        return RunLock(self.path)

    def finished(self) -> dict[str, Any] | None:
        """The summary of a finished run; None while the run is not finished."""
        return read_summary(self.summary) if self.summary.exists() else None

    def start(self, cfg: Config, device: torch.device, *, resume: bool) -> dict[str, Any] | None:
        """Write the config and return the state in last.pt to go on from, with the metrics
        lines after its step dropped (their evaluations are redone); None, with the metrics log
        and any summary cleared, to start at step 0 (`resume` false, or no last.pt yet)."""
        if self.writer:
            atomic_write_text(self.path / "config.yaml",
                              OmegaConf.to_yaml(OmegaConf.structured(cfg)))
            log.info("run folder: %s", self.path)
        if not (resume and self.last.exists()):
            if self.writer:  # a fresh start owns its metrics log, and is not finished until it is
                self.metrics.unlink(missing_ok=True)
                self.summary.unlink(missing_ok=True)
            return None
        state = load_checkpoint(self.last, device, full=True)
        if "best_dev" not in state:  # a last.pt from before it recorded the best dev accuracy
            state["best_dev"] = self.best_checkpoint(torch.device("cpu"))["dev_accuracy"]
        if self.writer:
            atomic_write_text(self.metrics, "".join(
                line + "\n" for line in metrics_lines(self.metrics)
                if line_step(line) <= state["step"]))
        log.info("resumed %s at step %d (best dev %.4f)", self.path, state["step"],
                 state["best_dev"])
        return state

    def evaluated(self, record: dict[str, Any], last: dict[str, Any],
                  best: dict[str, Any] | None = None) -> None:
        """Write an evaluation: its metrics line, then best.pt when `best` is given (a new best
        model), then last.pt (the order of the module's docstring)."""
        if self.writer:
            append_jsonl(self.metrics, record)
            if best is not None:
                save_checkpoint(self.best, best)
            save_checkpoint(self.last, last)

    def checkpoint(self, last: dict[str, Any]) -> None:
        """Write last.pt alone (a preemption between evaluations)."""
        if self.writer:
            save_checkpoint(self.last, last)

    def best_checkpoint(self, device: torch.device) -> dict[str, Any]:
        """best.pt: the best model with its step and dev accuracy."""
        return load_checkpoint(self.best, device, full=False)

    def finish(self, summary: dict[str, Any]) -> None:
        """Write summary.json, the mark of a finished run (after every other file)."""
        check_summary(summary)
        if self.writer:
            write_json(self.summary, summary)
            log.info("%s: test accuracy %.4f (majority %.4f), best dev %.4f", self.name,
                     summary["test_accuracy"], summary["majority_accuracy"],
                     summary["best_dev_accuracy"])
            if at_prior(summary):
                log.warning("%s: test accuracy %.4f is within %g standard errors of always "
                            "giving the majority class (%.4f, z %+.1f on %d test examples): "
                            "the run has not left the class prior; more steps "
                            "(trainer.max_steps), another seed or a larger trainer.lr",
                            self.name, summary["test_accuracy"], PRIOR_Z,
                            summary["majority_accuracy"], z_vs_majority(summary),
                            summary["test_examples"])


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append one line; a line is written whole with a single write, then flushed to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def metrics_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def line_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line cut short by a kill counts as after any step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: on any failure the previous one stays as it was."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except RuntimeError as err:
        # torch's zip writer reports a failed write (a full disk) without an errno.
        free_mb = shutil.disk_usage(path.parent).free / 2**20
        raise UserError(f"writing {path} failed ({str(err).splitlines()[0]}); "
                        f"{free_mb:.0f} MB are free on that disk (a full disk ends this "
                        "way); the previous checkpoint is kept") from None


def load_checkpoint(path: Path, device: torch.device, *, full: bool) -> dict[str, Any]:
    """A checkpoint (`full`: with optimizer state, from our own writer); a missing, partial or
    corrupt file is one UserError naming it and the fix."""
    try:
        return torch.load(path, map_location=device, weights_only=not full)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        reason = "missing" if isinstance(err, FileNotFoundError) else "partial or corrupt"
        raise UserError(f"{path} is {reason} ({str(err).splitlines()[0]}); rerun with "
                        "trainer.resume=false to train this run again from step 0 (it "
                        "replaces the run's checkpoints)") from None


class RunLocked(RuntimeError):
    """Another live process holds the run folder. The message names it."""


class RunLock:
    """`with RunLock(run_dir):` holds the run folder's lock for the block: one process per run
    folder, through an advisory lock that the kernel drops when its holder dies.

    The lock is `flock` on `<run folder>/lock`, a file that holds the holder's PID while it runs.
    A second process on the same folder fails at once with that PID named. A process that was
    killed (SIGKILL, a crashed node) cannot release anything, but the kernel releases its flock,
    so its lock is stale by construction: the next process takes it over, and says so when the
    file still names a process that is no longer running. The file is emptied, never deleted, on
    release: deleting it would let a process that opened the old file and one that creates a new
    one both hold a lock.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by process {holder} (lock file "
                            f"{self.path}); wait for it to finish or stop that process") from None
        previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if previous:
            log.warning("taking over the lock of process %s, which is no longer running", previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        """The PID in a held lock file. A holder writes it just after taking the lock, so a
        launch that lost the race by microseconds waits up to a second for it."""
        for _ in range(100):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if holder:
                return holder
            time.sleep(0.01)
        return "(starting)"

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None
