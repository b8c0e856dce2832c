"""The typed config tree behind `conf/`, and its validation.

Hydra composes `conf/`; `load_config` merges the result onto these dataclasses (a wrong key or type
fails with its full key named) and then checks values (a bad value fails with the key, the value
and the allowed range). Attention options are checked against the attention's own dataclass.
Everything fails before any data is read or any step is trained.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from attention_zoo import AttentionError, make_options

from .data import DataConfig
from .model import ACTIVATIONS, POOLINGS, AttentionSpec, ModelConfig
from .schedules import SCHEDULES

log = logging.getLogger("lra.config")


class ConfigError(ValueError):
    """A config key or value that cannot work. The message names the key."""


@dataclass
class TaskConfig:
    name: str = MISSING
    num_classes: int = MISSING
    max_len: int = MISSING  # model positions; the protocol rounds task lengths up to 2^k
    pair: bool = False  # two inputs per example (Retrieval), dual-encoder head
    # The task's training protocol; `trainer.*` defaults to these.
    batch_size: int = 32
    warmup_steps: int = 1000
    max_steps: int = 5000
    eval_every: int = 50


@dataclass
class TrainerConfig:
    max_steps: int = "${task.max_steps}"  # type: ignore[assignment]
    batch_size: int = "${task.batch_size}"  # type: ignore[assignment]
    warmup_steps: int = "${task.warmup_steps}"  # type: ignore[assignment]
    eval_every: int = "${task.eval_every}"  # type: ignore[assignment]
    eval_batches: int | None = None  # cap on dev batches per evaluation (None = the whole split)
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    weight_decay: float = 0.0
    # "onecycle": torch's OneCycleLR as the published harness called it (lr from lr/25 up to lr
    # over warmup_steps, then linearly down to lr/25e4; Adam's beta1 cycles betas[0]+0.05 ->
    # betas[0]-0.05 -> back, i.e. 0.95 -> 0.85 -> 0.95); "linear": linear warmup from lr/warmup,
    # linear decay to 0, betas fixed; "rsqrt" and "cosine": the original LRA's (lra/schedules.py).
    schedule: str = "onecycle"
    grad_clip: float = 0.0  # max gradient norm; 0 (the published harness) disables clipping
    # Micro-batches per optimiser step: batch_size stays the global batch, each process runs
    # batch_size / (processes * accumulate) examples at a time, so a small GPU runs the protocol.
    accumulate: int = 1
    amp: bool = True  # mixed precision on CUDA (model.attention_fp32 keeps attention in fp32)
    amp_dtype: str = "fp16"  # fp16 with a gradient scaler (published harness), or bf16
    device: str = "auto"  # auto (CUDA when present), cpu, cuda
    resume: bool = True  # pick up a run folder's last checkpoint; skip a finished run
    progress: bool = True  # tqdm bar
    num_threads: int | None = None  # torch CPU threads (None = torch's default)


@dataclass
class LoggerConfig:
    name: str = "none"  # none or wandb
    project: str = "lra-zoo"
    group: str | None = None  # defaults to the sweep's tag
    mode: str | None = None  # online/offline; None = online only if an API key is configured


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    attention: AttentionSpec = field(default_factory=AttentionSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    protocol: str = "small_protocol"  # conf/protocol/<name>.yaml; recorded in the summary
    tag: str = "default"  # run folders live in <runs_dir>/<data.name>/<tag>/
    runs_dir: str = "results/runs"


CHOICES = {
    "model.pooling": POOLINGS,
    "model.head_activation": tuple(ACTIVATIONS),
    "trainer.schedule": SCHEDULES,
    "trainer.amp_dtype": ("fp16", "bf16"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "logger.name": ("none", "wandb"),
    "data.name": ("mini", "lra"),
    "data.pad_to": ("max", "batch"),
    "logger.mode": (None, "online", "offline"),
}
POSITIVE = ("task.num_classes", "task.max_len", "trainer.max_steps", "trainer.batch_size",
            "trainer.eval_every", "trainer.accumulate", "trainer.lr", "trainer.eps", "model.dim",
            "model.num_layers", "model.num_heads", "model.head_dim", "model.ffn_dim")
NON_NEGATIVE = ("trainer.warmup_steps", "trainer.weight_decay", "trainer.grad_clip",
                "data.num_workers")
# Keys that do not change what a run computes: left out of the run's fingerprint. (A kernels
# backend changes only the last bits: its tests hold it to the reference.)
NOT_FINGERPRINTED = ("logger", "trainer.resume", "trainer.progress", "trainer.device",
                     "data.root", "data.build_missing", "data.verify_checksums",
                     "data.num_workers", "runs_dir", "tag", "protocol", "attention.options.backend")


# numpy's global RNG takes seeds in [0, 2^32); torch and `random` take more.
SEED_RANGE = (0, 2**32 - 1)
# A tag is one folder under <runs_dir>/<data.name>/: no separator, no "." or "..", not hidden.
SAFE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,99}")


def _mra_blocks(max_len: int, options: Any) -> int:
    return -(-max_len // options.block_size)


# Attention budgets that an input of at most task.max_len tokens cannot use past a bound:
# (attention names, option, bound(max_len, options), what the bound is). Each module already
# computes the same result at the bound as above it (MRA chooses at most nb^2 pairs; Nystrom and
# SOFT take at most one landmark per token; Linformer caps proj_len at max_seq_len), so clamping
# changes no output; it makes the config, and so the run's fingerprint, say what is computed.
BUDGETS = (
    (("mra2", "mra2_s"), "block_per_row", _mra_blocks,
     "the number of blocks nb = ceil(task.max_len / block_size)"),
    (("nystrom", "nystrom_conv", "soft", "soft_conv"), "num_landmarks",
     lambda max_len, _: max_len, "one landmark per token, task.max_len"),
    (("linformer",), "proj_len", lambda max_len, _: max_len, "task.max_len"),
)


def _clamp_budgets(cfg: Config, options: Any) -> None:
    """Clamp attention budgets above what task.max_len can use, with one warning each.

    options: the attention's validated options dataclass (defaults filled in)."""
    for names, key, bound, what in BUDGETS:
        if cfg.attention.name not in names:
            continue
        value, limit = getattr(options, key), bound(cfg.task.max_len, options)
        if value > limit:
            log.warning("attention.options.%s=%d is more than %s = %d can use; clamped to %d "
                        "(the same computation)", key, value, what, limit, limit)
            cfg.attention.options[key] = limit


def schema_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, e.g. `trainer.lr` (attention.options are per attention)."""
    node = Config() if node is None else node
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            keys += schema_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean a or b?)' naming the options closest to `word`, or '' if none is close.
    A dotted key is matched whole, then by its last part (`lrr` finds `trainer.lr`)."""
    options = [str(o) for o in options]
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.8)
    if not close:
        leaf = word.rsplit(".", 1)[-1]
        by_leaf = {o.rsplit(".", 1)[-1]: o for o in options}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, by_leaf, n=3, cutoff=0.6)]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def unknown_key(key: str, valid: Iterable[str],
                listed: str = "every key is in lra/config.py") -> ConfigError:
    return ConfigError(f"unknown key {key}{did_you_mean(key, valid)}; {listed}")


def _get(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def load_config(raw: DictConfig) -> Config:
    """Merge Hydra's composed config onto the schema and validate every value."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except ConfigKeyError as err:  # a key the schema lacks, e.g. from a user's yaml file
        if err.full_key:
            raise unknown_key(err.full_key, schema_keys()) from None
        raise ConfigError(str(err).strip()) from None
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).strip()) from None
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            choices = ['null' if a is None else a for a in allowed]
            hint = did_you_mean(str(_get(cfg, key)), choices)
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not one of {', '.join(choices)}"
                              + hint)
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{key}={_get(cfg, key)!r} must be > 0")
    for key in NON_NEGATIVE:
        if not _get(cfg, key) >= 0:
            raise ConfigError(f"{key}={_get(cfg, key)!r} must be >= 0")
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigError(f"model.dropout={cfg.model.dropout!r} must be in [0, 1)")
    if len(cfg.trainer.betas) != 2 or not all(0 <= b < 1 for b in cfg.trainer.betas):
        raise ConfigError(f"trainer.betas={cfg.trainer.betas!r} must be two numbers in [0, 1)")
    for key in ("trainer.eval_batches", "trainer.num_threads"):
        value = _get(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value!r} must be >= 1 or null")
    if not SEED_RANGE[0] <= cfg.seed <= SEED_RANGE[1]:
        raise ConfigError(f"seed={cfg.seed} must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] "
                          "(the range numpy's RNG takes)")
    if not SAFE_TAG.fullmatch(cfg.tag):
        raise ConfigError(f"tag={cfg.tag!r} must be one folder name: up to 100 letters, digits "
                          "or _ . = + - (no '/', not starting with '.' or '-')")
    try:
        options = make_options(cfg.attention.name, **cfg.attention.options)
    except AttentionError as err:
        raise ConfigError(f"attention: {err}") from None
    _clamp_budgets(cfg, options)
    grid = cfg.attention.options.get("input_shape")
    if grid is not None:
        # A 2-D token order (MRA on images) must tile exactly the tokens the encoder passes.
        if cfg.model.pooling == "cls":
            raise ConfigError(f"attention.options.input_shape={list(grid)} needs "
                              "model.pooling=mean_over_max_len or mean: a CLS token would not "
                              "fit the grid")
        if math.prod(grid) != cfg.task.max_len:
            raise ConfigError(f"attention.options.input_shape={list(grid)} holds "
                              f"{math.prod(grid)} tokens but task.max_len={cfg.task.max_len}")
    return cfg


def fingerprint(cfg: Config, data_digest: str) -> str:
    """A short hash of everything that changes what a run computes (names its run folder): the
    settings, and the prepared data itself (`lra.data.manifest_digest`), so rebuilding a task
    differently never reuses an old run's results."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for key in NOT_FINGERPRINTED:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    tree["data_digest"] = data_digest
    blob = json.dumps(tree, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]
