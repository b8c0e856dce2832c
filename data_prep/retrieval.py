"""Retrieval (AAN): does one paper cite the other? Byte-level document pairs.

The release holds `tsv_data/new_aan_pairs.{train,eval,test}.tsv` (147,086 / 18,090 / 17,437 rows):
no header, no quoting, five tab-separated columns `label, id1, id2, text1, text2`, the label
written as a float (`0.0` / `1.0`). Each text is tokenised as the bytes stored in the file (as
LRA's byte encoder saw them; see `text.encode_bytes`) and truncated to `max_len` per document. A
split is stored as tokens (n, 2, max_len) and lengths (n, 2): `[u, v]` for the dual encoder.
The files' row order cannot be checked offline, so each split is stored shuffled
(`cache.SHUFFLE_SEED`): a capped evaluation reads a fair sample whatever that order is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import mini, tasks
from .cache import SHUFFLE_SEED, DataError, Split, write_task
from .text import DEFAULT_MAX_LEN, TOKENS, VOCAB_SIZE, encode_bytes, max_len_flag, window_split

FOLDER = "tsv_data"
FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
         "test": "new_aan_pairs.test.tsv"}
COLUMNS = 5
NUM_CLASSES = 2


def read_tsv(path: str | Path, max_len: int) -> Split:
    """One AAN TSV file as a pair split; a row with the wrong column count or label fails with
    the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; prepare Retrieval with: python -m data_prep "
                        "retrieval --source lra_release [--release PATH]")
    texts, labels = [], []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            fields = line.split(b"\t")
            if len(fields) != COLUMNS:
                raise DataError(f"{path}:{line_no}: expected {COLUMNS} tab-separated columns "
                                f"(label, id1, id2, text1, text2), got {len(fields)}")
            try:
                label = float(fields[0])
            except ValueError:
                label = -1.0
            if label not in (0.0, 1.0):
                raise DataError(f"{path}:{line_no}: label {fields[0][:20]!r} is not 0 or 1")
            labels.append(int(label))
            # Only the first max_len bytes are kept: don't hold whole papers in memory.
            texts += [fields[3][:max_len], fields[4][:max_len]]
    if not labels:
        raise DataError(f"{path} holds no rows")
    tokens, lengths = encode_bytes(texts, max_len)  # (2n, max_len): u0, v0, u1, v1, ...
    return Split(tokens.reshape(-1, 2, max_len), lengths.reshape(-1, 2),
                 np.array(labels, dtype=np.int64))


def build_from_release(out_dir: str | Path, tsv_dir: str | Path,
                       max_len: int = DEFAULT_MAX_LEN) -> Path:
    """Read the release's `tsv_data/` folder into the cache."""
    tsv_dir = Path(tsv_dir)
    splits = {name: read_tsv(tsv_dir / file, max_len) for name, file in FILES.items()}
    return write_task(
        out_dir, splits, task="retrieval", source="lra_release", num_classes=NUM_CLASSES,
        vocab_size=VOCAB_SIZE, max_len=max_len, mini=False, shuffle_seed=SHUFFLE_SEED,
        params={"max_len": max_len, "tokens": TOKENS, "release_dir": str(tsv_dir),
                "pair": "tokens[:, 0] = text1, tokens[:, 1] = text2"},
        description=f"AAN citation pairs from the official LRA release, byte-level, each "
                    f"document truncated to {max_len} bytes",
    )


# ---- the mini stand-in, and the task's entry in the registry ---------------------------------

MINI_MODULE_BYTES = 16 * 1024  # a module needs room for two windows in every region


def build_mini(out_dir: Path, progress: bool = True) -> Path:
    """The stand-in for AAN: whether two 1,024-byte windows of the standard library come from the
    same module (file), classes alternating and balanced exactly. Half the negatives come from
    another module of the same package, so the package alone does not give the answer. Each
    split is stored shuffled (`cache.SHUFFLE_SEED`)."""
    modules = [(package, path, src) for package, files in mini.stdlib_modules().items()
               for path, src in files if len(src) >= MINI_MODULE_BYTES]
    window = mini.WINDOW
    rng = np.random.default_rng(0)
    splits = {}
    for split, size in mini.SIZES.items():
        parts = [mini.region(src, split) for _, _, src in modules]
        texts, labels = [], []
        for i in range(size):
            a = int(rng.integers(len(modules)))
            if i % 2 == 0:  # positive: two windows of one module, not overlapping
                first = int(rng.integers(0, len(parts[a]) - 2 * window + 1))
                second = int(rng.integers(first + window, len(parts[a]) - window + 1))
                if rng.random() < 0.5:
                    first, second = second, first
                texts += [parts[a][first:first + window], parts[a][second:second + window]]
                labels.append(1)
            else:  # negative: another module, of the same package half of the time
                same = [j for j, m in enumerate(modules) if m[0] == modules[a][0] and j != a]
                others = same if same and rng.random() < 0.5 else \
                    [j for j, m in enumerate(modules) if m[0] != modules[a][0]]
                b = others[int(rng.integers(len(others)))]
                texts += [*mini.sample_windows(rng, [parts[a]], 1),
                          *mini.sample_windows(rng, [parts[b]], 1)]
                labels.append(0)
        splits[split] = window_split(texts, labels, pair=True)
    return write_task(
        out_dir, splits, task="retrieval", source="python_stdlib", num_classes=NUM_CLASSES,
        vocab_size=VOCAB_SIZE, max_len=window, mini=True, shuffle_seed=SHUFFLE_SEED,
        params={**mini.stdlib_params(), "tokens": TOKENS, "modules": len(modules),
                "min_module_bytes": MINI_MODULE_BYTES,
                "negatives": "half from another module of the same package"},
        description="whether two 1,024-byte windows of Python standard-library source come from "
                    f"the same module, byte-level pairs ({mini.STANDIN} for AAN retrieval)",
    )


tasks.register(tasks.Task(
    name="retrieval", order=3,
    help="AAN citation pairs, byte-level (tsv_data from the release)",
    sources={"lra_release": tasks.release_source(
        lambda args: FOLDER,
        lambda args, out, folder: build_from_release(out, folder, args.max_len))},
    flags=max_len_flag, mini=build_mini,
))
