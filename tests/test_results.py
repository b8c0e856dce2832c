"""Aggregation of run summaries: accuracy per task and attention over seeds, the published rows
beside ours, mini runs kept apart, the plots, and the wandb summary run."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from lra.cli import UserError
from lra.results import (
    SUMMARY_KEYS,
    aggregate,
    at_prior,
    attention_rows,
    find_summaries,
    main,
    published_rows,
    table_rows,
    write_json,
)
from tests.conftest import ROOT


def fake_runs(root, *, mini: bool, seeds=(0, 1, 2), tasks=("text", "listops")):
    """softmax and mra2 on `tasks`; accuracies 0.30 + 0.01 * seed (+0.1 for mra2 on text), best
    dev 0.02 below; memory 100 MB (softmax) or 10 MB, throughput 1e4 or 4e4 tokens/s, steps of
    5 or 2 ms, 1,000 or 900 parameters; mra2's seed 0 ran the C++ kernels, its others the
    reference."""
    for task in tasks:
        for attention in ("softmax", "mra2"):
            for seed in seeds:
                acc = 0.30 + 0.01 * seed + (0.1 if (task, attention) == ("text", "mra2") else 0)
                softmax = attention == "softmax"
                summary = {k: 0 for k in SUMMARY_KEYS} | {
                    "task": task, "attention": attention, "seed": seed, "mini": mini,
                    "data": "mini" if mini else "lra", "protocol": "small_protocol",
                    "test_accuracy": acc, "best_dev_accuracy": acc - 0.02,
                    "majority_accuracy": 0.15,
                    "kernel_backend": "-" if softmax else "cpp" if seed == 0 else "reference",
                    "peak_memory_mb": 100.0 if softmax else 10.0,
                    "tokens_per_s": 1e4 if softmax else 4e4,
                    "step_time_ms": 5.0 if softmax else 2.0, "params": 1000 if softmax else 900}
                write_json(root / f"{task}-{attention}-{seed}" / "summary.json", summary)


def test_accuracy_is_the_mean_and_std_over_seeds_beside_the_published_rows(tmp_path, capsys):
    fake_runs(tmp_path / "runs", mini=False)
    assert main([str(tmp_path / "runs"), str(tmp_path / "out"), "--title", "T"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# T\n") and f"12 runs; written to {tmp_path / 'out'}" in printed
    assert b"\r" not in (tmp_path / "out" / "results.csv").read_bytes()  # not csv's \r\n
    rows = {(r["task"], r["attention"]): r
            for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert len(rows) == 4 and len(list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))) == 12
    text_mra2 = rows[("text", "mra2")]
    assert text_mra2["seeds"] == "3"
    assert float(text_mra2["test_accuracy_mean"]) == pytest.approx(0.41)
    assert float(text_mra2["test_accuracy_std"]) == pytest.approx(0.01)  # sample std of 3
    # 95% interval of the mean of 3 seeds: t(0.975, 2 degrees of freedom) = 4.303 standard errors.
    ci95 = float(text_mra2["test_accuracy_ci95"])
    assert ci95 == pytest.approx(4.303 * 0.01 / 3 ** 0.5, rel=1e-4)
    assert float(text_mra2["peak_memory_mb"]) == 10.0
    assert {k: text_mra2[k] for k in ("data", "mini", "protocol", "tokens_per_s", "step_time_ms",
                                      "params", "kernel_backend")} == {
        "data": "lra", "mini": "False", "protocol": "small_protocol", "tokens_per_s": "40000.0",
        "step_time_ms": "2.0", "params": "900", "kernel_backend": "cpp,reference"}
    assert float(text_mra2["best_dev_accuracy_mean"]) == pytest.approx(0.39)
    md = (tmp_path / "out" / "results.md").read_text()
    # The cost table: one row per task and attention, the accuracy cell as in the table above.
    header = "| task | attention | test_accuracy | ci95 | peak_memory_mb | tokens_per_s | " \
             "step_time_ms | params | kernel_backend | seeds | at_prior |\n"
    assert header + "|---" * 11 + "|\n" in md
    assert "| text | mra2 | 41.00 ± 1.00 | 2.48 | 10 | 4e+04 | 2 | 900 | cpp,reference | 3 | 0 |" \
        in md
    assert "Published rows: results/published/" in md and "Mini data" not in md
    # Tasks in the LRA order, the average over the tasks shown, the seed count.
    assert "| attention | source | listops | text | avg | seeds |\n" + "|---" * 6 + "|\n" in md
    assert "| mra2 | ours, small_protocol | 31.00 ± 1.00 | 41.00 ± 1.00 | 36.00 | 3 |" in md
    # Published softmax rows for the same tasks (ListOps, Text): LRA paper and Nystromformer.
    assert "| 36.37 | 64.27 | 50.32 | - |" in md and "| 37.10 | 65.02 | 51.06 | - |" in md
    for plot in ("accuracy_vs_memory.png", "accuracy_vs_speed.png", "accuracy_per_task.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 0


def test_a_runs_argument_that_is_not_a_folder_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "nope"), str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert f"{tmp_path / 'nope'} is not a folder of runs" in capsys.readouterr().err


def test_mini_runs_are_marked_and_shown_without_published_rows(tmp_path):
    fake_runs(tmp_path / "runs", mini=True, seeds=(0,))
    aggregate(tmp_path / "runs", tmp_path / "out", title="T")
    assert not (tmp_path / "out" / "wandb").exists()  # wandb only when asked
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.splitlines()[0] == "# T [MINI DATA: stand-ins, not the LRA benchmark]"
    assert "ours (mini data)" in md and "Tay et al." not in md and "Xiong" not in md
    assert "Mini data: every row ran on the offline mini suite" in md
    assert "| softmax | ours (mini data), small_protocol | 30.00 | 30.00 | 30.00 | 1 |" in md


def test_mini_and_lra_runs_are_never_mixed(tmp_path):
    fake_runs(tmp_path / "runs" / "a", mini=True, seeds=(0,))
    fake_runs(tmp_path / "runs" / "b", mini=False, seeds=(0,))
    with pytest.raises(UserError, match="both mini and LRA runs; aggregate <runs_dir>/mini/<tag> "
                                        "and <runs_dir>/lra/<tag> separately"):
        aggregate(tmp_path / "runs", tmp_path / "out", title="T")


def test_tasks_in_the_lra_order_a_row_per_protocol_and_dashes_for_what_did_not_run(tmp_path):
    """ListOps comes before Image (the LRA paper's order, not the alphabet's); an attention that
    ran one task of two has a dash and no average; a second protocol is a row of its own; seed
    counts that differ by task are all given; an attention without published figures has no
    published row (softmax's are not shown as its)."""
    fake_runs(tmp_path / "runs", mini=False, tasks=("image", "listops"))
    for seed in (1, 2):
        (tmp_path / "runs" / f"image-mra2-{seed}" / "summary.json").unlink()
    original = tmp_path / "runs" / "listops-softmax-0" / "summary.json"
    write_json(tmp_path / "runs" / "listops-softmax-lra_original" / "summary.json",
               json.loads(original.read_text()) | {"protocol": "lra_original",
                                                    "test_accuracy": 0.35})
    aggregate(tmp_path / "runs", tmp_path / "out", title="T")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| attention | source | listops | image | avg | seeds |" in md
    assert "| softmax | ours, small_protocol | 31.00 ± 1.00 | 31.00 ± 1.00 | 31.00 | 3 |" in md
    assert "| softmax | ours, lra_original | 35.00 | - | - | 1 |" in md
    assert "| mra2 | ours, small_protocol | 31.00 ± 1.00 | 30.00 | 30.50 | 1/3 |" in md
    # Xiong et al.'s softmax: ListOps 37.10, Image 38.20, their mean 37.65.
    assert "| softmax | Xiong et al. 2021 (Nystromformer re-run), small_protocol | 37.10 | 38.20 " \
           "| 37.65 | - |" in md
    assert "| mra2 | Tay" not in md and "| mra2 | Xiong" not in md


def test_published_rows_are_those_of_the_attentions_asked_for():
    rows = published_rows(["linformer"], ["listops", "image"])
    assert [(r["attention"], r["listops"], r["image"]) for r in rows] == [
        ("linformer", 35.70, 38.56), ("linformer", 37.25, 37.84)]
    assert all(set(r) == {"attention", "source", "listops", "image"} for r in rows)


def test_the_overview_row_averages_tasks_and_takes_geometric_means_of_the_costs():
    """attention_rows (the accuracy vs cost plots): the mean over tasks of each task's mean over
    seeds; the std over the seeds that ran every task; the majority class's mean over tasks; the
    costs' geometric means over the runs that have them; an attention that missed a task left
    out."""
    def run(attention, task, seed, acc, memory, speed, **extra):
        majority = {"listops": 0.15, "text": 0.5, "image": 0.1}[task]
        return {"attention": attention, "task": task, "seed": seed, "test_accuracy": acc,
                "majority_accuracy": majority, "peak_memory_mb": memory, "tokens_per_s": speed,
                **extra}

    runs = [run("softmax", "listops", 0, 0.30, 99.0, 9.0),
            run("softmax", "text", 0, 0.60, 99.0, 9.0),
            run("mra2", "listops", 0, 0.20, 10.0, 100.0),
            # Two standard errors above 0.15 on 400 examples is 0.186: 0.16 is at the prior.
            run("mra2", "listops", 1, 0.16, 10.0, 100.0, test_examples=400),
            run("mra2", "listops", 2, 0.25, 10.0, 100.0),
            run("mra2", "text", 0, 0.60, 40.0, 400.0),
            run("mra2", "text", 2, 0.70, 40.0, None),  # no throughput recorded: not counted
            run("mra2", "image", 0, 0.40, 20.0, 200.0),
            run("mra2", "image", 1, 0.50, 20.0, 200.0),
            run("mra2", "image", 2, 0.45, 20.0, 200.0)]
    [row] = attention_rows(runs, ["listops", "text", "image"])
    assert row["attention"] == "mra2" and row["tasks"] == "listops, text, image"
    per_task = [(0.20 + 0.16 + 0.25) / 3, (0.60 + 0.70) / 2, (0.40 + 0.50 + 0.45) / 3]
    assert row["accuracy_mean"] == pytest.approx(sum(per_task) / 3)
    # Seeds 0 and 2 ran every task (seed 1 missed text): their averages 0.4 and 0.4667.
    seed_means = [(0.20 + 0.60 + 0.40) / 3, (0.25 + 0.70 + 0.45) / 3]
    assert row["accuracy_std"] == pytest.approx(abs(seed_means[0] - seed_means[1]) / math.sqrt(2))
    assert row["seeds"] == 3 and row["at_prior"] == 1
    assert row["majority_mean"] == pytest.approx((0.15 + 0.5 + 0.1) / 3)
    assert row["peak_memory_mb"] == pytest.approx((10.0 ** 3 * 40.0 ** 2 * 20.0 ** 3) ** (1 / 8))
    assert row["tokens_per_s"] == pytest.approx((100.0 ** 3 * 400.0 * 200.0 ** 3) ** (1 / 7))


def test_a_cost_no_run_measured_is_a_dash_and_a_summary_without_protocol_is_unknown(tmp_path):
    """Runs of 2 steps or fewer are not timed (tokens_per_s and step_time_ms null); summaries
    written before the protocol was recorded are grouped as "unknown"."""
    fake_runs(tmp_path / "runs", mini=False, seeds=(0,), tasks=("listops",))
    for path in (tmp_path / "runs").glob("*/summary.json"):
        summary = json.loads(path.read_text()) | {"tokens_per_s": None, "step_time_ms": None}
        del summary["protocol"]
        write_json(path, summary)
    aggregate(tmp_path / "runs", tmp_path / "out", title="T")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| listops | mra2 | 30.00 | - | 10 | - | - | 900 | cpp | 1 | 0 |\n" in md
    assert "| mra2 | ours, unknown | 30.00 | 30.00 | 1 |" in md


def test_a_summary_that_is_not_an_object_is_named_with_the_fix(tmp_path):
    path = tmp_path / "run" / "summary.json"
    path.parent.mkdir()
    path.write_text("[1, 2]\n")
    with pytest.raises(UserError) as err:
        find_summaries(tmp_path)
    assert str(err.value) == (
        f"{path} is not a valid run summary (a summary is a JSON object, not list); delete it "
        "and rerun the run's command: it resumes from its checkpoints and writes it again")


def test_the_plots_are_drawn_from_the_overview_rows_one_per_cost(tmp_path, monkeypatch):
    from lra import plots

    drawn = []
    monkeypatch.setattr(plots, "plot_overview", lambda rows, cost, title, path: drawn.append(
        ([r["attention"] for r in rows], cost, title, path.name)))
    monkeypatch.setattr(plots, "plot_per_task", lambda rows, tasks, title, path: drawn.append(
        (len(rows), tasks, title, path.name)))
    fake_runs(tmp_path / "runs", mini=False, seeds=(0,))
    aggregate(tmp_path / "runs", tmp_path / "out", title="T")
    assert drawn == [(["mra2", "softmax"], "peak_memory_mb", "T", "accuracy_vs_memory.png"),
                     (["mra2", "softmax"], "tokens_per_s", "T", "accuracy_vs_speed.png"),
                     (4, ["listops", "text"], "T", "accuracy_per_task.png")]


@pytest.mark.parametrize("seeds, t", [(2, 12.706), (3, 4.303), (5, 2.776), (10, 2.262)])
def test_the_confidence_interval_is_student_s_t_over_seeds(seeds, t):
    """t(0.975, seeds - 1) from a printed table; accuracies 0.30 + 0.01 * seed."""
    acc = [0.30 + 0.01 * s for s in range(seeds)]
    mean = sum(acc) / seeds
    std = (sum((a - mean) ** 2 for a in acc) / (seeds - 1)) ** 0.5
    [row] = table_rows([{"task": "listops", "attention": "mra2", "seed": s, "test_accuracy": a,
                         "best_dev_accuracy": a, "majority_accuracy": 0.15, "data": "lra",
                         "mini": False, "params": 1, "kernel_backend": "-"}
                        for s, a in enumerate(acc)])
    assert row["test_accuracy_ci95"] == pytest.approx(t * std / seeds ** 0.5, rel=2e-4)
    assert table_rows([{**row, "test_accuracy": 0.3, "best_dev_accuracy": 0.3, "seed": 0}]
                      )[0]["test_accuracy_ci95"] is None


def test_at_prior_is_strictly_below_two_standard_errors():
    """p = 0.5 on 4 examples: one standard error is 0.25, so 1.0 is z = 2 exactly (not at the
    prior) and 0.99 is z = 1.96 (at it)."""
    run = {"majority_accuracy": 0.5, "test_examples": 4}
    assert not at_prior(run | {"test_accuracy": 1.0})
    assert at_prior(run | {"test_accuracy": 0.99})


def test_a_summary_s_run_dir_is_the_folder_it_is_found_in(tmp_path):
    """A folder of runs copied elsewhere (another machine, an archive) is aggregated from where it
    is now, whatever run_dir its summaries were written with."""
    fake_runs(tmp_path / "runs", mini=False, seeds=(0,), tasks=("listops",))
    summary = tmp_path / "runs" / "listops-mra2-0" / "summary.json"
    write_json(summary, json.loads(summary.read_text()) | {"run_dir": "/elsewhere"})
    assert {r["run_dir"] for r in find_summaries(tmp_path / "runs")} == {
        str(tmp_path / "runs" / "listops-mra2-0"), str(tmp_path / "runs" / "listops-softmax-0")}


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
    assert "|\n\n† seeds at the class prior (test accuracy less than 2 binomial standard " \
           "errors above the majority class's; runs.csv: z_vs_majority): mra2 on listops 1 of " \
           "3. Their mean is partly the prior's; more steps, another seed or a larger lr.\n" in md


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
