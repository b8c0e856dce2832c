"""The run folder alone (lra.run.RunFolder) on a tiny fake state, no model, data or training:
the skip of a finished run, resume from last.pt, the metrics lines trimmed to its step, the write
order a kill at any point relies on, and two launches of the same run at once."""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import shutil
import stat
import threading
from dataclasses import dataclass

import pytest
import torch

import lra.run
from lra.cli import UserError
from lra.config import fingerprint, load_config
from lra.results import SUMMARY_KEYS
from lra.run import RunFolder, RunLocked
from tests.test_configs import composed

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


def test_a_run_at_the_class_prior_finishes_with_a_warning_naming_the_fix(tmp_path, caplog):
    """0.16 against a majority of 0.148 on 256 test examples is z 0.5: the summary is written
    and one warning says the run has not left the prior and which keys to change; 0.281 (z 6.0)
    logs none."""
    for name, acc, warned in (("a", 0.16, True), ("b", 0.281, False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="lra.train"):
            folder(tmp_path / name).finish(summary(
                task="listops", test_accuracy=acc, majority_accuracy=0.148)
                | {"test_examples": 256})
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert (tmp_path / name / "summary.json").exists()
        if warned:
            [line] = warnings
            assert "z +0.5 on 256 test examples" in line and "not left the class prior" in line
            assert "trainer.max_steps" in line and "trainer.lr" in line
        else:
            assert warnings == []


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


def test_the_lock_makes_the_run_folder_and_its_parents(tmp_path):
    run = RunFolder(tmp_path / "runs" / "mini" / "default" / NAME, NAME)
    with run.lock():
        assert run.path.is_dir() and (run.path / "lock").read_text() == f"{os.getpid()}\n"


def test_a_checkpoint_between_evaluations_is_resumed_without_a_metrics_log(tmp_path):
    """A preemption before the first evaluation leaves last.pt alone: no metrics log yet."""
    run = folder(tmp_path / NAME)
    run.checkpoint(state(1, -1.0))
    assert not run.metrics.exists()
    resumed = RunFolder(tmp_path / NAME, NAME).start(Settings(), CPU, resume=True)
    assert resumed["step"] == 1 and torch.equal(resumed["model"]["w"], torch.ones(2))
    assert run.metrics.read_text() == ""


def test_resume_takes_the_best_dev_of_last_pt_not_of_a_later_best_pt(tmp_path):
    """A kill after an evaluation's best.pt and before its last.pt: that evaluation is redone,
    so the best so far is last.pt's, not the newer best.pt's."""
    run = folder(tmp_path / NAME)
    evaluate_all(run, EVALUATIONS[:1])
    lra.run.save_checkpoint(run.best, {"model": {}, "step": 4, "dev_accuracy": 0.75})
    assert run.start(Settings(), CPU, resume=True)["best_dev"] == 0.5


def test_checkpoints_load_onto_the_device_asked_and_best_dev_is_read_on_the_cpu(tmp_path,
                                                                                monkeypatch):
    run = folder(tmp_path / NAME)
    evaluate_all(run)
    meta = torch.device("meta")
    assert run.start(Settings(), meta, resume=True)["model"]["w"].device == meta
    assert run.best_checkpoint(meta)["model"]["w"].device == meta
    old = state(6, 0.75)
    del old["best_dev"]  # the fallback reads best.pt on the CPU, whatever device the run is on
    lra.run.save_checkpoint(run.last, old)
    loads, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda path, **kw: (loads.append((path, kw)),
                                                           real(path, **kw))[1])
    run.start(Settings(), meta, resume=True)
    assert [(p.name, kw["map_location"]) for p, kw in loads] == [("last.pt", meta),
                                                                ("best.pt", CPU)]


def test_last_pt_loads_in_full_and_best_pt_weights_only(tmp_path):
    """last.pt is the trainer's own (optimizer and schedule state: unpickled in full); best.pt is
    the model alone, loaded weights-only, so an object in it is refused as corrupt."""
    run = folder(tmp_path / NAME)
    lra.run.save_checkpoint(run.last, {**state(2, 0.5), "extra": Settings(lr=0.125)})
    assert run.start(Settings(), CPU, resume=True)["extra"] == Settings(lr=0.125)
    lra.run.save_checkpoint(run.best, {"model": {}, "step": 2, "dev_accuracy": 0.5,
                                       "extra": Settings()})
    with pytest.raises(UserError, match=f"{run.best} is partial or corrupt"):
        run.best_checkpoint(CPU)


FIX = ("; rerun with trainer.resume=false to train this run again from step 0 (it replaces "
       "the run's checkpoints)")


def test_a_missing_or_corrupt_checkpoint_is_one_error_naming_it_and_the_fix(tmp_path):
    run = folder(tmp_path / NAME)
    with pytest.raises(UserError) as missing:
        run.best_checkpoint(CPU)
    message = str(missing.value)
    assert message.startswith(f"{run.best} is missing ([Errno 2] No such file or directory")
    assert message.endswith(")" + FIX)
    run.last.write_bytes(b"not a checkpoint\nsecond line")
    with pytest.raises(UserError) as corrupt:
        run.start(Settings(), CPU, resume=True)
    message = str(corrupt.value)
    assert message.startswith(f"{run.last} is partial or corrupt (") and message.endswith(FIX)
    reason = message[len(f"{run.last} is partial or corrupt ("):-len(")" + FIX)]
    assert reason and reason != "None" and "\n" not in reason


def test_a_failed_checkpoint_write_says_the_free_space_and_keeps_the_previous(tmp_path,
                                                                              monkeypatch):
    run = folder(tmp_path / NAME)
    run.checkpoint(state(2, 0.5))
    asked = []

    def disk_usage(path):
        asked.append(path)
        return shutil._ntuple_diskusage(10 * 2**20, 7 * 2**20, 3 * 2**20)

    def full_disk(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos\nmore")

    monkeypatch.setattr(lra.run.shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError) as failed:
        run.checkpoint(state(4, 0.75))
    assert str(failed.value) == (
        f"writing {run.last} failed ([enforce fail at inline_container.cc:672] . unexpected "
        "pos); 3 MB are free on that disk (a full disk ends this way); the previous checkpoint "
        "is kept")
    assert asked == [run.path]
    monkeypatch.undo()
    assert run.start(Settings(), CPU, resume=True)["step"] == 2


def test_the_folder_logs_where_it_runs_what_it_resumed_and_how_it_ended(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lra.train")
    run = folder(tmp_path / NAME)
    run.start(Settings(), CPU, resume=True)
    assert caplog.messages == [f"run folder: {run.path}"]
    evaluate_all(run)
    caplog.clear()
    run.start(Settings(), CPU, resume=True)
    assert caplog.messages == [f"run folder: {run.path}",
                               f"resumed {run.path} at step 6 (best dev 0.7500)"]
    caplog.clear()
    run.finish(summary(test_accuracy=0.5, majority_accuracy=0.25, best_dev_accuracy=0.75))
    assert caplog.messages == [f"{NAME}: test accuracy 0.5000 (majority 0.2500), best dev 0.7500"]


def test_a_stale_lock_is_taken_over_with_a_warning_naming_its_process(tmp_path, caplog):
    """The lock file names a process (here 4242, with a byte that is not UTF-8) but nobody
    holds the flock: it was killed. The next launch takes over, says so, writes its own PID."""
    run = folder(tmp_path / NAME)
    (run.path / "lock").write_bytes(b"4242\xff\n")
    with run.lock():
        assert (run.path / "lock").read_text() == f"{os.getpid()}\n"
    assert caplog.messages == ["taking over the lock of process 4242\ufffd, which is no longer "
                               "running"]


def test_the_lock_file_is_read_write_for_everyone_the_umask_allows(tmp_path):
    run = folder(tmp_path / NAME)
    umask = os.umask(0o022)
    try:
        with run.lock():
            assert stat.S_IMODE(os.stat(run.path / "lock").st_mode) == 0o644
    finally:
        os.umask(umask)


def test_a_held_lock_whose_file_is_not_utf8_still_names_its_holder(tmp_path):
    run = folder(tmp_path / NAME)
    fd = os.open(run.path / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"77\xff\n")
    try:
        with pytest.raises(RunLocked, match="is in use by process 77\ufffd "), run.lock():
            pass
    finally:
        os.close(fd)


def test_a_finished_run_is_marked_by_its_summary_json(tmp_path):
    run = folder(tmp_path / NAME)
    run.finish(summary(steps=6))
    assert json.loads((run.path / "summary.json").read_text())["steps"] == 6


@pytest.mark.parametrize("writer", [True, False, None])
def test_a_configs_folder_is_named_by_task_attention_and_seed_and_keeps_its_writer(tmp_path,
                                                                                   writer):
    raw = composed("seed=3")
    raw.runs_dir = str(tmp_path)
    cfg = load_config(raw)
    run = RunFolder.of(cfg, "digest") if writer is None else RunFolder.of(cfg, "digest",
                                                                          writer=writer)
    assert run.name == "listops-softmax-s3"
    assert run.path.name == f"listops-softmax-s3-{fingerprint(cfg, 'digest')}"
    assert run.writer is (writer is not False)  # the default writes: a one-process run
