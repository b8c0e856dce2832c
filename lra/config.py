"""The typed config tree behind `conf/`: the dataclasses are the one source of every default.

`register_schemas` (run on import) puts the defaults of `Config` and of every attention's options
dataclass in Hydra's ConfigStore, and conf/config.yaml composes them first, so a YAML file under
conf/ holds only what differs from them. `load_config` then types the composed tree by these
dataclasses (a wrong key or type fails with its full key named), each dataclass checks its own
values in `__post_init__` (a bad value fails with the key, the value and the allowed range), and
what is left here are the checks that span sections and the run's fingerprint. Everything fails
before any data is read or any step is trained.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import math
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from attention_zoo import AttentionError, list_attentions, make_options, options_class
from attention_zoo.registry import Choice

from .checks import (
    ConfigError,
    at_least_one_or_null,
    choice,
    did_you_mean,
    non_negative,
    not_one_of,
    positive,
)
from .data import DataConfig
from .model import AttentionSpec, ModelConfig
from .schedules import Schedule

log = logging.getLogger("lra.config")


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

    def __post_init__(self) -> None:
        positive("task", self, "num_classes", "max_len")


class AmpDtype(Choice):
    fp16 = enum.auto()  # with a gradient scaler (the published harness)
    bf16 = enum.auto()


class Device(Choice):
    auto = enum.auto()  # CUDA when present
    cpu = enum.auto()
    cuda = enum.auto()


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
    schedule: Schedule = Schedule.onecycle
    grad_clip: float = 0.0  # max gradient norm; 0 (the published harness) disables clipping
    # Micro-batches per optimiser step: batch_size stays the global batch, each process runs
    # batch_size / (processes * accumulate) examples at a time, so a small GPU runs the protocol.
    accumulate: int = 1
    amp: bool = True  # mixed precision on CUDA (model.attention_fp32 keeps attention in fp32)
    amp_dtype: AmpDtype = AmpDtype.fp16
    device: Device = Device.auto
    resume: bool = True  # pick up a run folder's last checkpoint; skip a finished run
    progress: bool = True  # tqdm bar
    num_threads: int | None = None  # torch CPU threads (None = torch's default)

    def __post_init__(self) -> None:
        positive("trainer", self, "max_steps", "batch_size", "eval_every", "accumulate", "lr",
                 "eps")
        non_negative("trainer", self, "warmup_steps", "weight_decay", "grad_clip")
        at_least_one_or_null("trainer", self, "eval_batches", "num_threads")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"trainer.betas={self.betas!r} must be two numbers in [0, 1)")
        choice("trainer", self, schedule=Schedule, amp_dtype=AmpDtype, device=Device)


class LoggerName(Choice):
    none = enum.auto()
    wandb = enum.auto()


class LoggerMode(Choice):
    online = enum.auto()
    offline = enum.auto()


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none
    project: str = "lra-zoo"
    group: str | None = None  # defaults to the sweep's tag
    mode: LoggerMode | None = None  # None = online only if an API key is configured

    def __post_init__(self) -> None:
        choice("logger", self, nullable=("mode",), name=LoggerName, mode=LoggerMode)


# numpy's global RNG takes seeds in [0, 2^32); torch and `random` take more.
SEED_RANGE = (0, 2**32 - 1)
# A tag is one folder under <runs_dir>/<data.name>/: no separator, no "." or "..", not hidden.
SAFE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,99}")


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

    def __post_init__(self) -> None:
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ConfigError(f"seed={self.seed} must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] "
                              "(the range numpy's RNG takes)")
        if not SAFE_TAG.fullmatch(self.tag):
            raise ConfigError(f"tag={self.tag!r} must be one folder name: up to 100 letters, "
                              "digits or _ . = + - (no '/', not starting with '.' or '-')")


def _defaults(schema: Any) -> dict:
    """A dataclass's defaults as plain values (enumerations as their strings)."""
    return OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)


def register_schemas() -> None:
    """Store `lra_schema` (every key of Config at its default) and `attention_schema/<name>`
    (the attention's name and every option at its default) in Hydra's ConfigStore; conf/config.yaml
    composes them under the files of conf/. (The xformers `hydra_helper` pattern: one store entry
    per registered attention, so a new attention needs no YAML to have its options.)

    They are stored as plain values: `load_config` types the composed tree, so that a wrong key or
    value in a user's own YAML file fails with the same one-line message, naming it, as on the
    command line (a typed composition answers it with Hydra's multi-line error, and exit 1)."""
    store = ConfigStore.instance()
    store.store(name="lra_schema", node=_defaults(Config))
    for name in list_attentions():
        store.store(group="attention_schema", name=name,
                    node={"name": name, "options": _defaults(options_class(name))})


register_schemas()


# Keys that do not change what a run computes: left out of the run's fingerprint. (A kernels
# backend changes only the last bits: its tests hold it to the reference.)
NOT_FINGERPRINTED = ("logger", "trainer.resume", "trainer.progress", "trainer.device",
                     "data.root", "data.build_missing", "data.verify_checksums",
                     "data.num_workers", "runs_dir", "tag", "protocol", "attention.options.backend")


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


def unknown_key(key: str, valid: Iterable[str],
                listed: str = "every key is in lra/config.py") -> ConfigError:
    return ConfigError(f"unknown key {key}{did_you_mean(key, valid)}; {listed}")


def _one_line(err: OmegaConfBaseException) -> ConfigError:
    """OmegaConf's message, keyed, without the lines it appends on its own types
    (`full_key: ...`, `object_type=TrainerConfig`): trainer.max_steps: Value 'many' of type ..."""
    message = (err.msg or str(err)).strip().splitlines()[0]
    return ConfigError(f"{err.full_key}: {message}" if err.full_key else message)


def _invalid(err: ValidationError, raw: DictConfig) -> ConfigError:
    """A value of the wrong type for its key; for an enumeration, the list of its values."""
    kind: Any = Config
    for part in err.full_key.split("."):  # the key's annotated type, e.g. Pooling
        kind = typing.get_type_hints(kind).get(part) if dataclasses.is_dataclass(kind) else None
    enums = [t for t in typing.get_args(kind) or (kind,)  # `X | None` -> (X, NoneType)
             if isinstance(t, type) and issubclass(t, Enum)]
    if not enums:
        return _one_line(err)
    value = OmegaConf.select(raw, err.full_key, throw_on_missing=False)
    return not_one_of(err.full_key, value, enums[0], nullable=type(None) in typing.get_args(kind))


def load_config(raw: DictConfig) -> Config:
    """Type Hydra's composed config by the schema (each dataclass checks its own values as it is
    built), fill in every attention option, and check what spans sections."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except ConfigKeyError as err:  # a key the schema lacks, e.g. from a user's yaml file
        if err.full_key:
            raise unknown_key(err.full_key, schema_keys()) from None
        raise _one_line(err) from None
    except ValidationError as err:
        raise (_invalid(err, raw) if err.full_key else _one_line(err)) from None
    except OmegaConfBaseException as err:  # e.g. an interpolation to a key that does not exist
        raise _one_line(err) from None
    try:
        options = make_options(cfg.attention.name, **cfg.attention.options)
    except AttentionError as err:
        raise ConfigError(f"attention: {err}") from None
    cfg.attention.options = dataclasses.asdict(options)  # every option, with its default
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
    # Enumerations as their plain strings, as the fingerprints of runs before them were taken.
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    for key in NOT_FINGERPRINTED:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    tree["data_digest"] = data_digest
    blob = json.dumps(tree, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]
