"""The figures of an aggregation (lra.results): accuracy against memory and against speed.

`accuracy_vs_memory.png` and `accuracy_vs_speed.png` put one point per attention: its test
accuracy averaged over the tasks of the grid, with error bars over seeds, against its peak memory
or training throughput summarised over tasks by the geometric mean (tasks differ by orders of
magnitude; the cost axis is logarithmic). `accuracy_per_task.png` has one panel per task. Every
point is labelled with its attention's name beside it, and drawn hollow when some of its seeds
stayed at the class prior (lra.results.at_prior); the title says when the runs are mini
stand-ins.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

# x-axis choices: summary key -> (axis label, file name).
COSTS = {
    "peak_memory_mb": ("peak memory of a training step (MB, log scale)", "accuracy_vs_memory.png"),
    "tokens_per_s": ("training throughput (real tokens / s, log scale; right is faster)",
                     "accuracy_vs_speed.png"),
}
PER_TASK = "accuracy_per_task.png"
# Exact attention and the MRA paper's methods, drawn in red and bold.
HIGHLIGHT = ("softmax", "mra2", "mra2_s")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Where a label may sit around its point (points of offset, alignment), tried in this order
# until it overlaps no label placed before it.
LABEL_SPOTS = [((5, 3), "left"), ((5, -11), "left"), ((-5, 3), "right"), ((-5, -11), "right"),
               ((5, 13), "left"), ((5, -21), "left"), ((-5, 13), "right"), ((-5, -21), "right")]


def _place_labels(ax, labels: list[tuple[str, float, float, bool]]) -> None:
    """Annotate each (text, x, y, bold) beside its point, at the first spot that overlaps no
    label already placed (readable without a legend)."""
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for text, x, y, bold in labels:
        for offset, align in LABEL_SPOTS:
            note = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points",
                               fontsize=8, ha=align, fontweight="bold" if bold else "normal")
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            note.remove()
        else:
            note = ax.annotate(text, (x, y), xytext=LABEL_SPOTS[0][0],
                               textcoords="offset points", fontsize=8)
            box = note.get_window_extent(renderer)
        placed.append(box)


AT_PRIOR_LABEL = "hollow: some seeds at the class prior"


def _points(ax, points: list[tuple[str, float, float, float, bool]], x_label: str) -> None:
    """points: (label, x, accuracy %, error bar %, whether some of its seeds stayed at the class
    prior: drawn hollow), on a log x axis with plain tick numbers."""
    from matplotlib.ticker import FuncFormatter

    for label, x, y, err, stuck in points:
        highlight = label in HIGHLIGHT
        color = "C3" if highlight else "C0"
        ax.errorbar(x, y, yerr=err, fmt="o", ms=6 if highlight else 4.5, capsize=3,
                    color=color, mfc="none" if stuck else color, ecolor="0.7", elinewidth=1)
    if any(p[4] for p in points):  # a legend entry, shown with the majority line's
        ax.plot([], [], "o", mfc="none", color="0.4", label=AT_PRIOR_LABEL)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: plain(v) if str(round(v / 10 ** math.floor(math.log10(v)), 6))[0] in "235"
        else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.15, y=0.12)
    ax.figure.canvas.draw()  # fixes the limits, so that label boxes are final
    _place_labels(ax, [(label, x, y, label in HIGHLIGHT) for label, x, y, *_ in points])


def _majority_line(ax, accuracy: float, label: str) -> None:
    """The accuracy of always answering the training split's most frequent class: the floor a
    trained model must clear."""
    ax.axhline(100 * accuracy, ls=":", c="grey", lw=1, label=label)
    # A legend, not a text on the line: the line runs through the points' labels at chance.
    ax.legend(loc="best", fontsize=7, frameon=False, labelcolor="grey")


def plot_overview(rows: list[dict[str, Any]], cost: str, title: str, path: Path) -> None:
    """rows: lra.results.attention_rows. An attention without the cost (a run of 2 steps or
    fewer is not timed) has no point; a plot with none says so."""
    points = [(r["attention"], r[cost], 100 * r["accuracy_mean"], 100 * (r["accuracy_std"] or 0),
               r["at_prior"] > 0) for r in rows if r.get(cost)]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if points:
        _points(ax, points, COSTS[cost][0] + ", geometric mean over tasks")
        _majority_line(ax, rows[0]["majority_mean"], "majority class (mean over tasks)")
    else:
        ax.text(0.5, 0.5, f"no {cost}: no attention ran every task, or no run was long enough "
                "to measure (more than 2 steps)", ha="center", va="center", wrap=True)
        ax.axis("off")
    tasks = rows[0]["tasks"] if rows else "-"
    ax.set_title(textwrap.fill(title, 90) + f"\nmean test accuracy over {tasks}; error bars: "
                 "std over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_per_task(rows: list[dict[str, Any]], tasks: list[str], title: str, path: Path
                  ) -> None:
    """rows: lra.results.table_rows, one per (task, attention); one panel per task, in order."""
    plt = _pyplot()
    cols = min(3, len(tasks))
    nrows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.2 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        mine = [r for r in rows if r["task"] == task and r.get("peak_memory_mb")]
        _points(ax, [(r["attention"], r["peak_memory_mb"], 100 * r["test_accuracy_mean"],
                      100 * (r["test_accuracy_std"] or 0), r["at_prior"] > 0) for r in mine],
                "peak memory (MB, log scale)")
        if mine:
            _majority_line(ax, max(r["majority_accuracy"] for r in mine), "majority class")
        ax.set_title(task, fontsize=10)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    fig.suptitle(textwrap.fill(f"{title}: test accuracy vs peak memory per task (error bars: "
                               "std over seeds)", 60 * cols), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
