"""The offline mini suite: small, real, learnable stand-ins for the LRA tasks.

Built only from what a fresh machine has, in well under two minutes on 2 cores, and used by
`make demo` and the tests. Every manifest says `mini: true` and that it is a stand-in, and every
result row carries it: these are not the LRA benchmark.

- listops: our LRA-faithful generator, with shorter trees (up to 511 tokens).
- pathfinder: our generator at 32x32, the baseline level (6-paddle contours), 4,000 images.
- image: scikit-learn's bundled handwritten digits (8x8, 16 gray levels), upscaled to 32x32
  grayscale (1024 pixel tokens), 10 classes.
- text and retrieval: the source code of the Python standard library, which every Python
  installation ships. Text (binary, like IMDb): whether a 1,024-byte window comes from a package
  about running code (asyncio, importlib, multiprocessing, unittest) or one about data formats
  and protocols (email, http, urllib, xml), every package equally represented. Retrieval:
  whether two 1,024-byte windows come from the same module (file); half the negatives come from
  another module of the same package, so the package alone does not give the answer. Every file is
  cut into regions, the first 70% of its bytes for train, the next 15% for val, the last 15% for
  test, and windows never cross a region, so no text is shared between splits. Classes are
  balanced exactly. The texts depend on the installed Python, whose version the manifest records.
  Both are drawn class by class (text) or in alternating classes (retrieval), so each split is
  stored shuffled (`cache.SHUFFLE_SEED`): the first examples of a split are a fair sample.

ListOps and Pathfinder come out of their generators in random label order, and the digits are
permuted before they are split.
"""

from __future__ import annotations

import platform
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from . import listops, pathfinder
from .cache import SHUFFLE_SEED, DataError, Split, write_task
from .text import TOKENS, VOCAB_SIZE, encode_bytes

STANDIN = "mini stand-in, not the LRA benchmark"
SIZES = {"train": 2000, "val": 256, "test": 256}
PATHFINDER_IMAGES = 4000
WINDOW = 1024
TEXT_CLASSES = {"running code": ("asyncio", "importlib", "multiprocessing", "unittest"),
                "data formats and protocols": ("email", "http", "urllib", "xml")}
PACKAGES = tuple(p for group in TEXT_CLASSES.values() for p in group)
REGIONS = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}
SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__"}  # packaged separately by some distros
MIN_MODULE_BYTES = 16 * 1024  # retrieval modules need room for two windows in every region


def build_listops(out_dir: Path, progress: bool = True) -> Path:
    # Short trees (up to 511 tokens) keep CPU training in minutes; the algorithm is LRA's.
    return listops.build_generated(
        out_dir, sizes=dict(SIZES), seed=0, max_depth=10, max_args=10, min_length=64,
        max_length=512, mini=True, progress=progress,
    )


def build_pathfinder(out_dir: Path, progress: bool = True) -> Path:
    return pathfinder.build_generated(out_dir, resolution=32, difficulty="curv_baseline",
                                      num_images=PATHFINDER_IMAGES, seed=0, mini=True,
                                      progress=progress)


def build_image(out_dir: Path, progress: bool = True) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = np.stack([
        np.asarray(Image.fromarray(np.uint8(np.rint(im * 255 / 16))).resize(
            (32, 32), Image.BICUBIC)) for im in digits.images[order]
    ]).reshape(len(order), -1)  # (n, 1024)
    labels = digits.target[order].astype(np.int64)
    n_eval = 250
    cuts = {"train": (0, len(order) - 2 * n_eval), "val": (len(order) - 2 * n_eval,
            len(order) - n_eval), "test": (len(order) - n_eval, len(order))}
    splits = {name: Split(images[lo:hi], np.full(hi - lo, 1024, dtype=np.int32), labels[lo:hi])
              for name, (lo, hi) in cuts.items()}
    return write_task(
        out_dir, splits, task="image", source="sklearn_digits", num_classes=10,
        vocab_size=256, max_len=1024, mini=True,
        params={"tokens": "grayscale pixel values 0-255, row-major; 0 is a real token",
                "upscale": "8x8 (0-16) -> 32x32 bicubic", "shuffle_seed": 0},
        description=f"scikit-learn's handwritten digits upscaled to 32x32 grayscale ({STANDIN} "
                    "for grayscale CIFAR-10)",
    )


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


def _byte_split(texts: list[bytes], labels: list[int], pair: bool) -> Split:
    tokens, lengths = encode_bytes(texts, WINDOW)
    if pair:  # texts alternate u, v
        tokens, lengths = tokens.reshape(-1, 2, WINDOW), lengths.reshape(-1, 2)
    return Split(tokens, lengths, np.array(labels, dtype=np.int64))


def _python_params() -> dict:
    return {"window": WINDOW, "tokens": TOKENS, "python": platform.python_version(),
            "regions": "first 70% of each file train, next 15% val, last 15% test"}


def build_text(out_dir: Path, progress: bool = True) -> Path:
    modules = stdlib_modules()
    rng = np.random.default_rng(0)
    splits = {}
    for split, size in SIZES.items():
        texts, labels = [], []
        for label, group in enumerate(TEXT_CLASSES.values()):
            per_package = size // len(TEXT_CLASSES) // len(group)
            for package in group:
                texts += sample_windows(rng, [region(src, split) for _, src in modules[package]],
                                        per_package)
                labels += [label] * per_package
        splits[split] = _byte_split(texts, labels, pair=False)
    return write_task(
        out_dir, splits, task="text", source="python_stdlib", num_classes=len(TEXT_CLASSES),
        vocab_size=VOCAB_SIZE, max_len=WINDOW, mini=True, shuffle_seed=SHUFFLE_SEED,
        params={**_python_params(), "classes": {name: list(group) for name, group in
                                                TEXT_CLASSES.items()}},
        description="whether a 1,024-byte window of Python standard-library source comes from a "
                    f"package about running code or about data formats, byte-level ({STANDIN} "
                    "for IMDb)",
    )


def build_retrieval(out_dir: Path, progress: bool = True) -> Path:
    modules = [(package, path, src) for package, files in stdlib_modules().items()
               for path, src in files if len(src) >= MIN_MODULE_BYTES]
    rng = np.random.default_rng(0)
    splits = {}
    for split, size in SIZES.items():
        parts = [region(src, split) for _, _, src in modules]
        texts, labels = [], []
        for i in range(size):
            a = int(rng.integers(len(modules)))
            if i % 2 == 0:  # positive: two windows of one module, not overlapping
                first = int(rng.integers(0, len(parts[a]) - 2 * WINDOW + 1))
                second = int(rng.integers(first + WINDOW, len(parts[a]) - WINDOW + 1))
                if rng.random() < 0.5:
                    first, second = second, first
                texts += [parts[a][first:first + WINDOW], parts[a][second:second + WINDOW]]
                labels.append(1)
            else:  # negative: another module, of the same package half of the time
                same = [j for j, m in enumerate(modules) if m[0] == modules[a][0] and j != a]
                others = same if same and rng.random() < 0.5 else \
                    [j for j, m in enumerate(modules) if m[0] != modules[a][0]]
                b = others[int(rng.integers(len(others)))]
                texts += [*sample_windows(rng, [parts[a]], 1), *sample_windows(rng, [parts[b]], 1)]
                labels.append(0)
        splits[split] = _byte_split(texts, labels, pair=True)
    return write_task(
        out_dir, splits, task="retrieval", source="python_stdlib", num_classes=2,
        vocab_size=VOCAB_SIZE, max_len=WINDOW, mini=True, shuffle_seed=SHUFFLE_SEED,
        params={**_python_params(), "modules": len(modules), "min_module_bytes": MIN_MODULE_BYTES,
                "negatives": "half from another module of the same package"},
        description="whether two 1,024-byte windows of Python standard-library source come from "
                    f"the same module, byte-level pairs ({STANDIN} for AAN retrieval)",
    )


BUILDERS: dict[str, Callable[..., Path]] = {
    "listops": build_listops, "text": build_text, "retrieval": build_retrieval,
    "image": build_image, "pathfinder": build_pathfinder,
}


def build(root: str | Path, tasks: Iterable[str] | None = None, progress: bool = True
          ) -> list[Path]:
    """Build the named mini tasks (all by default) under `root/<task>/`."""
    root = Path(root)
    names = list(BUILDERS) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in BUILDERS]
    if unknown:
        raise DataError(f"no mini task {', '.join(map(repr, unknown))}; the mini tasks are "
                        f"{', '.join(BUILDERS)}")
    return [BUILDERS[t](root / t, progress=progress) for t in names]
