"""`make bench`: forward+backward time, peak memory and approximation error of every attention.

    python -m lra.bench [--lengths 1024 4096] [--attentions softmax mra2 ...] [--error-length 1024]

Each (attention, length) is measured in a fresh subprocess after a warm-up pass: peak memory is
the growth over the inputs already in memory during one forward+backward (lra.memory: live
tensor bytes counted at the dispatcher on CPU, torch.cuda.max_memory_allocated on CUDA), the same
kind of figure as a training run's peak_memory_mb. Time is the median of
`--repeats` further forward+backward passes. The error is ||out - exact|| / ||exact|| against
softmax_naive on locality-structured inputs (attention_zoo.structured). Timings on a shared
machine are noisy: compare ratios from one run, not absolute figures across runs.

Writes results/bench/{bench.csv, bench.md, time_memory_vs_length.png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from attention_zoo import attention_class, build_attention, list_attentions
from attention_zoo.structured import relative_error, structured_qkv

from .atomic import atomic_write_text
from .cli import call
from .memory import PeakMemory
from .results import to_csv, to_markdown

ROOT = Path(__file__).resolve().parents[1]
HEADS, HEAD_DIM, BATCH = 2, 32, 1


def measure(name: str, seq: int, repeats: int, device: str) -> dict:
    """Time and peak memory of forward+backward for one attention at one length."""
    torch.manual_seed(0)
    attn = build_attention(name, num_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=seq).to(device)
    q, k, v = (x.to(device).requires_grad_(True)
               for x in structured_qkv(BATCH, HEADS, seq, HEAD_DIM))
    if attn.needs_shared_qk:
        k = q
    mask = torch.ones(BATCH, seq, dtype=torch.bool, device=device)
    grad = torch.randn(BATCH, HEADS, seq, HEAD_DIM, device=device)

    def step():
        attn(q, k, v, mask).backward(grad)
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: libraries, thread pools and caches that any first call sets up
    with PeakMemory(torch.device(device)) as memory:  # not timed: counting slows CPU ops
        step()
    peak = memory.peak_mb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    return {"attention": name, "seq_len": seq, "fwd_bwd_ms": statistics.median(times),
            "peak_memory_mb": peak, "device": device}


@torch.no_grad()
def approximation_error(name: str, seq: int) -> float:
    torch.manual_seed(0)
    q, k, v = structured_qkv(2, HEADS, seq, HEAD_DIM, seed=1)
    mask = torch.ones(2, seq, dtype=torch.bool)
    mask[1, seq * 3 // 4:] = False  # one padded example: errors count real rows only
    exact = build_attention("softmax_naive", num_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=seq)
    attn = build_attention(name, num_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=seq).eval()
    if attn.needs_shared_qk:
        k = q
    return relative_error(attn(q, k, v, mask), exact(q, k, v, mask), mask)


def run_worker(name: str, seq: int, repeats: int, device: str) -> dict:
    """Run `measure` in a fresh interpreter and return its JSON line."""
    cmd = [sys.executable, "-m", "lra.bench", "--worker", name, str(seq), "--repeats",
           str(repeats), "--device", device]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"attention": name, "seq_len": seq, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def published_section(rows: list[dict]) -> str:
    """Our ratios beside the MRA authors' published ones (results/published/), same attentions."""
    path = ROOT / "results" / "published" / "published_mra_efficiency.csv"
    if not path.exists():
        return ""
    published = list(csv.DictReader(open(path)))
    ref = {r["seq_len"]: r for r in published if r["attention"] == "softmax"}
    lines = []
    for r in published:
        if r["attention"] == "softmax" or r["seq_len"] not in ref:
            continue
        seq = int(r["seq_len"])
        ours = next((x for x in rows if x["attention"] == r["attention"] and x["seq_len"] == seq
                     and "time_vs_naive" in x), None)
        base = ref[r["seq_len"]]
        lines.append({
            "attention": r["attention"], "seq_len": seq, "published_setting": r["setting"],
            "published_time_vs_softmax": float(r["fwd_bwd_ms_per_instance"])
            / float(base["fwd_bwd_ms_per_instance"]),
            "published_memory_vs_softmax": float(r["memory_mb_per_instance"])
            / float(base["memory_mb_per_instance"]),
            "our_time_vs_naive": ours["time_vs_naive"] if ours else "",
            "our_memory_vs_naive": ours["memory_vs_naive"] if ours else "",
        })
    columns = ["attention", "seq_len", "published_setting", "published_time_vs_softmax",
               "published_memory_vs_softmax", "our_time_vs_naive", "our_memory_vs_naive"]
    return ("\n## Beside the published figures\n\nPublished: the MRA authors' profiler outputs "
            "(one layer, 12 heads x 64, fp32, GPU; results/published/), whose softmax baseline "
            "materialises the n x n matrix; ours are therefore against softmax_naive, from this "
            "run, with our default settings (which may differ from the published setting "
            "column), on CPU. Compare ratios and trends only.\n\n" + to_markdown(lines, columns))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = sorted({r["attention"] for r in rows})
    colours = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        pts = sorted((r["seq_len"], r) for r in rows if r["attention"] == name and "error" not in r)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        # The method of the paper and the exact baselines solid, the other baselines dashed.
        style = "-o" if name.startswith(("mra", "softmax")) else "--."
        colour = colours(i % colours.N)
        axes[0].plot(xs, [p[1]["fwd_bwd_ms"] for p in pts], style, label=name, color=colour)
        axes[1].plot(xs, [p[1]["peak_memory_mb"] for p in pts], style, label=name, color=colour)
    for ax, ylabel in zip(axes, ("forward+backward (ms)", "peak memory (MB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"one attention layer, batch {BATCH}, {HEADS} heads x {HEAD_DIM}, "
                 f"{rows[0].get('device', 'cpu')}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lra.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attentions", nargs="+", default=None,
                        help="names to measure (default: every registered attention)")
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096])
    parser.add_argument("--error-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "LEN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), args.repeats,
                                 args.device)))
        return 0

    names = args.attentions or list_attentions()
    unknown = sorted(set(names) - set(list_attentions()))
    if unknown:
        parser.error(f"unknown attention(s) {unknown}; valid: {', '.join(list_attentions())}")
    rows = []
    for name in names:
        for seq in args.lengths:
            row = run_worker(name, seq, args.repeats, args.device)
            if "error" not in row and seq == args.error_length:
                row["rel_error"] = approximation_error(name, seq)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.error_length not in args.lengths:
        for name in names:
            rows.append({"attention": name, "seq_len": args.error_length,
                         "rel_error": approximation_error(name, args.error_length)})
    # Ratios against the fused exact kernel (softmax) and the explicit n x n one (softmax_naive,
    # the "Transformer" of the papers' efficiency tables).
    for ref_name, suffix in (("softmax", "softmax"), ("softmax_naive", "naive")):
        base = {r["seq_len"]: r for r in rows if r["attention"] == ref_name and "fwd_bwd_ms" in r}
        for row in rows:
            ref = base.get(row["seq_len"])
            if ref and "fwd_bwd_ms" in row:
                row[f"time_vs_{suffix}"] = row["fwd_bwd_ms"] / ref["fwd_bwd_ms"]
                row[f"memory_vs_{suffix}"] = (row["peak_memory_mb"]
                                              / max(ref["peak_memory_mb"], 1e-9))
    for row in rows:
        row["approximates_softmax"] = attention_class(row["attention"]).approximates_softmax
    columns = ["attention", "seq_len", "fwd_bwd_ms", "time_vs_softmax", "time_vs_naive",
               "peak_memory_mb", "memory_vs_softmax", "memory_vs_naive", "rel_error",
               "approximates_softmax", "device", "error"]
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m lra.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(args.out / "bench.csv", to_csv(rows, columns))
    atomic_write_text(args.out / "bench.md", (
        f"# Attention benchmark\n\nCommand: `{command.strip()}`\n\n"
        f"One layer, batch {BATCH}, {HEADS} heads x {HEAD_DIM}; forward+backward median of "
        f"{args.repeats}; memory = peak growth of live tensor bytes (counted at the dispatcher "
        "on CPU, allocated on CUDA); rel_error = "
        "||out - exact|| / ||exact|| on locality-structured inputs (for methods that do not "
        "approximate softmax it measures how far their own kernel is from it).\n\n"
        + to_markdown(rows, columns) + published_section(rows)))
    plot([r for r in rows if "fwd_bwd_ms" in r], args.out / "time_memory_vs_length.png")
    print(f"written: {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(call(main))
