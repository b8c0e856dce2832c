"""The run folder alone (lra.run.RunFolder) on a tiny fake state, no model, data or training:
the skip of a finished run, resume from last.pt, the metrics lines trimmed to its step, the write
order a kill at any point relies on, and two launches of the same run at once."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import threading
from dataclasses import dataclass

import pytest
import torch

import lra.run
from lra.cli import UserError
from lra.results import SUMMARY_KEYS
from lra.run import RunFolder, RunLocked

CPU = torch.device("cpu")
NAME = "listops-softmax-s0"


@dataclass
class Settings:
    """Stands in for lra.config.Config: start() writes whatever structured config it gets."""

    lr: float = 0.5


def folder(path) -> RunFolder:
    """A run folder as the trainer has it after run.lock(): made, here unlocked."""
    run = RunFolder(path, NAME)
    run.path.mkdir(parents=True, exist_ok=True)
    return run


def state(step: int, best_dev: float) -> dict:
    """A fake last.pt: a 'model' whose weight is the step, and the progress."""
    return {"model": {"w": torch.full((2,), float(step))}, "step": step, "best_dev": best_dev,
            "totals": {"timed_steps": step}}


def evaluation(run: RunFolder, step: int, dev: float, best_dev: float) -> float:
    """What the trainer writes at an evaluation at `step` with dev accuracy `dev`, the best
    before it being `best_dev`; returns the new best."""
    record = {"step": step, "loss": 1.0 / step, "lr": 0.1, "dev_accuracy": dev}
    best = {"model": {"w": torch.full((2,), float(step))}, "step": step,
            "dev_accuracy": dev} if dev > best_dev else None
    run.evaluated(record, state(step, max(dev, best_dev)), best)
    return max(dev, best_dev)


# Evaluations (step, dev accuracy) of one fake run: the best is at step 4.
EVALUATIONS = [(2, 0.5), (4, 0.75), (6, 0.625)]


def evaluate_all(run: RunFolder, evaluations=EVALUATIONS, best_dev: float = -1.0) -> float:
    for step, dev in evaluations:
        best_dev = evaluation(run, step, dev, best_dev)
    return best_dev


def metric_steps(run: RunFolder) -> list[int]:
    return [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()]


def summary(**values) -> dict:
    return {key: values.get(key, 0) for key in SUMMARY_KEYS}


def test_a_finished_run_is_skipped_and_a_bad_summary_never_marks_one(tmp_path):
    run = folder(tmp_path / NAME)
    assert run.finished() is None
    with pytest.raises(ValueError, match="missing"):
        run.finish({"task": "listops"})  # incomplete: the run stays unfinished
    assert run.finished() is None and not run.summary.exists()
    done = summary(task="listops", steps=6, test_accuracy=0.5)
    run.finish(done)
    assert RunFolder(tmp_path / NAME, NAME).finished() == done  # what a relaunch sees
    run.summary.write_text('{"task": ')
    with pytest.raises(UserError, match="is not a valid run summary"):
        run.finished()


def test_resume_goes_on_from_last_pt_and_drops_the_later_metrics_lines(tmp_path):
    run = folder(tmp_path / NAME)
    assert run.start(Settings(), CPU, resume=True) is None  # nothing to resume: step 0
    evaluate_all(run, EVALUATIONS[:2])
    # A kill after the next evaluation's line (and during the one after it) left two lines
    # beyond last.pt, one of them cut short.
    with open(run.metrics, "a") as f:
        f.write('{"step": 6, "loss": 0.1, "lr": 0.1, "dev_accuracy": 0.6}\n{"step": 8, "lo')
    resumed = RunFolder(tmp_path / NAME, NAME).start(Settings(lr=0.25), CPU, resume=True)
    assert resumed["step"] == 4 and resumed["best_dev"] == 0.75
    assert torch.equal(resumed["model"]["w"], torch.full((2,), 4.0))
    assert metric_steps(run) == [2, 4]
    assert (run.path / "config.yaml").read_text() == "lr: 0.25\n"


@pytest.mark.parametrize("resume", [True, False])
def test_a_fresh_start_owns_its_metrics_log(tmp_path, resume):
    run = folder(tmp_path / NAME)
    evaluate_all(run)
    if resume:
        run.last.unlink()  # killed before its first checkpoint
    assert run.start(Settings(), CPU, resume=resume) is None
    assert not run.metrics.exists()


def test_a_finished_run_started_again_is_unfinished_until_it_ends(tmp_path):
    """trainer.resume=false on a finished run: a kill during the new training must not leave a
    folder that a relaunch skips, with the old summary over the new checkpoints."""
    run = folder(tmp_path / NAME)
    evaluate_all(run)
    run.finish(summary(steps=6))
    assert run.start(Settings(), CPU, resume=False) is None
    assert run.finished() is None


def test_a_last_pt_without_best_dev_takes_it_from_best_pt(tmp_path):
    run = folder(tmp_path / NAME)
    evaluate_all(run)
    old = state(6, 0.75)
    del old["best_dev"]
    lra.run.save_checkpoint(run.last, old)
    assert run.start(Settings(), CPU, resume=True)["best_dev"] == 0.75


def test_an_evaluation_writes_its_line_then_best_pt_then_last_pt(tmp_path, monkeypatch):
    writes = []
    for name in ("append_jsonl", "save_checkpoint"):
        real = getattr(lra.run, name)
        monkeypatch.setattr(lra.run, name, lambda path, obj, real=real: (
            writes.append(path.name), real(path, obj)))
    run = folder(tmp_path / NAME)
    evaluate_all(run)
    assert writes == ["metrics.jsonl", "best.pt", "last.pt"] * 2 + ["metrics.jsonl", "last.pt"]


class Killed(BaseException):
    """A kill between two writes (BaseException: nothing on the way catches it)."""


@pytest.mark.parametrize("writes", range(5))
def test_a_kill_between_any_two_writes_resumes_to_the_uninterrupted_files(tmp_path, monkeypatch,
                                                                         writes):
    """Kill the run after `writes` of the writes of its evaluations at step 4 (a new best: line,
    best.pt, last.pt) and step 6 (line, last.pt). last.pt never claims more than is on disk: the
    metrics lines up to its step are all there and best.pt is at least as good as its best.
    Resuming and redoing what is after it gives the files of a run never killed."""
    whole = folder(tmp_path / "whole")
    evaluate_all(whole)
    run = folder(tmp_path / NAME)
    evaluate_all(run, EVALUATIONS[:1])
    count = itertools.count()
    for name in ("append_jsonl", "save_checkpoint"):
        real = getattr(lra.run, name)

        def guarded(path, obj, real=real):
            if next(count) == writes:
                raise Killed(path)
            real(path, obj)

        monkeypatch.setattr(lra.run, name, guarded)
    with pytest.raises(Killed):
        evaluate_all(run, EVALUATIONS[1:], best_dev=0.5)
    monkeypatch.undo()

    resumed = RunFolder(tmp_path / NAME, NAME).start(Settings(), CPU, resume=True)
    step = resumed["step"]
    assert step == (4 if writes >= 3 else 2)
    assert metric_steps(run) == [s for s, _ in EVALUATIONS if s <= step]
    assert run.best_checkpoint(CPU)["dev_accuracy"] >= resumed["best_dev"]
    evaluate_all(run, [e for e in EVALUATIONS if e[0] > step], best_dev=resumed["best_dev"])
    assert run.metrics.read_text() == whole.metrics.read_text()
    for a, b in ((run.best, whole.best), (run.last, whole.last)):
        a, b = torch.load(a), torch.load(b)
        assert a["step"] == b["step"] and torch.equal(a["model"]["w"], b["model"]["w"])


def test_only_the_writer_writes(tmp_path):
    """Under torchrun, ranks other than 0 read the folder and never write or lock it."""
    reader = RunFolder(tmp_path / NAME, NAME, writer=False)
    with reader.lock():
        assert not reader.path.exists()
    evaluate_all(reader)
    reader.checkpoint(state(8, 0.75))
    reader.finish(summary())
    assert not reader.path.exists()
    writer = folder(tmp_path / NAME)
    evaluate_all(writer)
    assert reader.start(Settings(), CPU, resume=True)["step"] == 6
    assert metric_steps(writer) == [2, 4, 6]


def test_two_launches_of_the_same_run_at_once_one_runs_and_one_is_refused(tmp_path):
    """Two threads launch the same run together: one holds the folder, the other fails at once
    with the holder named (both are this process here). A launch after the first has finished
    takes the lock and finds the run finished: it skips it."""
    start, tried = threading.Barrier(2), threading.Event()
    outcomes = []

    def launch():
        run = folder(tmp_path / NAME)
        start.wait(timeout=10)
        try:
            with run.lock():
                tried.wait(timeout=10)  # hold the folder until the other launch has tried
                run.finish(summary(steps=6))
                outcomes.append("ran")
        except RunLocked as err:
            outcomes.append(str(err))
            tried.set()

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    [refusal] = [o for o in outcomes if o != "ran"]
    assert outcomes.count("ran") == 1
    assert f"{tmp_path / NAME} is in use by process {os.getpid()} " in refusal
    later = RunFolder(tmp_path / NAME, NAME)
    with later.lock():
        assert later.finished()["steps"] == 6
    assert (later.path / "lock").read_text() == ""  # released: nothing to take over


def test_a_lock_whose_holder_has_not_written_its_pid_yet_is_refused_as_starting(tmp_path):
    """Between taking the flock and writing its PID a holder is 'starting': a second launch
    waits briefly for the PID, then refuses without one rather than naming nobody."""
    run = folder(tmp_path / NAME)
    fd = os.open(run.path / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, file still empty
    try:
        with pytest.raises(RunLocked, match=r"is in use by process \(starting\)"), run.lock():
            pass
    finally:
        os.close(fd)
