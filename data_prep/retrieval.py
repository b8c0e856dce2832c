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

from .cache import SHUFFLE_SEED, DataError, Split, write_task
from .text import DEFAULT_MAX_LEN, TOKENS, VOCAB_SIZE, encode_bytes

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
