"""`python -m data_prep <task> --source <source> [options]`: prepare one LRA task into the cache.

    python -m data_prep mini                                   # the offline mini suite
    python -m data_prep listops    --source lra_release|generate
    python -m data_prep text       --source tfds|raw [--max-len 4000]
    python -m data_prep retrieval  --source lra_release [--max-len 4000]
    python -m data_prep image      --source tfds|raw
    python -m data_prep pathfinder --source lra_release|generate [--resolution 32]
                                   [--difficulty curv_contour_length_14]
    python -m data_prep pathx      --source lra_release|generate   # Pathfinder-128 hard, 16,384
    python -m data_prep download   [lra_release|imdb|cifar10]      # resumable, optional sha256

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

from . import image, listops, mini, pathfinder, release, retrieval, text

SOURCES = {
    "listops": ("lra_release", "generate"),
    "text": ("tfds", "raw"),
    "retrieval": ("lra_release",),
    "image": ("tfds", "raw"),
    "pathfinder": ("lra_release", "generate"),
    "pathx": ("lra_release", "generate"),
}
HELP = {
    "listops": "ListOps (listops-1000 TSVs from the release, or LRA's generator)",
    "text": "IMDb sentiment, byte-level (tensorflow-datasets or aclImdb_v1.tar.gz)",
    "retrieval": "AAN citation pairs, byte-level (tsv_data from the release)",
    "image": "grayscale CIFAR-10 (tensorflow-datasets or cifar-10-python.tar.gz)",
    "pathfinder": "Pathfinder at 32/64/128/256 pixels, any difficulty (release or generator)",
    "pathx": "Path-X: Pathfinder-128, curv_contour_length_14, 16,384 tokens",
}


SOURCE_HELP = {
    "lra_release": "the LRA release (lra_release.gz or its folder, see --release)",
    "generate": "our re-implementation of LRA's generator (no download)",
    "tfds": "tensorflow-datasets (pip install tensorflow-datasets; see --tfds-dir)",
    "raw": "the original archive or its folder (see --raw)",
}


def _at_least(low: int):
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


def _release_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--release", type=Path, default=None,
                   help="lra_release.gz or an extracted folder (default: "
                        f"{release.DEFAULT_ARCHIVE}, then {release.DEFAULT_FOLDER}/)")
    p.add_argument("--extract-dir", type=Path, default=release.DEFAULT_FOLDER,
                   help="where folders taken from the archive are extracted (reused next time; "
                        "default %(default)s)")


def _raw_options(p: argparse.ArgumentParser, archive: Path, folder: Path) -> None:
    p.add_argument("--raw", type=Path, default=None,
                   help=f"the original {archive.name} or its extracted folder, for --source raw "
                        f"(default {archive}, else {folder}/)")
    p.add_argument("--tfds-dir", default=None,
                   help="tensorflow-datasets data_dir, for --source tfds")


def _generator_options(p: argparse.ArgumentParser, num_images: bool) -> None:
    p.add_argument("--seed", type=_at_least(0), default=0,
                   help="generator seed (default %(default)s)")
    if num_images:
        # 80/10/10 of fewer than 10 images would leave val or test empty.
        p.add_argument("--num-images", type=_at_least(10), default=pathfinder.RELEASE_IMAGES,
                       help="images to generate, split 80/10/10 (default %(default)s, as the "
                            "release)")
        p.add_argument("--workers", type=_at_least(1), default=pathfinder.default_workers(),
                       help="generator processes (default %(default)s)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="task", required=True, metavar="<task>")
    for task, sources in SOURCES.items():
        p = sub.add_parser(task, help=HELP[task], description=HELP[task])
        p.add_argument("--source", required=True, choices=sources,
                       help="where the data comes from (required): "
                            + "; ".join(f"{src}: {SOURCE_HELP[src]}" for src in sources))
        p.add_argument("--out", type=Path, default=None,
                       help=f"cache folder (default data/lra/{task}"
                            + (", or data/lra/pathfinder<res>_<difficulty> off the LRA level)"
                               if task == "pathfinder" else ")"))
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if "lra_release" in sources:
            _release_options(p)
        if task in ("text", "retrieval"):
            p.add_argument("--max-len", type=_at_least(1), default=text.DEFAULT_MAX_LEN,
                           help="bytes kept per document (default %(default)s, the MRA/Skyformer "
                                "protocol; LRA's config used 1000)")
        if task == "text":
            _raw_options(p, text.RAW_ARCHIVE, text.RAW_FOLDER)
        if task == "image":
            _raw_options(p, image.RAW_ARCHIVE, image.RAW_FOLDER)
        if task == "listops":
            _generator_options(p, num_images=False)
        if task == "pathfinder":
            p.add_argument("--resolution", type=int, default=32, choices=pathfinder.RESOLUTIONS,
                           help="image side in pixels (default %(default)s, LRA's Pathfinder)")
            p.add_argument("--difficulty", default=pathfinder.LRA_DIFFICULTY,
                           choices=list(pathfinder.DIFFICULTIES),
                           help="the level, by contour length in paddles (longer is harder; "
                                "default %(default)s, the level LRA uses)")
        if task in ("pathfinder", "pathx"):
            _generator_options(p, num_images=True)
    p = sub.add_parser("mini", help="the offline mini suite (stand-ins, not the benchmark)",
                       description=mini.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/mini"),
                   help="folder of the task caches, one per task (default %(default)s, where "
                        "lra.train's data=mini reads them)")
    p.add_argument("--tasks", nargs="+", choices=list(mini.BUILDERS), default=None,
                   help="only these tasks (default: all five)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("download", help="download the release or a raw archive (resumable)",
                       description="Download to <dest>.part, resuming with HTTP Range requests, "
                                   "and rename when complete (and matching --sha256).")
    p.add_argument("what", nargs="?", default="lra_release", choices=list(release.DOWNLOADS),
                   help="the LRA release, or a raw archive for --source raw (default "
                        "%(default)s)")
    p.add_argument("--url", default=None,
                   help="download from here (default: the official URL of <what>)")
    p.add_argument("--dest", type=Path, default=None, help="where to save it (default: "
                   + ", ".join(f"{k}: {dest}" for k, (_, dest) in release.DOWNLOADS.items())
                   + ")")
    p.add_argument("--sha256", default=None, help="expected sha256; a mismatch is rejected")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _raw(args, archive: Path, folder: Path) -> Path:
    """--raw, or the default archive, or the default extracted folder if only that exists."""
    if args.raw is not None:
        return args.raw
    return folder if folder.is_dir() and not archive.exists() else archive


def _out(args) -> Path:
    if args.out is not None:
        return args.out
    if args.task == "pathfinder" and (args.resolution, args.difficulty) != (
            32, pathfinder.LRA_DIFFICULTY):
        return Path(f"data/lra/pathfinder{args.resolution}_{args.difficulty}")
    return Path("data/lra") / args.task


def run(args) -> Path:
    """Do what the parsed command line asks; returns the folder written."""
    progress = not args.quiet
    if args.task == "mini":
        paths = mini.build(args.out, args.tasks, progress=progress)
        return paths[0].parent
    if args.task == "download":
        url, dest = release.DOWNLOADS[args.what]
        return release.download(args.url or url, args.dest or dest, sha256=args.sha256,
                                progress=progress)
    out = _out(args)
    if args.task == "listops":
        if args.source == "generate":
            return listops.build_generated(out, seed=args.seed, mini=False, progress=progress,
                                           **listops.LRA_SETTINGS)
        return listops.build_from_release(
            out, release.find(args.release, "listops-1000", args.extract_dir))
    if args.task == "text":
        examples = (text.read_imdb_tfds(args.tfds_dir) if args.source == "tfds"
                    else text.read_imdb_raw(_raw(args, text.RAW_ARCHIVE, text.RAW_FOLDER)))
        return text.build(out, examples, source=args.source, max_len=args.max_len)
    if args.task == "retrieval":
        return retrieval.build_from_release(
            out, release.find(args.release, retrieval.FOLDER, args.extract_dir), args.max_len)
    if args.task == "image":
        data = (image.read_cifar_tfds(args.tfds_dir) if args.source == "tfds"
                else image.read_cifar_raw(_raw(args, image.RAW_ARCHIVE, image.RAW_FOLDER)))
        return image.build(out, data, source=args.source)
    resolution, difficulty = ((pathfinder.PATHX_RESOLUTION, pathfinder.LRA_DIFFICULTY)
                              if args.task == "pathx" else (args.resolution, args.difficulty))
    if args.source == "generate":
        return pathfinder.build_generated(out, resolution=resolution, difficulty=difficulty,
                                          num_images=args.num_images, seed=args.seed,
                                          workers=args.workers, progress=progress)
    level = release.find(args.release, f"pathfinder{resolution}/{difficulty}", args.extract_dir)
    return pathfinder.build_from_release(out, level, resolution=resolution,
                                         difficulty=difficulty)


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
        for task in args.tasks or mini.BUILDERS:
            print(_summary(folder / task))
    elif args.task != "download":
        print(_summary(folder))
    else:
        print(f"downloaded {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
