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

from .grid import ROOT, sweep
from .results import aggregate

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


def main(argv: list[str]) -> int:
    args, overrides = parser().parse_known_args(argv)
    code = sweep(["+experiment=demo", f"runs_dir={args.runs_dir}", *overrides])
    if code != 0:
        return code
    rows = aggregate(args.runs_dir / "mini" / "demo", args.out, title=TITLE)
    print((args.out / "results.md").read_text())
    for row in rows:
        verdict = "above" if row["test_accuracy"] > row["majority_accuracy"] else "NOT above"
        print(f"{row['attention']}: test accuracy {row['test_accuracy']:.3f}, {verdict} the "
              f"majority class ({row['majority_accuracy']:.3f})")
    print(f"written to {args.out}: results.csv, runs.csv, results.md, accuracy_vs_memory.png, "
          "accuracy_vs_speed.png, accuracy_per_task.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
