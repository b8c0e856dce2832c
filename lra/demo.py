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


def main(argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "lra.train", "-m", "+experiment=demo", *argv]
    print("$", " ".join(cmd[1:]), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        return code
    out = ROOT / "results" / "demo"
    aggregate(ROOT / "results" / "runs" / "mini" / "demo", out,
              title="lra-zoo demo (offline mini suite: stand-ins, not the LRA benchmark)")
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.csv'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
