"""The task registry: what `python -m data_prep`, the mini suite and the benchmark grid know of
every task.

A task is one module of `data_prep` that calls `register(Task(...))` when imported: its sources
(each with the flags it takes and how it prepares the cache from them), its mini stand-in and the
files `python -m data_prep download` can fetch for it. With a `conf/task/<name>.yaml` for the
trainer, that is all a new task needs: the command line, `mini.build`, the error messages that say
how to prepare a task, `make lra-all`'s grid and the results tables read this registry.

Every module of the package is imported the first time the registry is read, so a task module
registers itself by being there. Tasks are listed in LRA's order (`order`), then in the order
they were registered.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import release
from .cache import DataError

# prepare(parsed command line, cache folder) -> the folder written.
Prepare = Callable[[argparse.Namespace, Path], Path]
# build_mini(cache folder, progress) -> the folder written.
MiniBuilder = Callable[[Path, bool], Path]
AddFlags = Callable[[argparse.ArgumentParser], None]

LRA_GENERATOR = "our re-implementation of LRA's generator (no download)"
CACHE_ROOT = Path("data/lra")


@dataclass(frozen=True)
class Source:
    """One `--source` of a task: its help, the flags it adds and how it prepares the cache."""

    help: str
    prepare: Prepare
    flags: AddFlags | None = None


@dataclass(frozen=True)
class Task:
    name: str  # the command (`python -m data_prep <name>`) and conf/task/<name>.yaml
    help: str  # one line: what the task is and where it comes from
    sources: Mapping[str, Source]
    mini: MiniBuilder | None = None  # the offline stand-in, if the task has one
    flags: AddFlags | None = None  # flags of every source (e.g. --max-len)
    # The cache folder when --out is not given, if not data/lra/<name>, and what its help says.
    out: Callable[[argparse.Namespace], Path] | None = None
    out_help: str = ""
    downloads: Mapping[str, tuple[str, Path]] = field(default_factory=dict)  # what: (url, dest)
    in_grid: bool = True  # one of `make lra-all`'s default tasks
    order: int = 100  # the task's place in LRA's tables (ListOps 1 ... Path-X 6); new ones after

    def default_out(self, args: argparse.Namespace) -> Path:
        return self.out(args) if self.out is not None else CACHE_ROOT / self.name


_TASKS: dict[str, Task] = {}
_discovered = False


def register(task: Task) -> Task:
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    _TASKS[task.name] = task
    return task


def unregister(name: str) -> None:
    del _TASKS[name]


def _discover() -> None:
    """Import every module of data_prep once (but the command line), so each task registers."""
    global _discovered
    if not _discovered:
        _discovered = True
        for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if module.name != "__main__":
                importlib.import_module(f"{__package__}.{module.name}")


def tasks() -> list[Task]:
    """Every registered task, in LRA's order and then as registered."""
    _discover()
    return sorted(_TASKS.values(), key=lambda t: t.order)  # stable: registration order in ties


def names() -> list[str]:
    return [t.name for t in tasks()]


def mini_names() -> list[str]:
    """The tasks of the mini suite."""
    return [t.name for t in tasks() if t.mini is not None]


def grid_names() -> list[str]:
    """`make lra-all`'s default tasks."""
    return [t.name for t in tasks() if t.in_grid]


def get(name: str) -> Task:
    _discover()
    if name not in _TASKS:
        raise DataError(f"no task {name!r}; the tasks are {', '.join(names())}")
    return _TASKS[name]


def downloads() -> dict[str, tuple[str, Path]]:
    """Everything `python -m data_prep download <what>` can fetch: the release, then each task's
    own files."""
    return {"lra_release": (release.LRA_URL, release.DEFAULT_ARCHIVE),
            **{what: where for t in tasks() for what, where in t.downloads.items()}}


# ---- building blocks for the sources and flags of a task --------------------------------------

def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low, else a one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {low}")
        return value
    return parse


def seed_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=at_least(0), default=0,
                   help="generator seed (default %(default)s)")


def _release_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--release", type=Path, default=None,
                   help="lra_release.gz or an extracted folder (default: "
                        f"{release.DEFAULT_ARCHIVE}, then {release.DEFAULT_FOLDER}/)")
    p.add_argument("--extract-dir", type=Path, default=release.DEFAULT_FOLDER,
                   help="where folders taken from the archive are extracted (reused next time; "
                        "default %(default)s)")


def release_source(folder: Callable[[argparse.Namespace], str],
                   build: Callable[[argparse.Namespace, Path, Path], Path]) -> Source:
    """A task read from the LRA release: `folder(args)` is its folder there (e.g. listops-1000),
    `build(args, out, found)` writes the cache from the folder found (extracted if need be)."""
    def prepare(args: argparse.Namespace, out: Path) -> Path:
        return build(args, out, release.find(args.release, folder(args), args.extract_dir))
    return Source("the LRA release (lra_release.gz or its folder, see --release)", prepare,
                  _release_flags)


def raw_source(archive: Path, folder: Path,
               build: Callable[[argparse.Namespace, Path, Path], Path]) -> Source:
    """A task read from its original archive (or the folder it extracts to): `build(args, out,
    path)` writes the cache from --raw, else the default archive, else the default folder."""
    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--raw", type=Path, default=None,
                       help=f"the original {archive.name} or its extracted folder, for --source "
                            f"raw (default {archive}, else {folder}/)")

    def prepare(args: argparse.Namespace, out: Path) -> Path:
        path = args.raw
        if path is None:
            path = folder if folder.is_dir() and not archive.exists() else archive
        return build(args, out, path)
    return Source("the original archive or its folder (see --raw)", prepare, flags)


def tfds_source(build: Callable[[argparse.Namespace, Path, str | None], Path]) -> Source:
    """A task read through tensorflow-datasets: `build(args, out, data_dir)`."""
    def flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tfds-dir", default=None,
                       help="tensorflow-datasets data_dir, for --source tfds")
    return Source("tensorflow-datasets (pip install tensorflow-datasets; see --tfds-dir)",
                  lambda args, out: build(args, out, args.tfds_dir), flags)
