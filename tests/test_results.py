"""Aggregation of run summaries: accuracy per task and attention over seeds, the published rows
beside ours, mini runs kept apart, the plots, and the wandb summary run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from lra.cli import UserError
from lra.results import SUMMARY_KEYS, aggregate, main, write_json
from tests.conftest import ROOT


def fake_runs(root, *, mini: bool, seeds=(0, 1, 2)):
    """softmax and mra2 on listops and text; accuracies 0.30 + 0.01 * seed (+0.1 for mra2 on
    text), memory 100 MB (softmax) or 10 MB, throughput 1e4 or 4e4 tokens/s."""
    for task in ("text", "listops"):
        for attention in ("softmax", "mra2"):
            for seed in seeds:
                acc = 0.30 + 0.01 * seed + (0.1 if (task, attention) == ("text", "mra2") else 0)
                summary = {k: 0 for k in SUMMARY_KEYS} | {
                    "task": task, "attention": attention, "seed": seed, "mini": mini,
                    "data": "mini" if mini else "lra", "protocol": "small_protocol",
                    "test_accuracy": acc, "majority_accuracy": 0.15, "kernel_backend": "-",
                    "peak_memory_mb": 100.0 if attention == "softmax" else 10.0,
                    "tokens_per_s": 1e4 if attention == "softmax" else 4e4, "step_time_ms": 5.0}
                write_json(root / f"{task}-{attention}-{seed}" / "summary.json", summary)


def test_accuracy_is_the_mean_and_std_over_seeds_beside_the_published_rows(tmp_path):
    fake_runs(tmp_path / "runs", mini=False)
    assert main([str(tmp_path / "runs"), str(tmp_path / "out"), "--title", "T"]) == 0
    rows = {(r["task"], r["attention"]): r
            for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert len(rows) == 4 and len(list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))) == 12
    text_mra2 = rows[("text", "mra2")]
    assert text_mra2["seeds"] == "3"
    assert float(text_mra2["test_accuracy_mean"]) == pytest.approx(0.41)
    assert float(text_mra2["test_accuracy_std"]) == pytest.approx(0.01)  # sample std of 3
    assert float(text_mra2["peak_memory_mb"]) == 10.0
    md = (tmp_path / "out" / "results.md").read_text()
    # Tasks in the LRA order, the average over the tasks shown, the seed count.
    assert "| attention | source | listops | text | avg | seeds |" in md
    assert "| mra2 | ours, small_protocol | 31.00 ± 1.00 | 41.00 ± 1.00 | 36.00 | 3 |" in md
    # Published softmax rows for the same tasks (ListOps, Text): LRA paper and Nystromformer.
    assert "| 36.37 | 64.27 | 50.32 | - |" in md and "| 37.10 | 65.02 | 51.06 | - |" in md
    for plot in ("accuracy_vs_memory.png", "accuracy_vs_speed.png", "accuracy_per_task.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 0


def test_mini_runs_are_marked_and_shown_without_published_rows(tmp_path):
    fake_runs(tmp_path / "runs", mini=True, seeds=(0,))
    aggregate(tmp_path / "runs", tmp_path / "out", title="T")
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.splitlines()[0] == "# T [MINI DATA: stand-ins, not the LRA benchmark]"
    assert "ours (mini data)" in md and "Tay et al." not in md and "Xiong" not in md
    assert "| softmax | ours (mini data), small_protocol | 30.00 | 30.00 | 30.00 | 1 |" in md


def test_mini_and_lra_runs_are_never_mixed(tmp_path):
    fake_runs(tmp_path / "runs" / "a", mini=True, seeds=(0,))
    fake_runs(tmp_path / "runs" / "b", mini=False, seeds=(0,))
    with pytest.raises(UserError, match="both mini and LRA runs"):
        aggregate(tmp_path / "runs", tmp_path / "out", title="T")


def test_runs_at_the_class_prior_are_counted_and_marked(tmp_path):
    """z against the majority class is (acc - p) / sqrt(p (1 - p) / n): at p = 0.15 on n = 400
    one standard error is 1.785 points, so 0.17 (z 1.12) is at the prior and 0.30 (z 8.4) is
    not; a summary without the test split's size is never counted."""
    fake_runs(tmp_path / "runs", mini=False)
    stuck = tmp_path / "runs" / "listops-mra2-0" / "summary.json"
    summary = json.loads(stuck.read_text())
    write_json(stuck, summary | {"test_accuracy": 0.17, "test_examples": 400})
    learnt = tmp_path / "runs" / "listops-mra2-1" / "summary.json"
    write_json(learnt, json.loads(learnt.read_text()) | {"test_examples": 400})
    aggregate(tmp_path / "runs", tmp_path / "out", title="T")
    rows = {(r["task"], r["attention"]): r
            for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert rows[("listops", "mra2")]["at_prior"] == "1"
    assert {r["at_prior"] for k, r in rows.items() if k != ("listops", "mra2")} == {"0"}
    runs = {(r["task"], r["attention"], r["seed"]): r
            for r in csv.DictReader(open(tmp_path / "out" / "runs.csv"))}
    se = (0.15 * 0.85 / 400) ** 0.5
    assert float(runs[("listops", "mra2", "0")]["z_vs_majority"]) == pytest.approx(0.02 / se)
    assert float(runs[("listops", "mra2", "1")]["z_vs_majority"]) == pytest.approx(0.16 / se)
    assert runs[("listops", "mra2", "2")]["z_vs_majority"] == ""
    md = (tmp_path / "out" / "results.md").read_text()
    # mean (0.17 + 0.31 + 0.32) / 3, marked; the other cells unmarked; one line names the cell.
    assert "| mra2 | ours, small_protocol | 26.67 ± 8.39† | 41.00 ± 1.00 |" in md
    assert md.count("†") == 2
    assert "† seeds at the class prior" in md and "mra2 on listops 1 of 3" in md


def test_points_with_seeds_at_the_prior_are_drawn_hollow_and_named_in_the_legend():
    from lra import plots

    plt = plots._pyplot()
    fig, ax = plt.subplots()
    plots._points(ax, [("softmax", 10.0, 28.0, 1.0, False), ("mra2", 5.0, 20.0, 6.0, True)], "x")
    plots._majority_line(ax, 0.148, "majority class")
    faces = [line.get_markerfacecolor() for line in ax.lines
             if line.get_marker() == "o" and len(line.get_xdata())]  # the points, in order
    assert faces[0] != "none" and faces[1] == "none"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert plots.AT_PRIOR_LABEL in legend and "majority class" in legend
    fig.clf()
    ax = fig.add_subplot()
    plots._points(ax, [("softmax", 10.0, 28.0, 1.0, False)], "x")
    plots._majority_line(ax, 0.148, "majority class")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["majority class"]
    plt.close(fig)


def test_wandb_summary_run_offline_prints_the_sync_command(tmp_path):
    """With no key and no network: one offline run holding the table and plots, and the command
    that uploads it."""
    fake_runs(tmp_path / "runs", mini=False, seeds=(0,))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "lra.results", str(tmp_path / "runs"),
                           str(tmp_path / "out"), "--wandb"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = (tmp_path / "out" / "wandb").glob("offline-run-*")
    assert f"wandb sync {run_dir}" in proc.stdout
    assert list(run_dir.glob("*.wandb"))  # the run's log, uploaded by `wandb sync`
