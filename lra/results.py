"""Run outputs: atomic file writes, the summary schema, and aggregation into tables.

A run folder holds `config.yaml`, `metrics.jsonl` (one line per evaluation), `summary.json`,
and the checkpoints `last.pt` (resume) and `best.pt` (best dev accuracy).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_write_text

from .cli import UserError, call

# Every summary.json has at least these keys, in this order in tables.
SUMMARY_KEYS = (
    "task", "attention", "seed", "device", "data", "mini", "params", "steps",
    "best_dev_accuracy", "test_accuracy", "majority_accuracy", "peak_memory_mb",
    "step_time_ms", "tokens_per_s", "kernel_backend",
)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append one line; a line is written whole with a single write, then flushed to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


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


# The plots of an aggregation: file name -> (the summary key on the x axis, its axis label).
PLOTS = {
    "accuracy_vs_memory.png": ("peak_memory_mb", "peak memory (MB)"),
    "accuracy_vs_time.png": ("step_time_ms", "training step time (ms)"),
}


def plot_accuracy_vs(rows: list[dict[str, Any]], x_key: str, x_label: str, path: Path) -> None:
    """One panel per task: test accuracy against `x_key` (memory, time), one point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        # A run too short to time (step_time_ms is null for 2 steps or fewer) has no point.
        for row in (r for r in rows if r["task"] == task and r.get(x_key) is not None):
            ax.scatter(row[x_key], row["test_accuracy"], s=25)
            ax.annotate(row["attention"], (row[x_key], row["test_accuracy"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        majority = max(r["majority_accuracy"] for r in rows if r["task"] == task)
        ax.axhline(majority, ls=":", c="grey", lw=1, label="majority class")
        ax.set_title(task + (" (mini)" if any(r.get("mini") for r in rows) else ""))
        ax.set_xlabel(x_label)
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def aggregate(root: str | Path, out_dir: str | Path, *, title: str) -> list[dict[str, Any]]:
    """Collect the summaries below `root` into out_dir/results.{csv,md} and the accuracy vs
    memory and accuracy vs step time plots."""
    rows = find_summaries(root)
    rows.sort(key=lambda r: (r["task"], r["attention"], r["seed"]))
    columns = list(SUMMARY_KEYS)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "results.csv", to_csv(rows, columns))
    note = ""
    if any(r.get("mini") for r in rows):
        note = ("\nRows with mini=True ran on the offline mini suite: stand-ins for the LRA "
                "tasks, not the benchmark.\n")
    atomic_write_text(out_dir / "results.md", f"# {title}\n\n" + to_markdown(rows, columns)
                      + note)
    if rows:
        for name, (x_key, x_label) in PLOTS.items():
            plot_accuracy_vs(rows, x_key, x_label, out_dir / name)
    return rows


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lra.results",
        description="Aggregate the summary.json files below a folder of runs into "
                    "results.{csv,md} and the plots accuracy_vs_memory.png and "
                    "accuracy_vs_time.png (one panel per task, one point per run).")
    parser.add_argument("runs", type=Path,
                        help="folder searched for summary.json files (any depth), e.g. "
                             "results/runs/lra/lra_all: <runs_dir>/<data>/<tag> of a sweep")
    parser.add_argument("out", type=Path, help="output folder, created if missing, e.g. "
                                               "results/lra_all")
    parser.add_argument("--title", default="lra-zoo results",
                        help="heading of results.md (default: %(default)r)")
    return parser


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if not args.runs.is_dir():
        ap.error(f"{args.runs} is not a folder of runs")
    rows = aggregate(args.runs, args.out, title=args.title)
    print((args.out / "results.md").read_text())
    print(f"{len(rows)} runs; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(call(main))
