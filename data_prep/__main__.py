"""`python -m data_prep <task> --source <source> [options]`: prepare one LRA task into the cache.

    python -m data_prep mini                         # the offline mini suite
    python -m data_prep <task> --help                # a task's sources and options
    python -m data_prep download [<what>]            # resumable, optional sha256

Every failure is one line naming the file (and row) at fault and the command that fixes it: a
DataError, or an OSError of the file system (a folder that cannot be written, a full disk); these
exit with 2, a bug with 1 (lra.cli; HYDRA_FULL_ERROR=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lra.cli import report

from . import mini, release, tasks


def parser() -> argparse.ArgumentParser:
    usage = "\n".join(f"    python -m data_prep {t.name:<10} --source {'|'.join(t.sources)}"
                      for t in tasks.tasks())
    ap = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                 epilog="The tasks and their sources:\n" + usage,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="task", required=True, metavar="<task>")
    for task in tasks.tasks():
        p = sub.add_parser(task.name, help=task.help, description=task.help)
        p.add_argument("--source", required=True, choices=list(task.sources),
                       help="where the data comes from (required): "
                            + "; ".join(f"{name}: {s.help}" for name, s in task.sources.items()))
        p.add_argument("--out", type=Path, default=None,
                       help=f"cache folder (default {tasks.CACHE_ROOT / task.name}"
                            + (f", or {task.out_help}" if task.out_help else "") + ")")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        for add_flags in [task.flags, *(src.flags for src in task.sources.values())]:
            if add_flags is not None:
                add_flags(p)
    p = sub.add_parser("mini", help="the offline mini suite (stand-ins, not the benchmark)",
                       description=mini.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/mini"),
                   help="folder of the task caches, one per task (default %(default)s, where "
                        "lra.train's data=mini reads them)")
    p.add_argument("--tasks", nargs="+", choices=tasks.mini_names(), default=None,
                   help=f"only these tasks (default: all {len(tasks.mini_names())})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    downloads = tasks.downloads()
    p = sub.add_parser("download", help="download the release or a raw archive (resumable)",
                       description="Download to <dest>.part, resuming with HTTP Range requests, "
                                   "and rename when complete (and matching --sha256).")
    p.add_argument("what", nargs="?", default="lra_release", choices=list(downloads),
                   help="the LRA release, or a raw archive for --source raw (default "
                        "%(default)s)")
    p.add_argument("--url", default=None,
                   help="download from here (default: the official URL of <what>)")
    p.add_argument("--dest", type=Path, default=None, help="where to save it (default: "
                   + ", ".join(f"{k}: {dest}" for k, (_, dest) in downloads.items()) + ")")
    p.add_argument("--sha256", default=None, help="expected sha256; a mismatch is rejected")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def run(args) -> Path:
    """Do what the parsed command line asks; returns the folder written."""
    if args.task == "mini":
        paths = mini.build(args.out, args.tasks, progress=not args.quiet)
        return paths[0].parent
    if args.task == "download":
        url, dest = tasks.downloads()[args.what]
        return release.download(args.url or url, args.dest or dest, sha256=args.sha256,
                                progress=not args.quiet)
    task = tasks.get(args.task)
    return task.sources[args.source].prepare(args, args.out or task.default_out(args))


def _summary(folder: Path) -> str:
    manifest = json.loads((folder / "manifest.json").read_text())
    splits = ", ".join(f"{name} {s['size']} {s['label_counts']}"
                       for name, s in manifest["splits"].items())
    return f"wrote {folder} ({manifest['task']}, max_len {manifest['max_len']}): {splits}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        folder = run(args)
    except KeyboardInterrupt:
        print("interrupted; " + ("run the same command again to resume the download"
                                 if args.task == "download" else "nothing half-written was kept"),
              file=sys.stderr)
        return 130
    except Exception as err:
        # One line and exit 2 for a data or file-system fault, exit 1 for a bug (lra.cli).
        return report(err)
    if args.task == "mini":
        for task in args.tasks or tasks.mini_names():
            print(_summary(folder / task))
    elif args.task != "download":
        print(_summary(folder))
    else:
        print(f"downloaded {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
