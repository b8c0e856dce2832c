"""`make demo`: train on the offline mini suite, then aggregate and print the results table.

The sweep itself is Hydra's (`python -m lra.train -m +experiment=demo`); this only runs it and
collects the run summaries into results/demo/results.{csv,md}.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .results import aggregate

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str], results: Path = ROOT / "results") -> int:
    """Run the demo sweep (extra Hydra overrides in argv); runs and tables go under `results`."""
    cmd = [sys.executable, "-m", "lra.train", "-m", "+experiment=demo",
           f"runs_dir={results / 'runs'}", *argv]
    print("$", " ".join(cmd[1:]), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        return code
    out = results / "demo"
    aggregate(results / "runs" / "mini" / "demo", out,
              title="lra-zoo demo (offline mini suite: stand-ins, not the LRA benchmark)")
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.csv'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
