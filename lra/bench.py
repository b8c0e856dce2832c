"""`make bench`: forward+backward time, peak memory and approximation error of every attention,
one row per kernel backend, and a roofline of the fused block-sparse kernel.

    python -m lra.bench                     # every attention, 2 heads x 32, lengths 1,024 and 4,096
    python -m lra.bench --profile paper     # the MRA paper's setting: 12 heads x 64, 1,024-8,192
    python -m lra.bench --attentions softmax mra2 --backends all --out results/bench

Each (attention, backend, length) is measured in a fresh subprocess after a warm-up pass: peak
memory is the growth over the inputs already in memory during one forward+backward (lra.memory:
live tensor bytes counted at the dispatcher on CPU, torch.cuda.max_memory_allocated on CUDA), the
same kind of figure as a training run's peak_memory_mb. Time is the median of `--repeats` further
passes. The error is ||out - exact|| / ||exact|| against softmax_naive on locality-structured
inputs (attention_zoo.structured). The roofline times the block-sparse kernel alone at
block_per_row 8 and reports its GFLOP/s beside torch.matmul's, measured in the same run. Timings
on a shared machine are noisy: compare ratios from one run.

Writes bench.{csv,md}, roofline.csv and time_memory_vs_length.png to --out (default
results/bench/local/, which git ignores: the tracked results/bench/ is written by asking for it).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import kernels
from attention_zoo import attention_class, build_attention, list_attentions
from attention_zoo.structured import relative_error, structured_qkv
from data_prep.atomic import atomic_write_text

from .cli import call
from .memory import PeakMemory
from .results import to_csv, to_markdown

ROOT = Path(__file__).resolve().parents[1]
BLOCK_PER_ROW = 8  # the roofline's budget: MRA's LRA setting


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one layer of the benchmark looks like."""

    batch: int = 1
    heads: int = 2
    head_dim: int = 32


PROFILES = {
    # The zoo at the small LRA protocol's head shape.
    "default": (Setting(), [1024, 4096]),
    # The MRA paper's efficiency setting (one layer, 12 heads x 64, fp32, forward+backward).
    "paper": (Setting(heads=12, head_dim=64), [1024, 2048, 4096, 8192]),
}


def kernel_backends(name: str, device: str) -> list[str]:
    """The kernel backends an attention can run on `device` ([] for attentions with none)."""
    family = attention_class(name).kernel_family
    return kernels.available_backends(family, device) if family else []


def measure(name: str, seq: int, repeats: int, device: str, setting: Setting,
            backend: str | None) -> dict:
    """Time and peak memory of forward+backward for one attention at one length."""
    torch.manual_seed(0)
    options = {"backend": backend} if backend else {}
    attn = build_attention(name, num_heads=setting.heads, head_dim=setting.head_dim,
                           max_seq_len=seq, **options).to(device)
    q, k, v = (x.to(device).requires_grad_(True)
               for x in structured_qkv(setting.batch, setting.heads, seq, setting.head_dim))
    if attn.needs_shared_qk:
        k = q
    mask = torch.ones(setting.batch, seq, dtype=torch.bool, device=device)
    grad = torch.randn(setting.batch, setting.heads, seq, setting.head_dim, device=device)

    def step():
        attn(q, k, v, mask).backward(grad)
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: libraries, thread pools, kernel builds and caches that a first call sets up
    with PeakMemory(torch.device(device)) as memory:  # not timed: counting slows CPU ops
        step()
    peak = memory.peak_mb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    return {"attention": name, "backend": getattr(attn, "backend_in_use", "-"), "seq_len": seq,
            "fwd_bwd_ms": statistics.median(times), "peak_memory_mb": peak, "device": device}


@torch.no_grad()
def approximation_error(name: str, seq: int, setting: Setting) -> float:
    torch.manual_seed(0)
    heads, head_dim = setting.heads, setting.head_dim
    q, k, v = structured_qkv(2, heads, seq, head_dim, seed=1)
    mask = torch.ones(2, seq, dtype=torch.bool)
    mask[1, seq * 3 // 4:] = False  # one padded example: errors count real rows only
    exact = build_attention("softmax_naive", num_heads=heads, head_dim=head_dim, max_seq_len=seq)
    attn = build_attention(name, num_heads=heads, head_dim=head_dim, max_seq_len=seq).eval()
    if attn.needs_shared_qk:
        k = q
    return relative_error(attn(q, k, v, mask), exact(q, k, v, mask), mask)


def roofline(seq: int, device: str, setting: Setting, repeats: int) -> list[dict]:
    """GFLOP/s of the block-sparse kernel (forward, backward) at BLOCK_PER_ROW pairs per block
    row, for every backend on the device, and of a dense fp32 matmul, in one process.

    Work per pair of b x b blocks and head_dim d: forward 2 matmuls (S = Q K^T, P V), backward
    5 (S, dP = dO V^T, dQ, dK, dV), each 2 b^2 d flops; exp and bookkeeping are not counted.
    """
    from kernels.block_sparse import csr_from_pairs

    block, heads, d = 32, setting.batch * setting.heads, setting.head_dim
    nb = seq // block
    pairs = min(BLOCK_PER_ROW * nb, nb * nb)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, seq, d, generator=gen).to(device) for _ in range(3))
    key_real = torch.ones(1, seq, dtype=torch.bool, device=device)
    flat = torch.stack([torch.randperm(nb * nb, generator=gen)[:pairs] for _ in range(heads)])
    flat = flat[None].to(device)
    csr = csr_from_pairs(flat // nb, flat % nb, torch.ones_like(flat, dtype=torch.bool), nb)
    grad = torch.randn(1, heads, seq, d, generator=gen).to(device)
    size = 2048
    a, b = (torch.randn(size, size, generator=gen).to(device) for _ in range(2))

    def timed(fn) -> float:
        """Best of `repeats` after a warm-up, in seconds: the rate the hardware allows."""
        fn()
        best = float("inf")
        for _ in range(max(repeats, 3)):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    dense = 2 * size**3 / timed(lambda: a @ b) / 1e9
    rows = [{"kernel": "torch.matmul", "backend": "-", "seq_len": seq, "pass": "dense",
             "ms": "", "gflops": dense, "fraction_of_dense": 1.0}]
    unit = 2 * block * block * d * pairs * heads
    for backend in kernels.available_backends("block_sparse", device):
        _, impl = kernels.resolve("block_sparse", backend, device)
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]

        def forward(impl=impl, leaves=leaves):
            return impl.attention(*leaves, key_real, *csr, block_size=block, scale=d ** -0.5)

        def backward(forward=forward, leaves=leaves):
            out, _ = forward()
            torch.autograd.grad(out, leaves, grad)

        fwd = timed(lambda forward=forward: [t.detach() for t in forward()])
        fwd_bwd = timed(backward)
        for which, flops, seconds in (("forward", 2 * unit, fwd),
                                      ("forward+backward", 7 * unit, fwd_bwd)):
            rate = flops / seconds / 1e9
            rows.append({"kernel": "block_sparse", "backend": backend, "seq_len": seq,
                         "pass": which, "ms": 1000 * seconds, "gflops": rate,
                         "fraction_of_dense": rate / dense})
    return rows


def run_worker(args: list[str]) -> dict | list:
    """Run this module with `--worker ...` in a fresh interpreter and return its JSON line."""
    cmd = [sys.executable, "-m", "lra.bench", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_ratios(rows: list[dict]) -> None:
    """time_vs_* and memory_vs_* of every row against the fused exact kernel (softmax) and the
    explicit n x n one (softmax_naive, the "Transformer" of the papers' efficiency tables) at
    the same length."""
    for ref_name, suffix in (("softmax", "softmax"), ("softmax_naive", "naive")):
        base = {r["seq_len"]: r for r in rows if r["attention"] == ref_name and "fwd_bwd_ms" in r}
        for row in rows:
            ref = base.get(row["seq_len"])
            if ref and "fwd_bwd_ms" in row:
                row[f"time_vs_{suffix}"] = row["fwd_bwd_ms"] / ref["fwd_bwd_ms"]
                row[f"memory_vs_{suffix}"] = (row["peak_memory_mb"]
                                              / max(ref["peak_memory_mb"], 1e-9))


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


def series_name(row: dict) -> str:
    backend = row.get("backend", "-")
    return row["attention"] if backend in ("-", "", None) else f"{row['attention']} ({backend})"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = sorted({series_name(r) for r in rows})
    colours = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        pts = sorted((r["seq_len"], r) for r in rows if series_name(r) == name)
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
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True)
    return proc.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lra.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default",
                        help="head shape and lengths: default = batch 1, 2 heads x 32 at 1,024 "
                             "and 4,096; paper = 12 heads x 64 at 1,024 to 8,192 (default: "
                             "%(default)s)")
    parser.add_argument("--attentions", nargs="+", default=None,
                        help="names to measure (default: every registered attention)")
    parser.add_argument("--lengths", nargs="+", type=int, default=None,
                        help="sequence lengths (default: the profile's)")
    parser.add_argument("--backends", choices=["auto", "all"], default="all",
                        help="kernel-backed attentions: one row per backend that loads "
                             "(all) or only the one auto picks (default: %(default)s)")
    parser.add_argument("--error-length", type=int, default=1024,
                        help="length of the approximation-error check (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes after the warm-up; the median is reported "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "local",
                        help="output folder (default: results/bench/local, ignored by git)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setting, lengths = PROFILES[args.profile]
    lengths = args.lengths or lengths
    if args.worker:
        kind, *rest = args.worker
        if kind == "roofline":
            result = roofline(int(rest[0]), args.device, setting, args.repeats)
        else:
            name, seq, backend = rest
            result = measure(name, int(seq), args.repeats, args.device, setting,
                             None if backend == "-" else backend)
        print(json.dumps(result))
        return 0

    names = args.attentions or list_attentions()
    unknown = sorted(set(names) - set(list_attentions()))
    if unknown:
        parser.error(f"unknown attention(s) {unknown}; valid: {', '.join(list_attentions())}")
    common = ["--profile", args.profile, "--repeats", str(args.repeats), "--device", args.device]
    rows = []
    for name in names:
        backends = kernel_backends(name, args.device) if args.backends == "all" else []
        for backend in backends or ["-"]:
            for seq in lengths:
                row = {"attention": name, "backend": backend, "seq_len": seq,
                       **run_worker(["--worker", "time", name, str(seq), backend, *common])}
                first = backend == (backends or ["-"])[0]
                if "error" not in row and seq == args.error_length and first:
                    row["rel_error"] = approximation_error(name, seq, setting)
                rows.append(row)
                print(f"{series_name(row):28s} n={seq:<6d} "
                      + (f"error: {row['error']}" if "error" in row else
                         f"{row['fwd_bwd_ms']:10.1f} ms {row['peak_memory_mb']:9.1f} MB"),
                      flush=True)
    if args.error_length not in lengths:
        for name in names:
            rows.append({"attention": name, "seq_len": args.error_length,
                         "rel_error": approximation_error(name, args.error_length, setting)})
    add_ratios(rows)
    for row in rows:
        row["approximates_softmax"] = attention_class(row["attention"]).approximates_softmax
    roof = []
    if any(attention_class(n).kernel_family == "block_sparse" for n in names):
        for seq in lengths:
            result = run_worker(["--worker", "roofline", str(seq), *common])
            roof += result if isinstance(result, list) else [{"seq_len": seq, **result}]
    columns = ["attention", "backend", "seq_len", "fwd_bwd_ms", "time_vs_softmax",
               "time_vs_naive", "peak_memory_mb", "memory_vs_softmax", "memory_vs_naive",
               "rel_error", "approximates_softmax", "device", "error"]
    roof_columns = ["kernel", "backend", "seq_len", "pass", "ms", "gflops", "fraction_of_dense",
                    "error"]
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m lra.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    shape = (f"one layer, batch {setting.batch}, {setting.heads} heads x {setting.head_dim}, "
             f"fp32, {args.device}")
    atomic_write_text(args.out / "bench.csv", to_csv(rows, columns))
    atomic_write_text(args.out / "roofline.csv", to_csv(roof, roof_columns))
    roof_md = ("\n## Roofline of the block-sparse kernel\n\nGFLOP/s of the selected-block "
               f"work (block_per_row {BLOCK_PER_ROW}, b = 32; forward 2 and backward 5 "
               "b x b x d matmuls per pair, exp not counted), best of the repeats, beside a "
               "dense 2048 x 2048 fp32 torch.matmul measured in the same process.\n\n"
               + to_markdown(roof, roof_columns)) if roof else ""
    atomic_write_text(args.out / "bench.md", (
        f"# Attention benchmark\n\nCommand: `{command.strip()}` at commit {git_commit()}\n\n"
        f"{shape[0].upper() + shape[1:]}; forward+backward median of {args.repeats} after a "
        "warm-up; memory = peak growth of live tensor bytes (counted at the dispatcher on CPU, "
        "allocated on CUDA); rel_error = "
        "||out - exact|| / ||exact|| on locality-structured inputs (for methods that do not "
        "approximate softmax it measures how far their own kernel is from it). backend: the "
        "kernel backend of kernel-backed attentions (- for plain PyTorch ones).\n\n"
        + to_markdown(rows, columns) + roof_md + published_section(rows)))
    plot([r for r in rows if "fwd_bwd_ms" in r], args.out / "time_memory_vs_length.png", shape)
    print(f"written: {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(call(main))
