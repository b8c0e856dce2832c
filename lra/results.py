"""Run outputs: the summary schema, and aggregation into tables.

A run folder (lra.run) holds `config.yaml`, `metrics.jsonl` (one line per evaluation),
`summary.json`, and the checkpoints `last.pt` (resume) and `best.pt` (best dev accuracy).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data_prep import tasks as data_tasks
from data_prep.atomic import atomic_write_text

from .cli import UserError, call

# Every summary.json has at least these keys, in this order in tables.
SUMMARY_KEYS = (
    "task", "attention", "seed", "device", "data", "mini", "params", "steps",
    "best_dev_accuracy", "test_accuracy", "majority_accuracy", "peak_memory_mb",
    "step_time_ms", "tokens_per_s", "kernel_backend",
)


# A run has left the class prior when its test accuracy is at least this many binomial standard
# errors of the majority-class baseline above that baseline. Below it the number looks like a
# result and is the prior: ListOps runs sitting at about 17% and Pathfinder runs at 50% are what
# users of the LRA harnesses most often report as results that do not reproduce.
PRIOR_Z = 2.0


def z_vs_majority(run: dict[str, Any]) -> float | None:
    """(test accuracy - majority-class accuracy) over the majority baseline's binomial standard
    error sqrt(p (1 - p) / test examples); None for a summary written before the test split's
    size was recorded (`test_examples`)."""
    n = run.get("test_examples")
    if not n:
        return None
    p = run["majority_accuracy"]
    return (run["test_accuracy"] - p) / math.sqrt(max(p * (1 - p), 1e-12) / n)


def at_prior(run: dict[str, Any]) -> bool:
    """Whether a run's test accuracy is indistinguishable from always giving the majority class
    (z below PRIOR_Z); False where the test split's size is unknown."""
    z = z_vs_majority(run)
    return z is not None and z < PRIOR_Z


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def check_summary(summary: dict[str, Any]) -> None:
    if not isinstance(summary, dict):
        raise ValueError(f"a summary is a JSON object, not {type(summary).__name__}")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise ValueError(f"summary is missing {missing}")


def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json; a corrupt or incomplete one is one UserError naming it and the fix."""
    try:
        summary = json.loads(path.read_text())
        check_summary(summary)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise UserError(f"{path} is not a valid run summary ({err}); delete it and rerun the "
                        "run's command: it resumes from its checkpoints and writes it again"
                        ) from None
    return summary


def find_summaries(root: str | Path) -> list[dict[str, Any]]:
    """Every summary.json below `root`, each with its folder as `run_dir`, in a stable order."""
    rows = []
    for path in sorted(Path(root).rglob("summary.json")):
        row = read_summary(path)
        row["run_dir"] = str(path.parent)
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:  # a mean over no values: no run measured it
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_csv(rows: Iterable[dict[str, Any]], columns: Iterable[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: Iterable[dict[str, Any]], columns: Iterable[str]) -> str:
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> float | None:
    """Sample standard deviation over seeds; None for fewer than two."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _ci95(values: list[float]) -> float | None:
    """Half-width of the two-sided 95% confidence interval of the mean over seeds, Student's t
    with n - 1 degrees of freedom (4.30 standard errors for 3 seeds, 2.78 for 5); None for fewer
    than two seeds."""
    from scipy import stats  # here, not at the top: every training run imports this module

    std = _std(values)
    if std is None:
        return None
    return float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


# runs.csv: one row per run.
RUN_COLUMNS = (*SUMMARY_KEYS, "test_examples", "z_vs_majority")
# results.csv: one row per (task, attention), over its seeds; at_prior: how many of them stayed
# at the class prior.
TABLE_COLUMNS = (
    "task", "attention", "data", "mini", "protocol", "seeds", "at_prior", "test_accuracy_mean",
    "test_accuracy_std", "test_accuracy_ci95", "best_dev_accuracy_mean", "majority_accuracy",
    "peak_memory_mb", "tokens_per_s", "step_time_ms", "params", "kernel_backend",
)
# The published figures (results/published/README.md cites them), and the protocol each ran.
PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published" / \
    "published_lra_accuracy.csv"
PUBLISHED_SOURCES = {
    "lra_paper_2021": ("Tay et al. 2021 (LRA paper, Table 1)", "lra_original"),
    "nystromformer_rerun_2021": ("Xiong et al. 2021 (Nystromformer re-run)", "small_protocol"),
}


def table_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, attention, protocol): accuracy mean and std over seeds, costs' means."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        key = (run["task"], run["attention"], run.get("protocol", "unknown"))
        groups.setdefault(key, []).append(run)
    rows = []
    for (task, attention, protocol), group in groups.items():
        acc = [r["test_accuracy"] for r in group]
        rows.append({
            "task": task, "attention": attention, "data": group[0]["data"],
            "mini": any(r["mini"] for r in group), "protocol": protocol, "seeds": len(group),
            "at_prior": sum(map(at_prior, group)),
            "test_accuracy_mean": _mean(acc), "test_accuracy_std": _std(acc),
            "test_accuracy_ci95": _ci95(acc),
            "best_dev_accuracy_mean": _mean([r["best_dev_accuracy"] for r in group]),
            "majority_accuracy": group[0]["majority_accuracy"],
            **{k: _mean([r[k] for r in group if r.get(k) is not None])
               for k in ("peak_memory_mb", "tokens_per_s", "step_time_ms")},
            "params": group[0]["params"],
            "kernel_backend": ",".join(sorted({r["kernel_backend"] for r in group})),
        })
    return rows


def attention_rows(runs: list[dict[str, Any]], tasks: list[str]) -> list[dict[str, Any]]:
    """One row per attention that ran every task: the accuracy averaged over the tasks (its std
    over the seeds that ran every task), its costs' geometric means over the tasks, and how many
    of its runs stayed at the class prior."""
    rows = []
    for attention in dict.fromkeys(r["attention"] for r in runs):
        mine = [r for r in runs if r["attention"] == attention]
        if {r["task"] for r in mine} != set(tasks):
            continue
        by_seed = {}
        for r in mine:
            by_seed.setdefault(r["seed"], {})[r["task"]] = r["test_accuracy"]
        averages = [_mean(list(acc.values())) for acc in by_seed.values() if len(acc) == len(tasks)]
        per_task = [_mean([r["test_accuracy"] for r in mine if r["task"] == t]) for t in tasks]
        majority = _mean([next(r["majority_accuracy"] for r in mine if r["task"] == t)
                          for t in tasks])
        rows.append({"attention": attention, "accuracy_mean": _mean(per_task),
                     "majority_mean": majority, "at_prior": sum(map(at_prior, mine)),
                     "accuracy_std": _std(averages), "seeds": len(by_seed),
                     "tasks": ", ".join(tasks),
                     **{k: _geomean([r[k] for r in mine if r.get(k)])
                        for k in ("peak_memory_mb", "tokens_per_s")}})
    return rows


def published_rows(attentions: list[str], tasks: list[str]) -> list[dict[str, Any]]:
    """The published accuracies (%) of these attentions on these tasks, one row per source."""
    rows = []
    with open(PUBLISHED) as f:
        for row in csv.DictReader(f):
            if row["attention"] in attentions and row["source"] in PUBLISHED_SOURCES:
                cite, protocol = PUBLISHED_SOURCES[row["source"]]
                rows.append({"attention": row["attention"], "source": f"{cite}, {protocol}",
                             **{t: float(row[t]) for t in tasks if row.get(t)}})
    return rows


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


# Marks a cell of ours some of whose seeds stayed at the class prior (results.csv: at_prior).
AT_PRIOR_MARK = "†"


def accuracy_markdown(table: list[dict[str, Any]], tasks: list[str], mini: bool) -> str:
    """Test accuracy (%) per task and its average over the tasks shown, ours beside the
    published rows of the same attentions (not for mini runs: stand-ins, not LRA); a cell with
    seeds at the class prior is marked, and a line under the table says how many."""
    header = ["attention", "source", *tasks, "avg", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    attentions = list(dict.fromkeys(r["attention"] for r in table))
    published = [] if mini else published_rows(attentions, tasks)
    for attention in attentions:
        for protocol in dict.fromkeys(r["protocol"] for r in table if r["attention"] == attention):
            cells = {r["task"]: r for r in table
                     if r["attention"] == attention and r["protocol"] == protocol}
            means = [cells[t]["test_accuracy_mean"] for t in tasks if t in cells]
            avg = f"{100 * _mean(means):.2f}" if len(means) == len(tasks) else "-"
            seeds = sorted({c["seeds"] for c in cells.values()})
            source = f"ours{' (mini data)' if mini else ''}, {protocol}"
            lines.append("| " + " | ".join([attention, source, *(
                _cell(cells[t]["test_accuracy_mean"], cells[t]["test_accuracy_std"])
                + (AT_PRIOR_MARK if cells[t]["at_prior"] else "")
                if t in cells else "-" for t in tasks), avg, "/".join(map(str, seeds))]) + " |")
        for row in (p for p in published if p["attention"] == attention):
            values = [row.get(t) for t in tasks]
            avg = f"{_mean(values):.2f}" if None not in values else "-"
            lines.append("| " + " | ".join([attention, row["source"], *(
                "-" if v is None else f"{v:.2f}" for v in values), avg, "-"]) + " |")
    stuck = [r for r in table if r["at_prior"]]
    if stuck:
        lines += ["", f"{AT_PRIOR_MARK} seeds at the class prior (test accuracy less than "
                  f"{PRIOR_Z:g} binomial standard errors above the majority class's; "
                  "runs.csv: z_vs_majority): " + ", ".join(
                      f"{r['attention']} on {r['task']} {r['at_prior']} of {r['seeds']}"
                      for r in stuck) + ". Their mean is partly the prior's; more steps, "
                  "another seed or a larger lr."]
    return "\n".join(lines) + "\n"


def aggregate(root: str | Path, out_dir: str | Path, *, title: str, wandb: bool = False
              ) -> list[dict[str, Any]]:
    """Collect the summaries below `root` into out_dir/: results.csv (one row per task and
    attention, over seeds), runs.csv (one per run), results.md, and the plots of lra.plots.
    Returns the runs."""
    from . import plots

    runs = find_summaries(root)
    runs.sort(key=lambda r: (r["task"], r["attention"], r["seed"]))
    if len({bool(r["mini"]) for r in runs}) > 1:
        raise UserError(f"{root} holds both mini and LRA runs; aggregate "
                        "<runs_dir>/mini/<tag> and <runs_dir>/lra/<tag> separately")
    mini = any(r["mini"] for r in runs)
    if mini:
        title += " [MINI DATA: stand-ins, not the LRA benchmark]"
    # In the LRA paper's order (the registry's), then any other task.
    order = data_tasks.names()
    tasks = sorted({r["task"] for r in runs}, key=lambda t: (order + [t]).index(t))
    table = table_rows(runs)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "results.csv", to_csv(table, TABLE_COLUMNS))
    for run in runs:
        run["z_vs_majority"] = z_vs_majority(run)
    atomic_write_text(out_dir / "runs.csv", to_csv(runs, RUN_COLUMNS))
    costs = [{**r, "test_accuracy": _cell(r["test_accuracy_mean"], r["test_accuracy_std"]),
              "ci95": _cell(r["test_accuracy_ci95"], None)} for r in table]
    note = ("Mini data: every row ran on the offline mini suite (stand-ins for the LRA tasks), "
            "so no published LRA figure is shown beside them.\n\n" if mini else
            "Published rows: results/published/ (cited there); each ran the protocol named.\n\n")
    text = (f"# {title}\n\nTest accuracy (%), mean ± std over seeds (seeds: how many); avg: over "
            "the tasks shown. The 95% confidence interval of each mean (Student's t over seeds) "
            f"is ± ci95 of the cost table.\n\n{accuracy_markdown(table, tasks, mini)}\n{note}"
            "## Cost per task and attention (means over seeds)\n\npeak_memory_mb: peak growth of "
            "live tensor memory in one training step; tokens_per_s: real tokens trained per "
            "second (README, \"Where results go\"). One row per run: runs.csv.\n\n"
            + to_markdown(costs, ("task", "attention", "test_accuracy", "ci95", "peak_memory_mb",
                                  "tokens_per_s", "step_time_ms", "params", "kernel_backend",
                                  "seeds", "at_prior")))
    atomic_write_text(out_dir / "results.md", text)
    if runs:
        overview = attention_rows(runs, tasks)
        for cost, (_, name) in plots.COSTS.items():
            plots.plot_overview(overview, cost, title, out_dir / name)
        plots.plot_per_task(table, tasks, title, out_dir / plots.PER_TASK)
        if wandb:
            log_to_wandb(table, out_dir, title)
    return runs


def log_to_wandb(table: list[dict[str, Any]], out_dir: Path, title: str) -> None:
    """One wandb run holding the results table, the accuracy-vs-memory scatter and the plots.
    Offline without WANDB_API_KEY (or as WANDB_MODE says), with the `wandb sync` command printed."""
    import wandb

    from . import plots

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY")
                                            else "offline")
    tag = out_dir.name
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lra-zoo"), name=f"summary-{tag}",
                     group=tag, job_type="aggregate", dir=str(out_dir), mode=mode,
                     config={"title": title}, reinit="finish_previous")
    results = wandb.Table(columns=list(TABLE_COLUMNS),
                          data=[[r.get(c) for c in TABLE_COLUMNS] for r in table])
    run.log({"results": results,
             "accuracy_vs_memory": wandb.plot.scatter(
                 results, "peak_memory_mb", "test_accuracy_mean",
                 title=f"{title}: test accuracy vs peak memory"),
             **{name.removesuffix(".png"): wandb.Image(str(out_dir / name))
                for name in [p for _, p in plots.COSTS.values()] + [plots.PER_TASK]
                if (out_dir / name).exists()}})
    local = Path(run.dir).parent  # the run's folder (run.dir is its files/ inside)
    run.finish()
    if mode == "offline":
        print(f"wandb ran offline (no WANDB_API_KEY); upload it with: wandb sync {local}")
    elif mode == "online":
        print(f"wandb summary run: {run.url}")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lra.results",
        description="Aggregate the summary.json files below a folder of runs into "
                    "results.csv (per task and attention, mean and std over seeds), runs.csv, "
                    "results.md (beside the published figures) and the plots "
                    "accuracy_vs_memory.png, accuracy_vs_speed.png and accuracy_per_task.png.")
    parser.add_argument("runs", type=Path,
                        help="folder searched for summary.json files (any depth), e.g. "
                             "results/runs/lra/lra_all: <runs_dir>/<data>/<tag> of a sweep")
    parser.add_argument("out", type=Path, help="output folder, created if missing, e.g. "
                                               "results/lra_all")
    parser.add_argument("--title", default="lra-zoo results",
                        help="heading of results.md (default: %(default)r)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log one wandb run with the table and the plots (offline "
                             "without WANDB_API_KEY; the `wandb sync` command is printed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if not args.runs.is_dir():
        ap.error(f"{args.runs} is not a folder of runs")
    rows = aggregate(args.runs, args.out, title=args.title, wandb=args.wandb)
    print((args.out / "results.md").read_text())
    print(f"{len(rows)} runs; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(call(main))
