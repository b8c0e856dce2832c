"""The offline mini suite: small, real, learnable stand-ins for the LRA tasks.

Built only from what a fresh machine has, in well under two minutes on 2 cores, and used by
`make demo` and the tests. Every manifest says `mini: true` and that it is a stand-in, and every
result row carries it: these are not the LRA benchmark. Each task module registers its own
stand-in (`tasks.Task.mini`, described there); this module builds them and holds what they share:
the split sizes, and the source text of the byte-level stand-ins.

Text and Retrieval draw from the source code of the Python standard library, which every Python
installation ships. Every file is cut into regions, the first 70% of its bytes for train, the next
15% for val, the last 15% for test, and windows never cross a region, so no text is shared between
splits. The texts depend on the installed Python, whose version the manifest records.
"""

from __future__ import annotations

import platform
import sysconfig
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import tasks
from .cache import DataError

STANDIN = "mini stand-in, not the LRA benchmark"
SIZES = {"train": 2000, "val": 256, "test": 256}
WINDOW = 1024
TEXT_CLASSES = {"running code": ("asyncio", "importlib", "multiprocessing", "unittest"),
                "data formats and protocols": ("email", "http", "urllib", "xml")}
PACKAGES = tuple(p for group in TEXT_CLASSES.values() for p in group)
REGIONS = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}
SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__"}  # packaged separately by some distros


# ---- text and retrieval from the standard library --------------------------------------------

def stdlib_modules(packages: Iterable[str] = PACKAGES) -> dict[str, list[tuple[str, bytes]]]:
    """{package: [(module path, source bytes)]}, sorted, tests left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = {}
    for package in packages:
        folder = root / package
        files = sorted(p for p in folder.rglob("*.py")
                       if not SKIP_DIRS & set(p.relative_to(folder).parts[:-1]))
        if not files:
            raise DataError(f"the standard library package {folder} is missing or empty; the "
                            "mini text tasks need a complete Python installation")
        out[package] = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in files]
    return out


def region(data: bytes, split: str) -> bytes:
    lo, hi = REGIONS[split]
    return data[int(lo * len(data)):int(hi * len(data))]


def sample_windows(rng: np.random.Generator, texts: list[bytes], count: int) -> list[bytes]:
    """`count` windows drawn uniformly over every window position in `texts`."""
    starts = np.array([max(len(t) - WINDOW + 1, 0) for t in texts])
    if starts.sum() == 0:
        raise DataError(f"no text of {WINDOW} bytes to draw windows from")
    which = rng.choice(len(texts), size=count, p=starts / starts.sum())
    return [texts[i][o:o + WINDOW] for i, o in
            zip(which, rng.integers(0, starts[which]), strict=True)]


def stdlib_params() -> dict:
    """What the manifest of a standard-library stand-in records about its source."""
    return {"window": WINDOW, "python": platform.python_version(),
            "regions": "first 70% of each file train, next 15% val, last 15% test"}


def build(root: str | Path, names: Iterable[str] | None = None, progress: bool = True
          ) -> list[Path]:
    """Build the named mini tasks (all by default) under `root/<task>/`."""
    root = Path(root)
    known = tasks.mini_names()
    names = known if names is None else list(names)
    unknown = [t for t in names if t not in known]
    if unknown:
        raise DataError(f"no mini task {', '.join(map(repr, unknown))}; the mini tasks are "
                        f"{', '.join(known)}")
    return [tasks.get(t).mini(root / t, progress) for t in names]
