"""The trainer end to end, as a user runs it: outputs, resume, sweeps and config errors."""

from __future__ import annotations

import json

import pytest

from lra.results import SUMMARY_KEYS
from tests.conftest import ROOT, run_train


def tiny(root, tmp_path, *extra):
    return (f"data.root={root}", "data.build_missing=false", f"runs_dir={tmp_path}/runs",
            "task.max_len=64", "trainer.batch_size=16", "trainer.progress=false",
            "hydra.run.dir=" + str(tmp_path / "hydra"), *extra)


def summaries(tmp_path):
    return [json.loads(p.read_text()) | {"dir": p.parent}
            for p in sorted((tmp_path / "runs").rglob("summary.json"))]


def test_run_writes_config_metrics_and_summary_schema(tiny_data_root, tmp_path):
    run_train(*tiny(tiny_data_root, tmp_path, "trainer.max_steps=6", "trainer.eval_every=3"))
    [summary] = summaries(tmp_path)
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["task"] == "listops" and summary["attention"] == "softmax"
    assert summary["steps"] == 6 and summary["device"] == "cpu" and summary["mini"] is True
    assert 0 <= summary["test_accuracy"] <= 1 and 0 <= summary["majority_accuracy"] <= 1
    assert summary["params"] > 0 and summary["step_time_ms"] > 0 and summary["tokens_per_s"] > 0
    assert summary["peak_memory_kind"].startswith("cpu_live_tensor_bytes")
    run_dir = summary["dir"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    assert (run_dir / "config.yaml").exists() and (run_dir / "best.pt").exists()


def test_rerun_skips_a_finished_run(tiny_data_root, tmp_path):
    args = tiny(tiny_data_root, tmp_path, "trainer.max_steps=4", "trainer.eval_every=2")
    run_train(*args)
    proc = run_train(*args)
    assert "already complete" in proc.stderr + proc.stdout
    assert len(summaries(tmp_path)) == 1


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_data_root, tmp_path):
    """SIGKILL a run after its first checkpoint, rerun the command: the metrics, the best model
    and the summary's accuracies equal those of a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    steps = ("trainer.max_steps=120", "trainer.eval_every=5")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    run_train(*tiny(tiny_data_root, whole, *steps))
    args = [sys.executable, "-m", "lra.train", *tiny(tiny_data_root, killed, *steps)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(killed.rglob("last.pt")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [run_dir] = [p.parent for p in killed.rglob("last.pt")]
    assert not (run_dir / "summary.json").exists(), "the run finished before it was killed"
    resumed = run_train(*tiny(tiny_data_root, killed, *steps))
    assert "resumed" in resumed.stderr + resumed.stdout
    [a], [b] = summaries(whole), summaries(killed)
    assert (a["dir"] / "metrics.jsonl").read_text() == (b["dir"] / "metrics.jsonl").read_text()
    for key in ("steps", "best_dev_accuracy", "test_accuracy"):
        assert a[key] == b[key], key
    best_a, best_b = (torch.load(x["dir"] / "best.pt") for x in (a, b))
    assert best_a["step"] == best_b["step"]
    for name, tensor in best_a["model"].items():
        assert torch.equal(tensor, best_b["model"][name]), name


def test_multirun_sweeps_two_attentions(tiny_data_root, tmp_path):
    run_train("-m", "attention=softmax,softmax_naive", "trainer.max_steps=2",
              *tiny(tiny_data_root, tmp_path)[:-1], f"hydra.sweep.dir={tmp_path}/sweep")
    assert sorted(s["attention"] for s in summaries(tmp_path)) == ["softmax", "softmax_naive"]


@pytest.mark.parametrize("override, message", [
    ("attention=nope", "nope"),
    ("trainer.lr=-1", "trainer.lr=-1"),
    ("model.pooling=max", "model.pooling='max'"),
    ("+attention.options.window=3", "no option"),
    ("trainer.max_stepz=3", "max_stepz"),
    ("trainer.num_threads=0", "trainer.num_threads=0"),
    ("logger=wandb logger.mode=sometimes", "logger.mode='sometimes'"),
    ("task=image attention=mra2 model.pooling=cls", "input_shape"),
    ("task=image attention=mra2 task.max_len=2048", "task.max_len=2048"),
])
def test_bad_config_fails_with_the_key_named(tmp_path, override, message):
    proc = run_train(*override.split(), "trainer.progress=false", f"runs_dir={tmp_path}/runs",
                     "hydra.run.dir=" + str(tmp_path / "hydra"), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert not last.startswith(("Traceback", "  File")), proc.stderr


@pytest.mark.parametrize(("override", "message"), [
    ("seed=-1", "seed=-1 must be in [0, 4294967295]"),
    ("seed=99999999999", "seed=99999999999 must be in"),
    ("tag=../x", "tag='../x' must be one folder name"),
    ("tag=a/b", "tag='a/b' must be one folder name"),
    ("tag=..", "tag='..' must be one folder name"),
])
def test_edge_values_fail_in_one_line_before_any_run_folder(tmp_path, override, message):
    proc = run_train(override, "trainer.progress=false", f"runs_dir={tmp_path}/runs",
                     "hydra.run.dir=" + str(tmp_path / "hydra"), check=False)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "runs").exists()


def test_missing_lra_data_names_the_path_and_command(tmp_path):
    proc = run_train("data=lra", f"data.root={tmp_path}/nodata", f"runs_dir={tmp_path}/runs",
                     "hydra.run.dir=" + str(tmp_path / "hydra"), check=False)
    assert proc.returncode == 2
    assert f"{tmp_path}/nodata/listops/manifest.json" in proc.stderr
    assert "python -m data_prep listops" in proc.stderr


def test_torchrun_two_processes_equal_one_process(tiny_data_root, tmp_path):
    """DDP through torchrun on CPU (Gloo): one summary, written by rank 0, for 2 processes; and
    with dropout 0 (attention dropout too) its parameters after 4 steps equal those of one
    process with the same global batch (each rank trains on half of every batch, DDP averages
    the gradients), to rounding."""
    import os
    import subprocess
    import sys

    import torch

    settings = ("trainer.max_steps=4", "trainer.eval_every=2", "model.dropout=0",
                "attention.options.dropout=0", "trainer.lr=1e-3")
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lra.train", *settings, *tiny(tiny_data_root, two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    # From the checkout's root, so that its packages are the ones imported (not an installed copy).
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [summary] = summaries(two)
    assert summary["world_size"] == 2 and summary["steps"] == 4
    lines = (summary["dir"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]
    run_train(*settings, *tiny(tiny_data_root, one))
    [single] = summaries(one)
    assert single["world_size"] == 1
    a, b = (torch.load(s["dir"] / "last.pt")["model"] for s in (summary, single))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def test_accumulate_two_micro_batches_equals_the_full_batch(tiny_data_root, tmp_path):
    """trainer.accumulate=2 on one process (two micro-batches of 8, gradients summed) gives the
    parameters of one batch of 16 after 4 steps, with dropout 0, to rounding."""
    import torch

    settings = ("trainer.max_steps=4", "trainer.eval_every=4", "model.dropout=0",
                "attention.options.dropout=0", "trainer.lr=1e-3")
    run_train(*settings, "trainer.accumulate=2", *tiny(tiny_data_root, tmp_path / "acc"))
    run_train(*settings, *tiny(tiny_data_root, tmp_path / "full"))
    [acc], [full] = summaries(tmp_path / "acc"), summaries(tmp_path / "full")
    a, b = (torch.load(s["dir"] / "last.pt")["model"] for s in (acc, full))
    assert acc["dir"] != full["dir"]  # accumulate is part of the run's fingerprint
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def test_accumulated_backward_runs_micro_batches_and_sums_their_gradients():
    """In process: 3 micro-batches of 2 examples each, and the gradient of the batch of 6."""
    from contextlib import nullcontext

    import torch

    from lra.train import accumulated_backward

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.sizes = torch.nn.Linear(4, 3), []

        def forward(self, tokens, mask):
            self.sizes.append(len(tokens))
            return self.linear(tokens * mask[..., None])

    torch.manual_seed(0)
    model = Recorder()
    batch = (torch.randn(6, 4), torch.ones(6, dtype=torch.bool), torch.tensor([0, 1, 2, 0, 1, 2]))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = accumulated_backward(model, batch, 3, nullcontext, scaler)
    assert model.sizes == [2, 2, 2]
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    whole = torch.nn.functional.cross_entropy(model(batch[0], batch[1]), batch[2])
    whole.backward()
    torch.testing.assert_close(loss, whole.detach(), rtol=0, atol=1e-6)
    for got, want in zip(grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_rebuilt_data_is_a_new_run_not_a_skip(tmp_path):
    """The run folder's fingerprint covers the prepared data: rebuilding it differently reruns."""
    from data_prep import listops

    def build(seed):
        listops.build_generated(tmp_path / "data" / "listops",
                                sizes={"train": 48, "val": 16, "test": 16}, seed=seed,
                                max_depth=4, max_args=4, min_length=4, max_length=64, mini=True,
                                progress=False)

    args = tiny(tmp_path / "data", tmp_path, "trainer.max_steps=2")
    build(seed=1)
    run_train(*args)
    build(seed=2)
    proc = run_train(*args)
    assert "already complete" not in proc.stderr + proc.stdout
    assert len({s["data_digest"] for s in summaries(tmp_path)}) == 2


def test_a_metrics_line_cut_by_a_kill_is_dropped_on_resume():
    from lra.run import line_step

    assert line_step('{"step": 5, "dev_accuracy": 0.5}') == 5
    assert line_step('{"step": 10, "dev_acc') == float("inf")


def test_the_same_run_launched_twice_at_once_runs_once(tiny_data_root, tmp_path):
    """Two identical launches together: one trains, the other stops with the lock message naming
    the first one's PID, and metrics.jsonl has each evaluation once."""
    import os
    import subprocess
    import sys

    args = tiny(tiny_data_root, tmp_path, "trainer.max_steps=80", "trainer.eval_every=10")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "lra.train", *args], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    (winner, _, _), (_, _, loser_err) = sorted(results, key=lambda r: r[0].returncode)
    [line] = loser_err.strip().splitlines()
    assert f"is in use by process {winner.pid} " in line
    [summary] = summaries(tmp_path)
    lines = (summary["dir"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(10, 81, 10))
