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
is a real token. The whole folder is written through `atomic.atomic_dir`: a killed or failed
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

from .atomic import atomic_dir

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
ARRAYS = ("tokens", "lengths", "labels")
SHUFFLE_SEED = 0  # the seed of every builder that shuffles its splits
# The manifest's schema: each key and the JSON types it may hold (a bool is not an int here).
SCHEMA: dict[str, tuple[type, ...]] = {
    "format_version": (int,), "task": (str,), "source": (str,), "mini": (bool,),
    "description": (str,), "num_classes": (int,), "vocab_size": (int,),
    "vocab": (list, type(None)), "max_len": (int,), "pair": (bool,), "params": (dict,),
    "splits": (dict,),
}
SPLIT_SCHEMA: dict[str, tuple[type, ...]] = {"size": (int,), "label_counts": (list,),
                                             "sha256": (dict,)}
POSITIVE = ("num_classes", "vocab_size", "max_len")


class DataError(RuntimeError):
    """Missing, corrupt or mismatched data. The message names the file and how to fix it."""


def prepare_command(task: str, data: str) -> str:
    """The command that builds the cache for `task` (shown in every missing-data error)."""
    if data == "mini":
        return "python -m data_prep mini"
    from . import tasks  # the registry (imported late: every task module imports this one)

    sources = list(tasks.get(task).sources) if task in tasks.names() else ["..."]
    return f"python -m data_prep {task} --source <{'|'.join(sources)}>"


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


def check_split(split: Split, *, where: Callable[[str], str], num_classes: int, vocab_size: int,
                max_len: int, pair: bool | None, fix: str) -> None:
    """Reject a split whose arrays disagree with each other or with the manifest's fields.

    `where(array)` names the array ("listops val" when building, its file when loading) and `fix`
    ends every message. Vectorised: one pass of min/max per array, and the first bad example is
    looked up only on failure.
    """

    def fail(array: str, problem: str):
        raise DataError(f"{where(array)}: {problem}; {fix}")

    if len(split.labels) == 0:
        fail("labels", "no examples (every split needs at least one)")
    for array in ARRAYS:
        if not np.issubdtype(getattr(split, array).dtype, np.integer):
            fail(array, f"{array} are {getattr(split, array).dtype}, not integers")
    tokens, labels = split.tokens, split.labels
    ndims = (2, 3) if pair is None else (3 if pair else 2,)  # pair=None: either kind
    if tokens.ndim not in ndims or (tokens.ndim == 3 and tokens.shape[1] != 2):
        fail("tokens", f"tokens have shape {tokens.shape}, not (n, max_len) or "
                       f"(n, 2, max_len) as pair={pair} says")
    if tokens.shape[-1] != max_len:
        fail("tokens", f"tokens are {tokens.shape[-1]} wide, not max_len={max_len}")
    if not len(tokens) == len(split.lengths) == len(labels):
        fail("lengths", f"{len(tokens)} token rows, {len(split.lengths)} lengths and "
                        f"{len(labels)} labels; they must agree")
    if split.lengths.shape != tokens.shape[:-1] or labels.ndim != 1:
        fail("lengths", f"lengths {split.lengths.shape} and labels {labels.shape} do not fit "
                        f"tokens {tokens.shape}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        rows = np.asarray(tokens).reshape(len(tokens), -1)
        i = int(np.flatnonzero(((rows < 0) | (rows >= vocab_size)).any(axis=1))[0])
        token = rows[i][(rows[i] < 0) | (rows[i] >= vocab_size)][0]
        fail("tokens", f"example {i} holds token {token}, outside [0, vocab_size={vocab_size})")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        fail("labels", f"example {bad[0]} has label {labels[bad[0]]}, outside "
                       f"[0, {num_classes}) ({bad.size} such) of num_classes={num_classes}")
    lengths = split.lengths.reshape(len(split.lengths), -1)  # (n, 1) or (n, 2)
    bad = np.flatnonzero(((lengths < 0) | (lengths > max_len)).any(axis=1))
    if bad.size:
        fail("lengths", f"example {bad[0]} has length {lengths[bad[0]].tolist()}, "
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
        check_split(split, where=lambda _, name=name: f"{task} {name}", num_classes=num_classes,
                    vocab_size=vocab_size, max_len=max_len, pair=None,
                    fix="the source does not match the task's settings")
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
    """Read `task_dir/manifest.json` and check it against the schema; every failure is one
    DataError naming the file, the field and the build command."""
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
    if not isinstance(manifest, dict):
        raise DataError(f"{path} holds a JSON {type(manifest).__name__}, not an object; "
                        f"rebuild with: {prepare_command(task, data)}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path} has format_version {manifest.get('format_version')!r}, this "
                        f"code reads {FORMAT_VERSION}; rebuild with: {prepare_command(task, data)}")
    if manifest.get("task") != task:
        raise DataError(f"{path} holds task {manifest.get('task')!r}, expected {task!r}")
    missing = [key for key in SCHEMA if key not in manifest]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)} (edited by hand?); rebuild with: "
                        f"{prepare_command(task, data)}")
    problem = schema_problem(manifest)
    if problem:
        raise DataError(f"{path}: {problem} (edited by hand?); rebuild with: "
                        f"{prepare_command(task, data)}")
    return manifest


def _type_problem(field: str, value: Any, types: tuple[type, ...]) -> str | None:
    """Why `value` is not one of `types` (JSON types: a bool is not an int), or None."""
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
    return f"field {field} is {value!r}, not {names}"


def schema_problem(manifest: Mapping[str, Any]) -> str | None:
    """The first way `manifest` departs from the schema (field named), or None."""
    for key, types in SCHEMA.items():
        problem = _type_problem(key, manifest[key], types)
        if problem:
            return problem
    for key in POSITIVE:
        if manifest[key] < 1:
            return f"field {key} is {manifest[key]}, not a positive int"
    if manifest["vocab"] is not None and not all(isinstance(w, str) for w in manifest["vocab"]):
        return "field vocab holds a non-string entry"
    for name in SPLITS:
        entry = manifest["splits"].get(name)
        if not isinstance(entry, dict):
            return f"field splits.{name} is {entry!r}, not an object"
        for key, types in SPLIT_SCHEMA.items():
            problem = _type_problem(f"splits.{name}.{key}", entry.get(key), types)
            if problem:
                return problem
        for array in ARRAYS:
            file = f"{name}.{array}.npy"
            problem = _type_problem(f"splits.{name}.sha256[{file!r}]",
                                    entry["sha256"].get(file), (str,))
            if problem:
                return problem
    return None


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
    # The arrays against the manifest's fields: what the model is built from (vocab_size sizes
    # the embedding, num_classes the head) must hold for every token and label.
    check_split(out, where=lambda array: str(task_dir / f"{split}.{array}.npy"),
                num_classes=manifest["num_classes"], vocab_size=manifest["vocab_size"],
                max_len=manifest["max_len"], pair=manifest["pair"],
                fix=f"the arrays disagree with {task_dir / 'manifest.json'}; rebuild with: "
                    f"{prepare_command(task, data)}")
    return out
