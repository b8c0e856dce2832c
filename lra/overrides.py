"""Check `lra.train`'s command-line overrides against `conf/` and the schema before Hydra runs.

Hydra answers a typo (`trainer.lrr=1`, `attention=mrb2`) with several lines that do not say
what was meant. This check answers with one line naming the override and the closest valid names
(difflib), before anything is composed. What it cannot judge here (Hydra's own `hydra.*` keys and
groups, glob and range sweeps) it leaves to Hydra and to `lra.config.load_config`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException
from omegaconf import OmegaConf

from attention_zoo import AttentionError, options_class

from .config import ConfigError, did_you_mean, schema_keys, unknown_key

CONF = Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list[str]:
    """The options of a config group: the yaml files below conf/<group>/, nested ones by their
    path (`small_protocol/listops` for conf/experiment/small_protocol/listops.yaml)."""
    folder = CONF / group
    return sorted(p.relative_to(folder).with_suffix("").as_posix()
                  for p in folder.rglob("*.yaml"))


def _values(override: Override) -> list[str]:
    """The values an override names; empty where they are not a plain list (glob, range)."""
    if override.value_type == ValueType.ELEMENT:
        return [str(override.value())]
    if override.value_type in (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP):
        return list(override.sweep_string_iterator())
    return []


def _check_group(override: Override) -> None:
    group = override.key_or_group
    options = group_options(group)
    for value in _values(override):
        if value not in options:
            raise ConfigError(f"{group}={value}: there is no conf/{group}/{value}.yaml"
                              f"{did_you_mean(value, options)}; options: {', '.join(options)}")


def _check_option(override: Override, attentions: list[str]) -> None:
    """`attention.options.<name>`: a field of each chosen attention's options dataclass. Every
    field is in the composed config (at its default unless the yaml sets it), so a plain override
    changes it and a `+` one has nothing to add."""
    key = override.key_or_group
    name = key.split(".", 2)[2].split(".")[0]
    value = override.input_line.split("=", 1)[1] if override.input_line else "..."
    for attention in attentions:
        try:
            fields = [f.name for f in dataclasses.fields(options_class(attention))]
        except AttentionError:
            return  # an unknown attention name is reported by its group check
        if name not in fields:
            raise ConfigError(f"{key}: attention {attention!r} has no option {name}"
                              f"{did_you_mean(name, fields)}; its options: "
                              f"{', '.join(fields) or '(none)'}")
        if override.is_add():
            yaml = (CONF / "attention" / f"{attention}.yaml").relative_to(CONF.parent)
            raise ConfigError(f"+{key}: {yaml} already sets it; change it without the +: "
                              f"{key}={value} (every option is set, to its default "
                              f"unless the yaml says otherwise)")


def _default_attention() -> str:
    for entry in OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").defaults):
        if isinstance(entry, dict) and "attention" in entry:
            return entry["attention"]
    raise AssertionError("conf/config.yaml names no default attention")


def check_overrides(argv: list[str]) -> None:
    """Raise ConfigError for an override that names no config option or schema key."""
    args, _ = get_args_parser().parse_known_args(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return  # a syntax error: Hydra reports it, with the position
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    attentions = None  # the attentions whose options may be set; None = set by an experiment
    for override in overrides:
        if override.key_or_group == "attention":
            attentions = (attentions or []) + _values(override)
    if attentions is None and not any(o.key_or_group == "experiment" for o in overrides):
        attentions = [_default_attention()]
    keys = schema_keys()
    for override in overrides:
        key = override.key_or_group
        if key.split(".")[0].split("/")[0] == "hydra" or override.is_delete():
            continue  # Hydra's own settings, and deletions, are Hydra's to check
        if key in groups:
            _check_group(override)
        elif key.startswith("attention.options."):
            if attentions is not None:
                _check_option(override, attentions)
        elif not any(key == k or key.startswith(k + ".") for k in keys):
            raise unknown_key(key, keys)
