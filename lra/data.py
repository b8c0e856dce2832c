"""The one dataset class `lra.train` reads every task through, over the cache of `data_prep`."""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from attention_zoo.registry import Choice
from data_prep.cache import DataError, Split, load_split, read_manifest

from .checks import choice, non_negative

log = logging.getLogger(__name__)


class Suite(Choice):
    mini = enum.auto()  # the offline stand-ins
    lra = enum.auto()  # the benchmark


class PadTo(Choice):
    max = enum.auto()  # every batch as long as the task
    batch = enum.auto()  # each batch as long as its longest example


@dataclass
class DataConfig:
    name: Suite = Suite.mini
    root: str = "data/mini"  # task caches live in root/<task>/
    build_missing: bool = False  # build a missing mini task on demand
    verify_checksums: bool = True
    # Reproduce the published harnesses' quirk of masking every token equal to 0 (black pixels in
    # Image and Pathfinder) as padding. Off by default: masks come from the true lengths.
    mask_zero_tokens_as_padding: bool = False
    # Cut every example to task.max_len tokens when read, instead of refusing data prepared
    # longer: the original LRA's Text at 1,000 bytes from the 4,000 prepared (protocol=
    # lra_original); the same tokens as data prepared at that length, bytes being tokens.
    truncate_to_max_len: bool = False
    pad_to: PadTo = PadTo.max
    num_workers: int = 0

    def __post_init__(self) -> None:
        choice("data", self, name=Suite, pad_to=PadTo)
        non_negative("data", self, "num_workers")


class TaskDataset(Dataset):
    """One split: yields (tokens, length, label) as numpy arrays, each example's first `max_len`
    tokens (tokens (..., L) and lengths (...): a pair task has both documents on the lead axis)."""

    def __init__(self, split: Split, max_len: int):
        self.split, self.max_len = split, max_len

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return (self.split.tokens[i][..., :self.max_len],
                np.minimum(self.split.lengths[i], self.max_len), self.split.labels[i])


class Collate:
    """Stack examples into (tokens, mask, labels) tensors with an explicit padding mask."""

    def __init__(self, pad_to: str, mask_zero_tokens: bool):
        self.pad_to = pad_to
        self.mask_zero_tokens = mask_zero_tokens

    def __call__(self, batch):
        tokens = torch.from_numpy(np.stack([b[0] for b in batch]).astype(np.int64))
        lengths = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
        labels = torch.tensor(np.array([b[2] for b in batch]), dtype=torch.long)
        if self.pad_to == "batch":
            tokens = tokens[..., : max(int(lengths.max()), 1)]
        positions = torch.arange(tokens.shape[-1])
        mask = positions < lengths[..., None]
        if self.mask_zero_tokens:
            mask &= tokens != 0
        return tokens, mask, labels


@dataclass
class TaskData:
    manifest: dict[str, Any]
    splits: dict[str, TaskDataset]

    def train_loader(self, batches: torch.utils.data.Sampler, cfg: DataConfig) -> DataLoader:
        """Training batches from a batch sampler (`lra.sampling.StepBatches`)."""
        return self._loader("train", cfg, batch_sampler=batches)

    def eval_loader(self, split: str, batch_size: int, sampler: torch.utils.data.Sampler,
                    cfg: DataConfig) -> DataLoader:
        return self._loader(split, cfg, batch_size=batch_size, sampler=sampler)

    def _loader(self, split: str, cfg: DataConfig, **kwargs) -> DataLoader:
        # An own generator: a DataLoader otherwise draws its workers' base seed from the global
        # RNG when iterated, which would shift dropout after a resume.
        return DataLoader(self.splits[split], num_workers=cfg.num_workers,
                          collate_fn=Collate(cfg.pad_to, cfg.mask_zero_tokens_as_padding),
                          generator=torch.Generator().manual_seed(0), **kwargs)


def prepare_manifest(task: str, cfg: DataConfig, *, expect: dict[str, Any]) -> dict[str, Any]:
    """The manifest of `task`'s cache, building a missing mini task first when allowed.

    `expect` holds what the task config says (num_classes, pair, max_len): a manifest that
    disagrees is rejected with both values named, never silently used.
    """
    task_dir = Path(cfg.root) / task
    if not (task_dir / "manifest.json").exists() and cfg.build_missing:
        from data_prep import mini

        log.info("building the mini %s task in %s (first use)", task, task_dir)
        mini.build(cfg.root, [task])
    manifest = read_manifest(task_dir, task=task, data=cfg.name)
    source = task_dir / "manifest.json"
    if manifest["mini"] != (cfg.name == "mini"):
        kind = "a mini stand-in" if manifest["mini"] else "the LRA benchmark"
        raise DataError(f"{source} holds {kind}, but data={cfg.name}; point data.root elsewhere")
    for key in ("num_classes", "pair"):
        if manifest[key] != expect[key]:
            raise DataError(f"{source} says {key}={manifest[key]!r} but task.{key}="
                            f"{expect[key]!r}; fix the task config or rebuild the data")
    if manifest["max_len"] > expect["max_len"]:
        if not cfg.truncate_to_max_len:
            raise DataError(f"{source} holds sequences of up to {manifest['max_len']} tokens but "
                            f"task.max_len={expect['max_len']}; raise task.max_len, or set "
                            "data.truncate_to_max_len=true to cut every example to it")
        log.info("%s: examples cut from up to %d tokens to task.max_len=%d "
                 "(data.truncate_to_max_len)", task, manifest["max_len"], expect["max_len"])
    for name in ("train", "val", "test"):
        if manifest["splits"].get(name, {}).get("size", 0) == 0:
            raise DataError(f"{source}: split {name!r} is missing or empty; rebuild the data")
    return manifest


def manifest_digest(manifest: dict[str, Any]) -> str:
    """What identifies the prepared data: source, build settings, every array's checksum, and the
    fields that shape the model built over it (vocab_size sizes the embedding, num_classes the
    head, pair the encoder), so a manifest edited in those fields is a new run, never a reuse."""
    keep = {k: manifest[k] for k in ("task", "source", "mini", "max_len", "params", "vocab_size",
                                     "num_classes", "pair")}
    keep["sha256"] = {name: split["sha256"] for name, split in manifest["splits"].items()}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def load_task_data(task: str, cfg: DataConfig, manifest: dict[str, Any],
                   max_len: int | None = None) -> TaskData:
    """Memory-map the splits described by `manifest` (checksums verified unless disabled), read
    up to `max_len` tokens per example (lra.train: task.max_len, which prepare_manifest lets
    be shorter than the data's only under data.truncate_to_max_len; None: the data's own)."""
    task_dir = Path(cfg.root) / task
    max_len = manifest["max_len"] if max_len is None else max_len
    splits = {name: TaskDataset(load_split(task_dir, name, manifest,
                                           verify=cfg.verify_checksums, data=cfg.name), max_len)
              for name in ("train", "val", "test")}
    return TaskData(manifest, splits)
