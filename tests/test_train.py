"""The trainer end to end, as a user runs it: outputs, resume, sweeps and config errors."""

from __future__ import annotations

import json

import pytest

from lra.results import SUMMARY_KEYS
from tests.conftest import run_train


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
    assert summary["peak_memory_kind"].startswith("cpu_peak_rss_growth")
    run_dir = summary["dir"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    assert (run_dir / "config.yaml").exists() and (run_dir / "best.pt").exists()


def test_rerun_skips_finished_run_and_resumes_from_checkpoint(tiny_data_root, tmp_path):
    args = tiny(tiny_data_root, tmp_path, "trainer.max_steps=4", "trainer.eval_every=2")
    run_train(*args)
    [first] = summaries(tmp_path)
    proc = run_train(*args)
    assert "already complete" in proc.stderr + proc.stdout
    # Simulate a run killed after its step-2 checkpoint: drop the summary and the last line.
    run_dir = first["dir"]
    (run_dir / "summary.json").unlink()
    import torch

    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["step"] == 4
    state["step"] = 2
    torch.save(state, run_dir / "last.pt")
    proc = run_train(*args)
    assert "resumed" in proc.stderr + proc.stdout
    [second] = summaries(tmp_path)
    assert second["steps"] == 4


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
])
def test_bad_config_fails_with_the_key_named(tmp_path, override, message):
    proc = run_train(override, "trainer.progress=false", f"runs_dir={tmp_path}/runs",
                     "hydra.run.dir=" + str(tmp_path / "hydra"), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert not last.startswith(("Traceback", "  File")), proc.stderr


def test_missing_lra_data_names_the_path_and_command(tmp_path):
    proc = run_train("data=lra", f"data.root={tmp_path}/nodata", f"runs_dir={tmp_path}/runs",
                     "hydra.run.dir=" + str(tmp_path / "hydra"), check=False)
    assert proc.returncode == 2
    assert f"{tmp_path}/nodata/listops/manifest.json" in proc.stderr
    assert "python -m data_prep listops" in proc.stderr


def test_torchrun_two_processes(tiny_data_root, tmp_path):
    """DDP through torchrun on CPU (Gloo): one summary, written by rank 0, for 2 processes."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29533", "-m", "lra.train", "trainer.max_steps=4",
           "trainer.eval_every=2", *tiny(tiny_data_root, tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path.parents[0], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [summary] = summaries(tmp_path)
    assert summary["world_size"] == 2 and summary["steps"] == 4
    lines = (summary["dir"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]
