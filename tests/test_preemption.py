"""SIGTERM and SIGUSR1 (cluster preemption, SLURM's warning before the time limit) stop a run at
a step boundary with a checkpoint; the same command resumes it to the uninterrupted result."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, run_train
from tests.test_train import summaries, tiny

STEPS = ("trainer.max_steps=150", "trainer.eval_every=50")


def signalled_run(data_root, runs, signum) -> int:
    """Start a run, send `signum` once its progress bar counts a step past the first evaluation,
    and return the step of the checkpoint it left.

    The bar counts step n before the loop looks for a signal after step n, so a bar past 50 means
    step 50's look is over and the run stops strictly between evaluations. (Waiting for the first
    evaluation's last.pt instead left a window: a signal between that write and step 50's look
    stopped the run at step 50.) TQDM_MINITERS=1 makes the bar print every step."""
    args = [sys.executable, "-m", "lra.train", *tiny(data_root, runs, *STEPS),
            "trainer.progress=true"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "disabled",
           "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    seen, deadline = b"", time.time() + 300
    while not any(int(n) > 50 for n in re.findall(rb"(\d+)/150 \[", seen)):
        assert time.time() < deadline and proc.poll() is None, seen[-2000:].decode(errors="replace")
        if select.select([proc.stdout], [], [], 1)[0]:
            seen += os.read(proc.stdout.fileno(), 1 << 16)
    proc.send_signal(signum)
    out = (seen + proc.communicate(timeout=300)[0]).decode()
    assert proc.returncode == 128 + signum, out[-2000:]  # the signal's conventional code
    assert f"{signal.Signals(signum).name}: checkpoint written; stopping" in out
    [last] = list(runs.rglob("last.pt"))
    assert not (last.parent / "summary.json").exists(), "the run finished before the signal"
    step = torch.load(last)["step"]
    assert 50 < step < 150 and step % 50, f"stopped at step {step}, not between evaluations"
    return step


def test_sigterm_checkpoints_and_the_rerun_equals_an_uninterrupted_run(tiny_data_root, tmp_path):
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    step = signalled_run(tiny_data_root, stopped, signal.SIGTERM)
    resumed = run_train(*tiny(tiny_data_root, stopped, *STEPS))
    assert f"at step {step}" in resumed.stdout + resumed.stderr
    run_train(*tiny(tiny_data_root, whole, *STEPS))
    [a], [b] = summaries(whole), summaries(stopped)
    metrics = (b["dir"] / "metrics.jsonl").read_text()
    assert (a["dir"] / "metrics.jsonl").read_text() == metrics
    assert [json.loads(x)["step"] for x in metrics.splitlines()] == [50, 100, 150]
    for key in ("steps", "best_dev_accuracy", "test_accuracy"):
        assert a[key] == b[key], key
    final_a, final_b = (torch.load(x["dir"] / "last.pt")["model"] for x in (a, b))
    for name, tensor in final_a.items():
        assert torch.equal(tensor, final_b[name]), name


def test_sigusr1_before_the_time_limit_checkpoints_too(tiny_data_root, tmp_path):
    signalled_run(tiny_data_root, tmp_path, signal.SIGUSR1)


def test_a_handler_installed_before_ours_gets_the_signal_after_the_checkpoint():
    """In process: submitit's handlers (here a recorder) still run, after ours recorded the
    signal; a default action becomes SystemExit(128 + signum); all are restored after."""
    from lra.distributed import Dist
    from lra.preemption import Preemption

    seen = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    before_term = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with Preemption() as preemption:
            assert not preemption.requested(Dist(), torch.device("cpu"))
            os.kill(os.getpid(), signal.SIGUSR1)
            assert preemption.requested(Dist(), torch.device("cpu")) and seen == []
            preemption.pass_on()  # returns: the handler before ours chose to go on
            assert seen == [signal.SIGUSR1]
            assert not preemption.requested(Dist(), torch.device("cpu"))
        with Preemption() as preemption:
            os.kill(os.getpid(), signal.SIGTERM)
            assert preemption.requested(Dist(), torch.device("cpu"))
            with pytest.raises(SystemExit) as stop:
                preemption.pass_on()
            assert stop.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, before)
        signal.signal(signal.SIGTERM, before_term)
