"""The study's figures. One colour and one marker per attention, the same in every figure;
a kernel backend other than the preferred one is dashed; peers are hollow markers in their
attention's colour; the published MRA figures are black-edged stars/squares."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from attention_zoo import list_attentions  # noqa: E402

MARKERS = "osD^v<>pPXh*H8d"
FLOOR = 1e-3  # error axis floor: exact methods' rounding (1e-7) would squash the others
PUBLISHED = Path(__file__).resolve().parents[2] / "results" / "published"


def style(name: str) -> dict:
    """The colour and marker of one attention (by its place in the registry)."""
    names = list_attentions()
    i = names.index(name) if name in names else len(names)
    # tab20's dark shades first, then its light ones: neighbours in the registry (mra2, mra2_s)
    # get different hues.
    colours = plt.get_cmap("tab20")
    return {"color": colours((2 * i) % 20 + (2 * i) // 20 % 2), "marker": MARKERS[i % len(MARKERS)]}


def published(which: str) -> list[dict]:
    path = PUBLISHED / f"published_mra_{which}.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _finish(fig, ax, path: Path, title: str, legend_cols: int = 2) -> None:
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=legend_cols, loc="best")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def versus_length(rows: list[dict], metric: str, ylabel: str, path: Path, title: str) -> None:
    """metric against length (log-log) at the smallest batch, and its ratio to softmax beside
    the published ratios (GPU, 12 x 64) where they exist."""
    batch = min(r["batch"] for r in rows)
    ok = [r for r in rows if r["status"] == "ok" and r["batch"] == batch]
    series = sorted({(r["attention"], r["backend"]) for r in ok})
    first = {}
    for name, backend in series:
        first.setdefault(name, backend)
    ref = {r["seq_len"]: r[metric] for r in ok if r["attention"] == "softmax"}
    fig, (ax, rel) = plt.subplots(1, 2, figsize=(13, 5))
    for name, backend in series:
        pts = sorted((r["seq_len"], r[metric]) for r in ok
                     if (r["attention"], r["backend"]) == (name, backend))
        label = name if backend == "-" else f"{name} ({backend})"
        line = "-" if backend == first[name] else "--"
        ax.plot(*zip(*pts, strict=True), line, label=label, markersize=5, **style(name))
        ratio = [(n, y / ref[n]) for n, y in pts if n in ref]
        if ratio:
            rel.plot(*zip(*ratio, strict=True), line, label=label, markersize=5, **style(name))
    column = {"fwd_bwd_ms": "fwd_bwd_ms_per_instance",
              "peak_memory_mb": "memory_mb_per_instance"}[metric]
    pub = published("efficiency")
    base = {r["seq_len"]: float(r[column]) for r in pub if r["attention"] == "softmax"}
    labelled = set()
    for r in pub:
        if r["attention"] != "softmax" and r["seq_len"] in base:
            label = f"{r['attention']} {r['setting']} (published, GPU)"
            rel.plot(int(r["seq_len"]), float(r[column]) / base[r["seq_len"]], linestyle="none",
                     markersize=11, markerfacecolor="none", markeredgewidth=1.5,
                     color=style(r["attention"])["color"], marker="*",
                     label=None if label in labelled else label)
            labelled.add(label)
    for a in (ax, rel):
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("sequence length")
    ax.set_ylabel(ylabel)
    rel.set_ylabel(f"{ylabel} / softmax's")
    rel.axhline(1.0, color="black", linewidth=0.8)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"{title}, batch {batch}", fontsize=10)
    rel.legend(fontsize=6, ncol=2, loc="best")
    _finish(fig, rel, path, "relative to softmax (SDPA); stars: published MRA ratios", 2)


def error_versus(rows: list[dict], metric: str, xlabel: str, path: Path, title: str) -> None:
    """Relative error against a cost (time, memory) or entropy: one curve per attention over its
    budget, in the budget's order (or over logit scales for entropy), ours solid, peers hollow
    and dotted. Errors under FLOOR (exact methods, rounding only) are drawn at FLOOR."""
    fig, ax = plt.subplots(figsize=(9, 6))
    for source in sorted({r["source"] for r in rows}, key=lambda s: s != "ours"):
        for name in sorted({r["attention"] for r in rows if r["source"] == source}):
            pts = [(r[metric], max(r["relative_error"], FLOOR)) for r in rows
                   if r["attention"] == name and r["source"] == source
                   and r[metric] != "" and r["relative_error"] != ""]
            if metric == "entropy":
                pts.sort()
            if not pts:
                continue
            peer = source != "ours"
            kwargs = style(name)
            if peer:
                kwargs.update(markerfacecolor="none", markersize=9)
            ax.plot(*zip(*pts, strict=True), ":" if peer else "-", markersize=kwargs.pop(
                "markersize", 5), label=f"{name} [{source}]" if peer else name, **kwargs)
    if metric == "entropy":
        ax.set_xscale("linear")
    else:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"relative error ||Y_hat - Y|| / ||Y|| (mean over heads; < {FLOOR:g} drawn "
                  "at it)")
    _finish(fig, ax, path, title, 2)


def error_versus_budget(rows: list[dict], path: Path, title: str) -> None:
    """Our error against each attention's own knob beside the published MRA-paper errors at the
    same settings (one panel per attention the paper reports)."""
    pub = published("approximation")
    names = [n for n in dict.fromkeys(r["attention"] for r in pub)
             if any(r["attention"] == n for r in rows)]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ours = [r for r in rows if r["attention"] == name and r["source"] == "ours"]
        knob = ours[0]["options"].split("=")[0] if ours else ""
        kw = style(name)
        pts = sorted((float(r["options"].split(",")[0].split("=")[1]), r["relative_error"])
                     for r in ours if r["relative_error"] != "" and "," not in r["options"])
        if pts:
            ax.plot(*zip(*pts, strict=True), "-", label="ours", **kw)
        ppts = sorted((float(r["setting"].split("=")[1]), float(r["relative_error"]))
                      for r in pub if r["attention"] == name)
        ax.plot(*zip(*ppts, strict=True), linestyle="none", marker="*", markersize=11,
                color="black", label="published")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(knob or "budget")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("relative error")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
