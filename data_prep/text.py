"""Text (IMDb sentiment) and the byte-level tokenisation shared with Retrieval.

Byte-level, as LRA: one token per UTF-8 byte, token = byte value + 1 so that 0 stays free for
padding (tfds' ByteTextEncoder numbering), 257 ids in all. Each document is truncated to `max_len`
bytes: 4000 by default (the MRA and Skyformer protocol; LRA's own config and the Nystromformer
scripts used 1000), always recorded in the manifest.

IMDb is not in the LRA release. It comes from tensorflow-datasets (`imdb_reviews`, as the
original) or from the original `aclImdb_v1.tar.gz` (archive or extracted `aclImdb/` folder:
`{train,test}/{neg,pos}/<id>_<rating>.txt`), with label 0 = negative, 1 = positive either way.
There are 25K train and 25K test reviews; the test set serves as both val and test, as in LRA.
A review from the archive is stripped of leading and trailing whitespace, as TFDS's builder reads
it (`f.read().strip()`), so both sources give the same bytes. The archive is read in label order,
so each split is stored shuffled (`cache.SHUFFLE_SEED`, the same order for val and test), whatever
the source: the first examples are a fair sample.
"""

from __future__ import annotations

import logging
import re
import tarfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from . import mini, tasks
from .cache import SHUFFLE_SEED, DataError, Split, write_task

log = logging.getLogger(__name__)

VOCAB_SIZE = 257
DEFAULT_MAX_LEN = 4000
NUM_CLASSES = 2
TOKENS = "byte value + 1 (UTF-8 bytes; 0 = padding)"
RAW_ARCHIVE = Path("data/raw/aclImdb_v1.tar.gz")
RAW_FOLDER = Path("data/raw/aclImdb")
RAW_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
LABELS = {"neg": 0, "pos": 1}
REVIEW = re.compile(r"(?:^|/)aclImdb/(train|test)/(neg|pos)/(\d+)_\d+\.txt$")

Example = tuple[bytes, int]


def encode_bytes(texts: Sequence[bytes], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (n, max_len) and lengths (n,) of byte strings truncated to `max_len` bytes. The
    tokens are uint8 unless a 0xFF byte occurs (never in valid UTF-8), then int16."""
    clipped = [t[:max_len] for t in texts]
    dtype = np.int16 if any(b"\xff" in t for t in clipped) else np.uint8
    tokens = np.zeros((len(clipped), max_len), dtype=dtype)
    lengths = np.fromiter(map(len, clipped), dtype=np.int32, count=len(clipped))
    for row, text in zip(tokens, clipped, strict=True):
        ids = np.frombuffer(text, dtype=np.uint8).astype(dtype)
        ids += 1
        row[: len(ids)] = ids
    return tokens, lengths


def _review_key(path: str) -> tuple[str, int, int] | None:
    """(split, label, id) of a review file path, or None for anything else in the tree."""
    match = REVIEW.search(path)
    if match is None:
        return None
    split, polarity, review_id = match.groups()
    return split, LABELS[polarity], int(review_id)


def _collect(items: Iterable[tuple[str, bytes]], source: Path) -> dict[str, list[Example]]:
    """Group (path, text) pairs into train/test examples, sorted by label then review id."""
    found: dict[str, list[tuple[int, int, bytes]]] = {"train": [], "test": []}
    for path, text in items:
        key = _review_key(path)
        if key is not None:
            split, label, review_id = key
            found[split].append((label, review_id, text.strip()))  # as TFDS: read().strip()
    for split, rows in found.items():
        if not rows:
            raise DataError(f"{source} holds no aclImdb/{split}/{{neg,pos}}/<id>_<rating>.txt "
                            "reviews; is it aclImdb_v1.tar.gz or its extracted aclImdb/ folder?")
    return {split: [(text, label) for label, _, text in sorted(rows)]
            for split, rows in found.items()}


def read_imdb_raw(path: str | Path) -> dict[str, list[Example]]:
    """IMDb from `aclImdb_v1.tar.gz` or an extracted folder (`aclImdb/` or the one above it)."""
    path = Path(path)
    if path.is_dir():
        root = path if path.name == "aclImdb" else path / "aclImdb"
        files = sorted(root.glob("*/*/*.txt"))
        return _collect(((f"aclImdb/{p.relative_to(root).as_posix()}", p.read_bytes())
                         for p in files), path)
    if not path.is_file():
        raise DataError(f"no IMDb archive or folder at {path}; fetch it with: python -m "
                        "data_prep download imdb, or pass --raw PATH, or use --source tfds")

    def members():
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if member.isfile() and _review_key(member.name) is not None:
                    yield member.name, tar.extractfile(member).read()

    try:
        return _collect(members(), path)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); fetch "
                        "it again with: python -m data_prep download imdb") from err


def read_imdb_tfds(data_dir: str | None = None) -> dict[str, list[Example]]:
    """IMDb through tensorflow-datasets (`imdb_reviews`), as the original LRA code."""
    return {split: [(bytes(text), int(label)) for text, label in
                    load_tfds("imdb_reviews", split, data_dir, task="text")]
            for split in ("train", "test")}


def import_tfds(task: str):
    """tensorflow_datasets, or a one-line error saying how to install it or avoid it."""
    try:
        import tensorflow_datasets
    except ImportError:
        raise DataError("tensorflow-datasets is not installed; install the optional extra with "
                        "`pip install -e '.[tfds]'`, or use the original archive instead: "
                        f"python -m data_prep {task} --source raw") from None
    return tensorflow_datasets


def load_tfds(name: str, split: str, data_dir: str | None, *, task: str) -> list:
    """The (input, label) numpy pairs of a tfds dataset split. tfds fails in many ways (not
    downloaded, no network, a corrupt data_dir), each reported as one DataError."""
    tfds = import_tfds(task)
    try:
        return list(tfds.as_numpy(tfds.load(name, split=split, as_supervised=True,
                                            data_dir=data_dir)))
    except Exception as err:  # tfds' own exception types vary by version
        raise DataError(f"tensorflow-datasets could not load {name} ({split}, data_dir "
                        f"{data_dir or 'default'}): {type(err).__name__}: {err}; or use the "
                        f"original archive: python -m data_prep {task} --source raw") from err


def to_split(examples: Sequence[Example], max_len: int) -> Split:
    tokens, lengths = encode_bytes([text for text, _ in examples], max_len)
    return Split(tokens, lengths, np.array([label for _, label in examples], dtype=np.int64))


def build(out_dir: str | Path, examples: dict[str, list[Example]], *, source: str,
          max_len: int = DEFAULT_MAX_LEN, params: dict | None = None) -> Path:
    """Write IMDb to the cache: train, and the test set as both val and test."""
    train, test = to_split(examples["train"], max_len), to_split(examples["test"], max_len)
    truncated = sum(int(np.sum(s.lengths == max_len)) for s in (train, test))
    log.info("IMDb: %d train, %d test reviews; %d truncated to %d bytes", len(train), len(test),
             truncated, max_len)
    return write_task(
        out_dir, {"train": train, "val": test, "test": test}, task="text", source=source,
        num_classes=NUM_CLASSES, vocab_size=VOCAB_SIZE, max_len=max_len, mini=False,
        params={"max_len": max_len, "tokens": TOKENS, "labels": "0 = negative, 1 = positive",
                **(params or {})}, shuffle_seed=SHUFFLE_SEED,
        description=f"IMDb reviews, byte-level, truncated to {max_len} bytes; the 25K test set "
                    "is used as both val and test, as in LRA",
    )


# ---- the mini stand-in, and the task's entry in the registry ---------------------------------

def window_split(texts: list[bytes], labels: list[int], pair: bool) -> Split:
    """Windows of mini.WINDOW bytes as a split; with `pair`, texts alternate u, v."""
    tokens, lengths = encode_bytes(texts, mini.WINDOW)
    if pair:
        tokens, lengths = tokens.reshape(-1, 2, mini.WINDOW), lengths.reshape(-1, 2)
    return Split(tokens, lengths, np.array(labels, dtype=np.int64))


def build_mini(out_dir: Path, progress: bool = True) -> Path:
    """The stand-in for IMDb (binary, like it): whether a 1,024-byte window of the standard
    library comes from a package about running code (asyncio, importlib, multiprocessing,
    unittest) or one about data formats and protocols (email, http, urllib, xml), every package
    equally represented and the classes balanced exactly. Drawn class by class, so each split is
    stored shuffled (`cache.SHUFFLE_SEED`)."""
    modules = mini.stdlib_modules()
    rng = np.random.default_rng(0)
    splits = {}
    for split, size in mini.SIZES.items():
        texts, labels = [], []
        for label, group in enumerate(mini.TEXT_CLASSES.values()):
            per_package = size // len(mini.TEXT_CLASSES) // len(group)
            for package in group:
                texts += mini.sample_windows(
                    rng, [mini.region(src, split) for _, src in modules[package]], per_package)
                labels += [label] * per_package
        splits[split] = window_split(texts, labels, pair=False)
    return write_task(
        out_dir, splits, task="text", source="python_stdlib", num_classes=len(mini.TEXT_CLASSES),
        vocab_size=VOCAB_SIZE, max_len=mini.WINDOW, mini=True, shuffle_seed=SHUFFLE_SEED,
        params={**mini.stdlib_params(), "tokens": TOKENS,
                "classes": {name: list(group) for name, group in mini.TEXT_CLASSES.items()}},
        description="whether a 1,024-byte window of Python standard-library source comes from a "
                    f"package about running code or about data formats, byte-level "
                    f"({mini.STANDIN} for IMDb)",
    )


def max_len_flag(p) -> None:
    """--max-len, of every byte-level task."""
    p.add_argument("--max-len", type=tasks.at_least(1), default=DEFAULT_MAX_LEN,
                   help="bytes kept per document (default %(default)s, the MRA/Skyformer "
                        "protocol; LRA's config used 1000)")


tasks.register(tasks.Task(
    name="text", order=2,
    help="IMDb sentiment, byte-level (tensorflow-datasets or aclImdb_v1.tar.gz)",
    sources={
        "tfds": tasks.tfds_source(lambda args, out, data_dir: build(
            out, read_imdb_tfds(data_dir), source="tfds", max_len=args.max_len)),
        "raw": tasks.raw_source(RAW_ARCHIVE, RAW_FOLDER, lambda args, out, path: build(
            out, read_imdb_raw(path), source="raw", max_len=args.max_len)),
    },
    flags=max_len_flag, mini=build_mini, downloads={"imdb": (RAW_URL, RAW_ARCHIVE)},
))
