"""One cached format for every task: arrays plus a manifest, written atomically.

A task folder holds, for each split in (train, val, test):
    {split}.tokens.npy   (n, max_len) or (n, 2, max_len) for pair tasks; uint8 or int16
    {split}.lengths.npy  (n,) or (n, 2) int32: real tokens are tokens[i, :lengths[i]]
    {split}.labels.npy   (n,) int64
and `manifest.json`:
    format_version, task, source, mini (a stand-in, not the LRA benchmark), description,
    num_classes, vocab_size, vocab (optional list), max_len, pair, params (build settings),
    splits: {split: {size, label_counts, sha256: {file: digest}}}

Masks are explicit: a token is real iff its position is below the example's length. Pixel value 0
is a real token. The whole folder is written through `lra.atomic.atomic_dir`: a killed or failed
build leaves the previous cache as it was, and the new one gets the umask's permissions, so other
users of a shared cluster can read it.

A builder whose source is ordered (by class, or in any way that could bias a capped evaluation
that reads only the first examples) passes `shuffle_seed`: each split's rows are then stored in
the order `permutation(n, shuffle_seed)`, once, and the seed is recorded in the manifest params.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lra.atomic import atomic_dir

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
ARRAYS = ("tokens", "lengths", "labels")
SHUFFLE_SEED = 0  # the seed of every builder that shuffles its splits
MANIFEST_KEYS = ("format_version", "task", "source", "mini", "description", "num_classes",
                 "vocab_size", "vocab", "max_len", "pair", "params", "splits")


class DataError(RuntimeError):
    """Missing, corrupt or mismatched data. The message names the file and how to fix it."""


def prepare_command(task: str, data: str) -> str:
    """The command that builds the cache for `task` (shown in every missing-data error)."""
    if data == "mini":
        return "python -m data_prep mini"
    from .__main__ import SOURCES  # the command line's table (imported late: it imports this)

    return f"python -m data_prep {task} --source <{'|'.join(SOURCES.get(task, ('...',)))}>"


@dataclass
class Split:
    """One split in memory: padded tokens, real lengths and labels."""

    tokens: np.ndarray  # (n, max_len) or (n, 2, max_len)
    lengths: np.ndarray  # (n,) or (n, 2)
    labels: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.labels)


def pack(sequences: Sequence[Sequence[int]], max_len: int, *, where: Callable[[int], str],
         fix: str) -> tuple[np.ndarray, np.ndarray]:
    """Pad a list of token lists to (n, max_len). A sequence longer than max_len is a DataError
    naming it (`where(i)`, e.g. its file and line) and saying how to fix it (`fix`)."""
    n = len(sequences)
    vmax = max((max(s) for s in sequences if len(s)), default=0)
    dtype = np.uint8 if vmax < 256 else np.int16
    tokens = np.zeros((n, max_len), dtype=dtype)
    lengths = np.zeros(n, dtype=np.int32)
    for i, seq in enumerate(sequences):
        if len(seq) > max_len:
            raise DataError(f"{where(i)}: {len(seq)} tokens, more than max_len={max_len}; {fix}")
        tokens[i, : len(seq)] = seq
        lengths[i] = len(seq)
    return tokens, lengths


def permutation(n: int, seed: int) -> np.ndarray:
    """The stored order of a shuffled split of n rows: row i of the cache is source row order[i]."""
    return np.random.default_rng(seed).permutation(n)


def check_split(split: Split, *, task: str, name: str, num_classes: int, max_len: int) -> None:
    """Reject a split that would make an unusable cache, naming the task, split and example."""
    where = f"{task} {name}"
    if len(split) == 0:
        raise DataError(f"{where} has no examples; the source holds too few (every split needs "
                        "at least one)")
    if split.tokens.shape[-1] != max_len:
        raise DataError(f"{where}: tokens are {split.tokens.shape[-1]} wide, not max_len="
                        f"{max_len}")
    if not len(split.tokens) == len(split.lengths) == len(split.labels):
        raise DataError(f"{where}: {len(split.tokens)} token rows, {len(split.lengths)} lengths "
                        f"and {len(split.labels)} labels; they must agree")
    bad = np.flatnonzero((split.labels < 0) | (split.labels >= num_classes))
    if bad.size:
        raise DataError(f"{where}: example {bad[0]} has label {split.labels[bad[0]]}, outside "
                        f"[0, {num_classes}) ({bad.size} such); the source does not match the "
                        f"task's {num_classes} classes")
    lengths = split.lengths.reshape(len(split.lengths), -1)  # (n, 1) or (n, 2)
    bad = np.flatnonzero(((lengths < 0) | (lengths > max_len)).any(axis=1))
    if bad.size:
        raise DataError(f"{where}: example {bad[0]} has length {lengths[bad[0]].tolist()}, "
                        f"outside [0, {max_len}]")


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 4 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_task(
    out_dir: str | Path,
    splits: Mapping[str, Split],
    *,
    task: str,
    source: str,
    num_classes: int,
    vocab_size: int,
    max_len: int,
    mini: bool,
    description: str,
    params: Mapping[str, Any],
    vocab: Sequence[str] | None = None,
    shuffle_seed: int | None = None,
) -> Path:
    """Check the splits, then write them and the manifest to `out_dir` atomically. With
    `shuffle_seed`, each split's rows are stored in the order `permutation(n, shuffle_seed)`."""
    splits = {name: Split(s.tokens, s.lengths.astype(np.int32),
                          np.asarray(s.labels, dtype=np.int64)) for name, s in splits.items()}
    for name, split in splits.items():
        check_split(split, task=task, name=name, num_classes=num_classes, max_len=max_len)
    params = dict(params)
    if shuffle_seed is not None:
        params["shuffle_seed"] = shuffle_seed
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "source": source,
        "mini": mini,
        "description": description,
        "num_classes": num_classes,
        "vocab_size": vocab_size,
        "vocab": list(vocab) if vocab is not None else None,
        "max_len": max_len,
        "pair": any(s.tokens.ndim == 3 for s in splits.values()),
        "params": params,
        "splits": {},
    }
    with atomic_dir(out_dir) as tmp:
        for name, split in splits.items():
            order = (slice(None) if shuffle_seed is None
                     else permutation(len(split), shuffle_seed))
            entry = {
                "size": len(split),
                "label_counts": np.bincount(split.labels, minlength=num_classes).tolist(),
                "sha256": {},
            }
            for key in ARRAYS:
                path = tmp / f"{name}.{key}.npy"
                np.save(path, getattr(split, key)[order])
                entry["sha256"][path.name] = file_sha256(path)
            manifest["splits"][name] = entry
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return Path(out_dir)


def read_manifest(task_dir: str | Path, *, task: str, data: str = "lra") -> dict[str, Any]:
    """Read and sanity-check `task_dir/manifest.json`; a missing one names the build command."""
    path = Path(task_dir) / "manifest.json"
    if not path.exists():
        raise DataError(
            f"no prepared data for task {task!r}: {path} does not exist. "
            f"Prepare it with: {prepare_command(task, data)}"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); rebuild with: "
                        f"{prepare_command(task, data)}") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path} has format_version {manifest.get('format_version')!r}, this "
                        f"code reads {FORMAT_VERSION}; rebuild with: {prepare_command(task, data)}")
    if manifest.get("task") != task:
        raise DataError(f"{path} holds task {manifest.get('task')!r}, expected {task!r}")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)} (edited by hand?); rebuild with: "
                        f"{prepare_command(task, data)}")
    return manifest


def load_split(
    task_dir: str | Path, split: str, manifest: Mapping[str, Any], *, verify: bool = True,
    data: str = "lra",
) -> Split:
    """Memory-map one split, checking its files against the manifest (sizes and checksums)."""
    task_dir = Path(task_dir)
    task = manifest["task"]
    entry = manifest["splits"].get(split)
    if entry is None:
        raise DataError(f"{task_dir / 'manifest.json'} has no split {split!r} "
                        f"(has {sorted(manifest['splits'])})")
    arrays = {}
    for key in ARRAYS:
        path = task_dir / f"{split}.{key}.npy"
        if not path.exists():
            raise DataError(f"{path} is missing; rebuild with: {prepare_command(task, data)}")
        if verify and file_sha256(path) != entry["sha256"].get(path.name):
            raise DataError(f"{path} does not match the checksum in its manifest (corrupt or "
                            f"edited); rebuild with: {prepare_command(task, data)}")
        try:
            arrays[key] = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise DataError(f"{path} is not a readable .npy file ({err}); rebuild with: "
                            f"{prepare_command(task, data)}") from err
    out = Split(**arrays)
    if not (len(out.tokens) == len(out.lengths) == len(out.labels) == entry["size"]):
        raise DataError(f"{task_dir}: {split} arrays disagree with the manifest size "
                        f"{entry['size']}; rebuild with: {prepare_command(task, data)}")
    return out
