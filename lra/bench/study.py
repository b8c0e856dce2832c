"""The study's driver: the efficiency grid, the approximation sweeps, the files they write."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

from attention_zoo import attention_class, list_attentions
from attention_zoo.structured import structured_qkv
from data_prep.atomic import atomic_write_text

from ..results import to_csv
from . import approximation as approx
from . import efficiency, plots, report, roofline
from .peers import PEERS
from .peers import installed as installed_peers
from .profiles import BUDGETS, PROFILES, budget_options, describe

ROOT = Path(__file__).resolve().parents[2]
APPROX_COLUMNS = ["attention", "options", "inputs", "seq_len", "scale", "entropy",
                  "relative_error", "fwd_bwd_ms", "peak_memory_mb", "source", "status"]


def parser() -> argparse.ArgumentParser:
    from . import __doc__ as doc

    p = argparse.ArgumentParser(prog="python -m lra.bench", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="default",
                   help="size of the study (default: %(default)s); quick runs in the tests")
    p.add_argument("--attentions", nargs="+", default=None,
                   help="names to study (default: every registered attention)")
    p.add_argument("--parts", nargs="+", choices=["efficiency", "approximation", "roofline"],
                   default=["efficiency", "approximation", "roofline"],
                   help="what to run (default: all three)")
    p.add_argument("--lengths", nargs="+", type=int, help="efficiency lengths (profile's)")
    p.add_argument("--batches", nargs="+", type=int, help="efficiency batch sizes (profile's)")
    p.add_argument("--repeats", type=int, help="timed passes after the warm-up (profile's)")
    p.add_argument("--approx-len", type=int, help="approximation length (profile's)")
    p.add_argument("--inputs", nargs="+", choices=["structured", "real"],
                   help="approximation inputs (profile's); real needs the extra `bench`")
    p.add_argument("--budget-points", type=int, help="first N values of each knob (profile's)")
    p.add_argument("--peers", action="store_true",
                   help="also run the installed peer packages (extra `peers`) on the same inputs")
    p.add_argument("--backends", choices=["auto", "all"], default="all",
                   help="kernel-backed attentions: every backend that loads, or auto's pick")
    p.add_argument("--threads", type=int, help="torch CPU threads (profile's; default all)")
    p.add_argument("--cell-limit", type=float, default=None,
                   help="seconds one efficiency cell may take before the longer lengths of its "
                        "series are skipped (profile's: 60 default, 120 paper; 0: no limit)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default here: %(default)s, cuda when one is visible)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: results/bench/local/<profile>, ignored by git, "
                        "so a run never overwrites the tracked results; those were written with "
                        "an explicit --out, named in their README.md)")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    return p


def settings(args) -> dict:
    """The profile with the command line's overrides applied."""
    prof = PROFILES[args.profile]
    lengths = prof.gpu_lengths if args.device == "cuda" else prof.lengths
    return {"heads": prof.heads, "head_dim": prof.head_dim,
            "lengths": args.lengths or list(lengths), "batches": args.batches or list(prof.batches),
            "repeats": args.repeats or prof.repeats, "isolate": prof.isolate,
            "approx_len": args.approx_len or prof.approx_len,
            "inputs": args.inputs or list(prof.inputs), "segments": prof.segments,
            "budget_points": args.budget_points or prof.budget_points, "scales": prof.scales,
            "threads": args.threads or prof.threads,
            "cell_limit_s": (prof.cell_limit_s if args.cell_limit is None
                             else args.cell_limit or None)}  # --cell-limit 0: none


def efficiency_rows(names, cfg, args, log) -> list[dict]:
    rows = []
    common = ["--profile", args.profile, "--device", args.device, "--repeats",
              str(cfg["repeats"]), "--lengths", *map(str, cfg["lengths"]),
              "--batches", *map(str, cfg["batches"])]
    if cfg["threads"]:
        common += ["--threads", str(cfg["threads"])]
    common += ["--cell-limit", str(cfg["cell_limit_s"] or 0)]
    for name in names:
        for backend in efficiency.backends(name, args.device, args.backends):
            grid = (name, backend, cfg["lengths"], cfg["batches"], cfg["heads"],
                    cfg["head_dim"], args.device, cfg["repeats"], cfg["cell_limit_s"])
            if cfg["isolate"]:
                planned = [efficiency.which_cell(name, backend, args.device, b, cfg["heads"], n,
                                                 cfg["head_dim"])
                           for b in cfg["batches"] for n in cfg["lengths"]]
                found = efficiency.series_in_worker(name, backend, common, planned)
            else:
                found = list(efficiency.series(*grid))
            for row in found:
                log(f"{name:18s} {backend:10s} b={row['batch']:<3d} n={row['seq_len']:<6d} "
                    + (f"{row['fwd_bwd_ms']:10.2f} ms {row['peak_memory_mb']:9.2f} MB"
                       if row["status"] == "ok" else row["status"]))
            rows += found
    return rows


def load_inputs(kind: str, cfg) -> tuple[torch.Tensor, ...]:
    """q, k, v (instances, heads, seq, head_dim) of one kind of approximation input."""
    if kind == "real":
        from .real_inputs import capture
        return capture(cfg["approx_len"], cfg["segments"])
    return structured_qkv(4, cfg["heads"], cfg["approx_len"], cfg["head_dim"], seed=1)


def approximation_rows(names, cfg, args, log) -> list[dict]:
    """Every attention over its budget at scale 1, and at its defaults over the logit scales,
    on each kind of input; with --peers, the peer packages at the same settings."""
    rows, costs = [], {}

    def add(inputs: approx.InputSet, name, options, scale, attend_of, source="ours"):
        row = inputs.row(name, options, scale, attend_of, source)
        rows.append(row)
        log(f"{row['inputs']:10s} {source:26s} {name:16s} {row['options']:26s} s={scale:<5g} "
            + (f"error {row['relative_error']:.4f}" if row["status"] == "ok"
               else row["status"]))

    for kind in cfg["inputs"]:
        q, k, v = (x.to(args.device) for x in load_inputs(kind, cfg))
        inputs = approx.InputSet(kind, q, k, v, cfg["repeats"], costs)
        for name in names:
            sweep = [(o, 1.0) for o in budget_options(name, cfg["budget_points"])]
            has_default = describe(name, {}) in {describe(name, o) for o, _ in sweep}
            sweep += [({}, s) for s in cfg["scales"] if s != 1.0 or not has_default]
            for options, scale in sweep:
                add(inputs, name, options, scale,
                    functools.partial(approx.build, name, options))
        rows.append(inputs.uniform_row())
        if not args.peers:
            continue
        for peer in installed_peers():
            if peer.attention not in names:
                continue
            for value in BUDGETS[peer.attention][1][:cfg["budget_points"]]:
                ours = peer.ours(value)
                add(inputs, peer.attention, ours, 1.0,
                    functools.partial(approx.build, peer.attention, ours))
                add(inputs, peer.attention, ours, 1.0, functools.partial(peer_build, peer, value),
                    f"peer:{peer.package}")
    # A setting reached twice (a peer's equal setting that is also a budget point) counts once.
    unique = {(r["attention"], r["options"], r["inputs"], r["scale"], r["source"]): r
              for r in rows}
    return list(unique.values())


def peer_build(peer, value: int, heads: int, seq: int, head_dim: int):
    """A peer's attention at one budget value, its random draws seeded as ours are."""
    torch.manual_seed(0)
    return peer.build(value, heads, head_dim)


def worker(args) -> int:
    """`--worker efficiency NAME BACKEND`: one series, one JSON line per cell."""
    cfg = settings(args)
    _, name, backend = args.worker
    for row in efficiency.series(name, backend, cfg["lengths"], cfg["batches"], cfg["heads"],
                                 cfg["head_dim"], args.device, cfg["repeats"],
                                 cfg["cell_limit_s"]):
        print(json.dumps(row), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    threads = torch.get_num_threads()
    if settings(args)["threads"]:
        torch.set_num_threads(settings(args)["threads"])
    try:
        return worker(args) if args.worker else study(args, argv)
    finally:
        torch.set_num_threads(threads)  # a caller's process (the tests) keeps its setting


def study(args, argv: list[str] | None) -> int:
    cfg = settings(args)
    names = args.attentions or list_attentions()
    unknown = sorted(set(names) - set(list_attentions()))
    if unknown:
        parser().error(f"unknown attention(s) {unknown}; valid: {', '.join(list_attentions())}")
    out = args.out or ROOT / "results" / "bench" / "local" / args.profile
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m lra.bench " + " ".join(argv if argv is not None else sys.argv[1:])

    def log(line: str) -> None:
        print(line, flush=True)

    if args.peers:  # never a silent comparison with nobody
        present = installed_peers()
        missing = [p.package for p in PEERS if p not in present]
        if len(missing) == len(PEERS):
            parser().error("--peers: no peer package is installed; pip install -e '.[peers]'")
        if missing:
            log(f"warning: --peers: not installed, so not compared: {', '.join(missing)} "
                "(pip install -e '.[peers]')")

    eff = efficiency_rows(names, cfg, args, log) if "efficiency" in args.parts else []
    app = approximation_rows(names, cfg, args, log) if "approximation" in args.parts else []
    roof = []
    if "roofline" in args.parts and any(attention_class(n).kernel_family == "block_sparse"
                                        for n in names):
        roof = roofline.roofline(max(cfg["lengths"]), args.device, cfg["heads"],
                                 cfg["head_dim"], cfg["repeats"])
    if eff:
        atomic_write_text(out / "efficiency.csv", to_csv(eff, efficiency.COLUMNS))
        shape = f"one layer, {cfg['heads']} heads x {cfg['head_dim']}, fp32, {args.device}"
        plots.versus_length(eff, "fwd_bwd_ms", "forward+backward (ms)",
                            out / "time_vs_length.png", f"time, {shape}")
        plots.versus_length(eff, "peak_memory_mb", "peak tensor memory (MB)",
                            out / "memory_vs_length.png", f"memory, {shape}")
    if app:
        atomic_write_text(out / "approximation.csv", to_csv(app, APPROX_COLUMNS))
        main_inputs = "real" if any(r["inputs"] == "real" for r in app) else "structured"
        at_one = [r for r in app if r["inputs"] == main_inputs and r["scale"] == 1.0
                  and r["source"] != "reference"]
        what = f"{main_inputs} inputs, n = {app[0]['seq_len']}"
        plots.error_versus(at_one, "fwd_bwd_ms", "forward+backward of one instance (ms)",
                           out / "error_vs_time.png", f"error vs time over each budget, {what}")
        plots.error_versus(at_one, "peak_memory_mb", "peak tensor memory of one instance (MB)",
                           out / "error_vs_memory.png",
                           f"error vs memory over each budget, {what}")
        default = {r["attention"]: describe(r["attention"], {}) for r in app}
        swept = [r for r in app if r["inputs"] == main_inputs and r["source"] == "ours"
                 and r["options"] == default[r["attention"]]]
        plots.error_versus(swept, "entropy", "mean entropy of the exact attention rows (nats)",
                           out / "error_vs_entropy.png",
                           f"error vs entropy (logits scaled), default options, {what}")
        plots.error_versus_budget([r for r in at_one if r["source"] == "ours"],
                                  out / "error_vs_budget.png",
                                  f"ours ({what}) beside the MRA paper's (RoBERTa, n = 512)")
    if roof:
        atomic_write_text(out / "roofline.csv", to_csv(roof, roofline.COLUMNS))
    atomic_write_text(out / "README.md", report.readme(command.strip(), args, cfg, eff, app,
                                                       roof))
    print(f"written: {out / 'README.md'}")
    return 0

