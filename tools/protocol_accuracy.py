r"""The accuracy effect of DEVIATIONS.md's protocol options, on runs that learn:

    python tools/protocol_accuracy.py [--attention softmax] [--seeds 0,1,2] [--threads 1]
                                      [lra.train overrides]
    python tools/protocol_accuracy.py --seeds 0,1,2,3,4 --threads 1 \
        hydra/launcher=joblib hydra.launcher.n_jobs=2      # two runs at a time
    python tools/protocol_accuracy.py --attention mra2 --seeds 0,1,2,3,4 --threads 1

Trains the small model with one attention (softmax: the training-loop options; mra2: its
exact-block budget) on the mini ListOps stand-in at the demo's budget
(conf/experiment/demo.yaml: 500 steps, peak lr 3e-3, the budget at which a 2-core run leaves the
class prior behind), once per (variant, seed): the published default, then each option's
alternative alone. Each variant is one Hydra sweep over the seeds (`lra.grid.sweep`, tag
`protocol-accuracy-<variant>`, the runs of every attention side by side), so a rerun skips the
finished runs and resumes a killed one.
Writes (--out, and a .png of the same name), per variant, the test and best-dev accuracy over
the seeds and the paired difference from the default (the same seed: the same initialisation
and batch order). The runs are the mini stand-in at a short budget, not the LRA protocol: the
table says whether an option moves a model that learns, not what it does to a published LRA
figure.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.atomic import atomic_write_text  # noqa: E402
from lra.grid import sweep  # noqa: E402
from lra.results import find_summaries  # noqa: E402

# attention -> (what its variants are, {variant: the overrides that switch the published default
# to the option}) (DEVIATIONS.md). softmax: the "Training loop" rows, and its dropout row of
# "Attentions" the other way round: the mini suite runs softmax without it
# (conf/attention_data/softmax_mini.yaml), so that variant switches the published 0.1 on. mra2:
# its budget, which at the published max_seq_len makes every mini ListOps example (at most 511
# tokens, 16 blocks; 8 x 2048 / 32 = 512 pairs >= 16^2) fully exact.
VARIANTS = {
    "softmax": ("Training-loop options", {
        "default": [],
        "pooling=mean": ["model.pooling=mean"],
        "schedule=linear": ["trainer.schedule=linear"],
        "grad_clip=1.0": ["trainer.grad_clip=1.0"],
        "head_activation=gelu": ["model.head_activation=gelu"],
        "attention dropout 0.1": ["attention.options.dropout=0.1"],
    }),
    "mra2": ("MRA's exact-block budget", {
        "default": [],
        "budget_from=real_length": ["attention.options.budget_from=real_length"],
    }),
}


def tag(variant: str) -> str:
    return "protocol-accuracy-" + re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def table(runs: dict[str, dict[int, dict]], overrides: dict[str, list[str]]) -> str:
    """Markdown: one row per variant over its seeds, accuracies in points; the paired differences
    over the seeds the default also ran."""
    base = runs["default"]
    lines = ["| variant | overrides | seeds | test acc. per seed | test mean ± std | best dev "
             "mean ± std | test − default, paired: mean ± s.e. |",
             "|---|---|---|---|---|---|---|"]
    for variant, by_seed in runs.items():
        seeds = sorted(by_seed)
        test = [100 * by_seed[s]["test_accuracy"] for s in seeds]
        tm, ts = mean_std(test)
        dm, ds = mean_std([100 * by_seed[s]["best_dev_accuracy"] for s in seeds])
        paired = ""
        common = [s for s in seeds if s in base]
        if variant != "default" and common:
            diffs = [100 * (by_seed[s]["test_accuracy"] - base[s]["test_accuracy"])
                     for s in common]
            m, sd = mean_std(diffs)
            paired = f"{m:+.1f} ± {sd / math.sqrt(len(diffs)):.1f} ({len(diffs)} seeds)"
        lines.append(f"| {variant} | `{' '.join(overrides[variant]) or '(none)'}` | "
                     f"{','.join(map(str, seeds))} | {' '.join(f'{t:.1f}' for t in test)} | "
                     f"{tm:.1f} ± {ts:.1f} | {dm:.1f} ± {ds:.1f} | {paired} |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[int, dict]], majority: float, title: str, path: Path) -> None:
    """One row per variant: each seed's test accuracy as a dot, the mean as a bar, the majority
    class as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(runs) + 1.5))
    for row, by_seed in enumerate(runs.values()):
        acc = [100 * r["test_accuracy"] for r in by_seed.values()]
        ax.scatter(acc, [row] * len(acc), color="tab:blue", zorder=3)
        ax.plot([sum(acc) / len(acc)] * 2, [row - 0.3, row + 0.3], color="black")
    ax.axvline(majority, color="grey", linestyle="--")
    ax.text(majority, 1.01, " majority class", color="grey", va="bottom", fontsize=8,
            transform=ax.get_xaxis_transform())  # x in data, y just above the axes
    ax.set_yticks(range(len(runs)), list(runs))
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%), one dot per seed, bar: mean")
    ax.set_title(title, fontsize=10, pad=14)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python tools/protocol_accuracy.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attention", choices=list(VARIANTS), default="softmax",
                    help="whose options (default %(default)s)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated (default %(default)s)")
    ap.add_argument("--threads", type=int, default=None,
                    help="trainer.num_threads of every run (default: torch's)")
    ap.add_argument("--variants", nargs="+", metavar="VARIANT",
                    help="the variants to run and show (default: all of the attention's; "
                         "default is always run): " + "; ".join(
                             f"{a}: {', '.join(v)}" for a, (_, v) in VARIANTS.items()))
    ap.add_argument("--no-run", action="store_true",
                    help="run nothing: tabulate the finished runs of the seeds asked")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "results" / "runs")
    ap.add_argument("--out", type=Path, help="default: results/deviations/protocol_accuracy.md "
                    "for softmax, protocol_accuracy_<attention>.md for another")
    args, extra = ap.parse_known_args(argv)
    title, overrides = VARIANTS[args.attention]
    unknown = sorted(set(args.variants or []) - set(overrides))
    if unknown:
        ap.error(f"--variants {' '.join(unknown)}: not a variant of {args.attention} (its "
                 f"variants: {', '.join(overrides)})")
    out = args.out or ROOT / "results" / "deviations" / (
        "protocol_accuracy.md" if args.attention == "softmax"
        else f"protocol_accuracy_{args.attention}.md")
    seeds = [int(s) for s in args.seeds.split(",")]
    threads = [f"trainer.num_threads={args.threads}"] if args.threads else []
    runs = {}
    for variant in ["default", *(v for v in args.variants or overrides if v != "default")]:
        if not args.no_run:
            code = sweep(["+experiment=demo", "task=listops", f"attention={args.attention}",
                          f"seed={args.seeds}", f"tag={tag(variant)}",
                          f"runs_dir={args.runs_dir}", *threads, *overrides[variant], *extra])
            if code != 0:
                return code
        found = find_summaries(args.runs_dir / "mini" / tag(variant))
        runs[variant] = {r["seed"]: r for r in found
                         if r["seed"] in seeds and r["attention"] == args.attention}
        if not runs[variant]:
            raise SystemExit(f"{variant}: no finished {args.attention} run of seeds "
                             f"{args.seeds} under {args.runs_dir / 'mini' / tag(variant)}")
    majority = 100 * next(iter(runs["default"].values()))["majority_accuracy"]
    step_ms = sorted(r["step_time_ms"] for by_seed in runs.values() for r in by_seed.values())
    dropout = (" The default has no attention dropout (the mini suite's); the protocol's 0.1 is "
               "the last variant." if args.attention == "softmax" else "")
    text = (f"# {title}: test accuracy on mini ListOps (stand-in, not LRA)\n\n"
            f"`python tools/protocol_accuracy.py {' '.join(argv)}`: {args.attention}, the small "
            f"model, the demo's 500 steps at peak lr 3e-3, one run per (variant, seed); test "
            f"split 256 examples (one run's standard error about 2.8 points), majority class "
            f"{majority:.1f}.{dropout} Step time median "
            f"{step_ms[len(step_ms) // 2]:.0f} ms (range {step_ms[0]:.0f}-{step_ms[-1]:.0f})."
            f"\n\n{table(runs, overrides)}\n")
    atomic_write_text(out, text)
    plot(runs, majority, f"{title}: mini ListOps (stand-in), {args.attention}, 500 steps",
         out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
