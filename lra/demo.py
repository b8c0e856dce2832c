"""`make demo`: the main comparison in miniature, on CPU, with no data and no network.

Trains softmax, MRA-2 and Longformer on the mini ListOps stand-in (the sweep of
`conf/experiment/demo.yaml`, run by `python -m lra.train -m +experiment=demo`), then aggregates
the run summaries as `make lra-all` does (`lra.results.aggregate`): the results table and the
accuracy vs memory and vs speed plots, printed and written to results/demo/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .grid import ROOT, sweep
from .results import PRIOR_Z, aggregate, z_vs_majority

TITLE = "lra-zoo demo: mini ListOps"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lra.demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other argument is passed to lra.train as an override, e.g. "
               "trainer.max_steps=100 for a shorter demo.")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "results" / "runs",
                    help="lra.train's runs_dir; the demo's runs are <runs-dir>/mini/demo/ "
                         "(default %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "demo",
                    help="where the table and plots are written (default %(default)s)")
    return ap


def verdict(run: dict[str, Any]) -> str:
    """Whether a run's test accuracy is distinguishable from always predicting the majority
    class (lra.results.z_vs_majority: binomial standard errors of that baseline on the run's
    test examples). A short demo run either leaves the prior or stays at it; 0.16 against 0.148
    on 256 examples is the latter, not a small gain."""
    acc, majority = run["test_accuracy"], run["majority_accuracy"]
    head = f"{run['attention']}: test accuracy {acc:.3f}, "
    z = z_vs_majority(run)
    if z is None:  # a summary written before the count was recorded
        return head + f"{'above' if acc > majority else 'NOT above'} the majority class " \
                      f"({majority:.3f})"
    n = run["test_examples"]
    if z >= PRIOR_Z:
        return head + f"{z:.1f} standard errors above the majority class ({majority:.3f}, " \
                      f"{n} test examples)"
    if z > -PRIOR_Z:
        return head + f"within {PRIOR_Z:g} standard errors of the majority class " \
                      f"({majority:.3f}, z {z:+.1f} on {n} test examples): not yet learning; " \
                      "more steps or another seed"
    return head + f"{-z:.1f} standard errors BELOW the majority class ({majority:.3f}, {n} test " \
                  "examples): worse than always giving that answer"


def main(argv: list[str]) -> int:
    args, overrides = parser().parse_known_args(argv)
    code = sweep(["+experiment=demo", f"runs_dir={args.runs_dir}", *overrides])
    if code != 0:
        return code
    runs = aggregate(args.runs_dir / "mini" / "demo", args.out, title=TITLE)
    print((args.out / "results.md").read_text())
    for run in runs:
        print(verdict(run))
    print(f"written to {args.out}: results.csv, runs.csv, results.md, accuracy_vs_memory.png, "
          "accuracy_vs_speed.png, accuracy_per_task.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
