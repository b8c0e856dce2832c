"""The offline mini suite: small, real, learnable stand-ins for the LRA tasks.

Built only from what a fresh machine has, in seconds to minutes on 2 cores, and used by `make demo`
and the tests. Every manifest says `mini: true`, and every result row carries it: these are
stand-ins, not the LRA benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from . import listops


def build_listops(out_dir: Path, progress: bool = True) -> Path:
    # Short trees (up to 511 tokens) keep CPU training in minutes; the algorithm is LRA's.
    return listops.build_generated(
        out_dir, sizes={"train": 2000, "val": 256, "test": 256}, seed=0, max_depth=10,
        max_args=10, min_length=64, max_length=512, mini=True, progress=progress,
    )


BUILDERS: dict[str, Callable[..., Path]] = {"listops": build_listops}


def build(root: str | Path, tasks: Iterable[str] | None = None, progress: bool = True
          ) -> list[Path]:
    """Build the named mini tasks (all by default) under `root/<task>/`."""
    root = Path(root)
    names = list(BUILDERS) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in BUILDERS]
    if unknown:
        raise ValueError(f"no mini task {unknown}; mini tasks: {', '.join(BUILDERS)}")
    return [BUILDERS[t](root / t, progress=progress) for t in names]
