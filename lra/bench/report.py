"""results/bench/README.md: the command, the settings, the figures and the key tables."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..results import to_markdown
from . import efficiency
from .plots import published

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ["time_vs_length.png", "memory_vs_length.png", "error_vs_time.png",
           "error_vs_memory.png", "error_vs_entropy.png", "error_vs_budget.png"]


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True)
    return proc.stdout.strip() or "unknown"


def ratios(rows: list[dict]) -> list[dict]:
    """At the longest length and smallest batch: each series' figures, its ratios to softmax
    (SDPA) and softmax_naive (the papers' n x n "Transformer"), and its crossover lengths."""
    batch = min(r["batch"] for r in rows)
    longest = max(r["seq_len"] for r in rows)
    at = {(r["attention"], r["backend"]): r for r in rows
          if r["batch"] == batch and r["seq_len"] == longest}
    by_time = efficiency.crossover(rows, "fwd_bwd_ms")
    by_memory = efficiency.crossover(rows, "peak_memory_mb")
    table = []
    for (name, backend), row in at.items():
        line = {**row, "time_crossover": by_time[name, backend, batch],
                "memory_crossover": by_memory[name, backend, batch]}
        for ref, suffix in (("softmax", "softmax"), ("softmax_naive", "naive")):
            base = at.get((ref, "-"))
            if row["status"] == "ok" and base and base["status"] == "ok":
                line[f"time_vs_{suffix}"] = row["fwd_bwd_ms"] / base["fwd_bwd_ms"]
                line[f"memory_vs_{suffix}"] = row["peak_memory_mb"] / max(
                    base["peak_memory_mb"], 1e-9)
        table.append(line)
    return table


def mra_beside_published(app: list[dict]) -> list[dict]:
    """Our errors on real inputs (else structured) at the MRA paper's settings beside its."""
    kinds = {r["inputs"] for r in app}
    kind = "real" if "real" in kinds else "structured"
    ours = {(r["attention"], r["options"]): r for r in app
            if r["inputs"] == kind and r["scale"] == 1.0 and r["source"] == "ours"}
    # One column for every row: a setting we did not run says so in it.
    lengths = ", ".join(map(str, sorted({r["seq_len"] for r in ours.values()})))
    column = f"ours ({kind}, n={lengths})" if ours else "ours"
    table = []
    for pub in published("approximation"):
        setting = pub["setting"].replace("block=", "block_size=").replace(
            "landmarks=", "num_landmarks=")
        mine = ours.get((pub["attention"], setting))
        table.append({"attention": pub["attention"], "setting": pub["setting"],
                      "published (RoBERTa)": float(pub["relative_error"]),
                      column: mine["relative_error"] if mine else "not run"})
    return table


def peers_table(app: list[dict]) -> list[dict]:
    peers = [r for r in app if r["source"].startswith("peer:")]
    ours = {(r["attention"], r["options"], r["inputs"]): r for r in app
            if r["source"] == "ours" and r["scale"] == 1.0}
    return [{"attention": r["attention"], "options": r["options"], "inputs": r["inputs"],
             "peer": r["source"][5:], "ours": ours[key]["relative_error"] if key in ours else "",
             "peer_error": r["relative_error"], "peer_status": r["status"]}
            for r in peers for key in [(r["attention"], r["options"], r["inputs"])]]


def readme(command: str, args, cfg: dict, eff: list[dict], app: list[dict],
           roof: list[dict]) -> str:
    parts = [f"# Efficiency and approximation of every attention\n\nMade by `{command}` at "
             f"commit {git_commit()}, on {args.device} (profile `{args.profile}`).\n"]
    if eff:
        limit = cfg["cell_limit_s"]
        fewer = "" if not limit else (f", fewer once a timer's calls pass {limit / 4:g} s (a "
                                      "quarter of the cell limit)")
        parts.append(
            f"\n## Efficiency\n\nOne attention layer, {cfg['heads']} heads x {cfg['head_dim']}, "
            f"fp32, batch {', '.join(map(str, cfg['batches']))}, lengths "
            f"{', '.join(map(str, cfg['lengths']))}; q, k, v from attention_zoo.structured. "
            f"Time: median of {cfg['repeats']} calls after a warm-up{fewer} (CUDA events on "
            "GPU, wall clock on CPU), forward without autograd and forward+backward. Memory: "
            "peak growth "
            "of live tensor bytes during one forward+backward over the inputs "
            "(lra/memory.py: torch.cuda.max_memory_allocated on GPU; on CPU every storage an "
            "op allocates, counted at the dispatcher until freed, not the process RSS). "
            "status: ok, oom, unsupported: <why>, skipped (after an OOM at a shorter length) "
            "or crashed. Crossover: the shortest length from which on a series beats softmax "
            "(torch's SDPA) at every longer measured length, at the smallest batch.\n\n"
            "![time](time_vs_length.png)\n\n![memory](memory_vs_length.png)\n\n"
            + to_markdown(ratios(eff), ["attention", "backend", "options", "seq_len",
                                        "fwd_ms", "fwd_bwd_ms", "peak_memory_mb",
                                        "time_vs_softmax", "time_vs_naive",
                                        "memory_vs_softmax", "memory_vs_naive",
                                        "time_crossover", "memory_crossover", "status"]))
    if app:
        parts.append(
            "\n## Approximation\n\nrelative_error: mean over instances and heads of "
            "||Y_hat - Y|| / ||Y|| against exact attention (softmax_naive) on the same q, k, v; "
            "Reformer and SOFT need q = k and are given k = q (exact attention too). YOSO and "
            "SOFT define their own kernel: their figure is a distance from softmax. Inputs: "
            "`structured` (attention_zoo.structured, locality-structured synthetic), `real` "
            f"(q, k, v of MiniLM-L6's 6 layers x 12 heads x 32 on {cfg['segments']} segments of "
            "Python's own reference docs, pydoc_data.topics; lra/bench/real_inputs.py). "
            "fwd_bwd_ms and peak_memory_mb: one instance at that setting. uniform: the trivial "
            "estimate (every row the mean of v), as a floor to beat. Each attention is swept "
            "over its own knob (lra/bench/profiles.py BUDGETS); every other option keeps its "
            "default; max_seq_len = seq_len.\n\n"
            "![error vs time](error_vs_time.png)\n\n![error vs memory](error_vs_memory.png)\n\n"
            "![error vs entropy](error_vs_entropy.png)\n\n![error vs budget](error_vs_budget.png)"
            "\n")
        beside = mra_beside_published(app)
        if beside:  # without the published file there is nothing to put beside
            parts.append("\n### Beside the MRA paper's figures\n\n"
                         + to_markdown(beside, list(beside[0])))
        table = peers_table(app)
        if table:
            parts.append("\n### Ours beside the peer packages, same inputs and settings\n\n"
                         + to_markdown(table, list(table[0])))
        floor = [r for r in app if r["attention"] == "uniform"]
        parts.append("\n### Uniform attention, the floor\n\n"
                     + to_markdown(floor, ["inputs", "seq_len", "entropy", "relative_error"]))
    if roof:
        parts.append("\n## Roofline of the block-sparse kernel\n\nGFLOP/s of the selected-block "
                     "work (block_per_row 8, b = 32; forward 2 and backward 5 b x b x d matmuls "
                     "per pair, exp not counted), best of the repeats, beside a dense "
                     "2048 x 2048 fp32 torch.matmul in the same process.\n\n"
                     + to_markdown(roof, ["kernel", "backend", "seq_len", "pass", "ms",
                                          "gflops", "fraction_of_dense"]))
    parts.append("\nFull tables: efficiency.csv, approximation.csv, roofline.csv.\n")
    return "".join(parts)
