"""The dataclasses are the one source of every default: no file of conf/ restates one, an attention
composed by Hydra is the attention `build_attention` makes with no options, and each dataclass
checks its own values wherever it is built."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from omegaconf import OmegaConf

from attention_zoo import AttentionError, build_attention, list_attentions, make_options
from attention_zoo import options_class as attention_options
from lra.config import (
    ConfigError,
    LoggerConfig,
    TaskConfig,
    TrainerConfig,
    fingerprint,
    load_config,
)
from lra.data import DataConfig
from lra.model import ModelConfig, Pooling
from tests.test_configs import CONF, TASKS, composed

# conf/<group>/*.yaml -> the dataclass its keys belong to.
GROUP_SCHEMAS = {"trainer": TrainerConfig, "model": ModelConfig, "logger": LoggerConfig,
                 "data": DataConfig, "task": TaskConfig}


def restated_defaults(values: dict, defaults: object) -> list[str]:
    """The keys of `values` whose value equals the field's default in `defaults` (a dataclass
    instance, or a dataclass whose required fields have no default)."""
    if isinstance(defaults, type):
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING
                             else f.default) for f in dataclasses.fields(defaults)}
        defaults = {k: v for k, v in defaults.items() if v not in (dataclasses.MISSING, "???")}
    else:
        defaults = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
    return [key for key, value in values.items()
            if key != "defaults" and key in defaults and value == defaults[key]]


@pytest.mark.parametrize("path", sorted((CONF / "attention").glob("*.yaml")), ids=lambda p: p.stem)
def test_no_attention_yaml_restates_a_default(path):
    content = OmegaConf.to_container(OmegaConf.load(path)) or {}
    restated = restated_defaults(content.get("options") or {}, make_options(path.stem))
    restated += ["name"] if content.get("name") == path.stem else []  # attention_schema's name
    assert not restated, f"{path.relative_to(CONF.parent)} restates the default of {restated}"


@pytest.mark.parametrize("path", sorted(path for group in GROUP_SCHEMAS
                                        for path in (CONF / group).glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_group_yaml_restates_a_default(path):
    content = OmegaConf.to_container(OmegaConf.load(path)) or {}
    schema = GROUP_SCHEMAS[path.parent.name]
    restated = restated_defaults(content, schema if schema is TaskConfig else schema())
    assert not restated, f"{path.relative_to(CONF.parent)} restates the default of {restated}"


@pytest.mark.parametrize("name", list_attentions())
def test_hydra_builds_the_attention_that_build_attention_builds(name):
    """`attention=<name>` through Hydra and load_config, without the per-task presets (the
    protocol's data, so no per-data preset either), against `build_attention(name)` with no
    options: the same options dataclass with the same values."""
    raw = composed(f"attention={name}", "~attention_task", "data=lra")
    assert set(raw.attention.options) == {f.name for f in dataclasses.fields(
        attention_options(name))}, "every option is in the composed config, to override"
    cfg = load_config(raw)
    shape = {"num_heads": cfg.model.num_heads, "head_dim": cfg.model.head_dim,
             "max_seq_len": cfg.task.max_len}
    through_hydra = build_attention(cfg.attention.name, **shape, **cfg.attention.options)
    plain = build_attention(name, **shape)
    assert type(through_hydra.options) is type(plain.options)
    assert through_hydra.options == plain.options


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("variant, base", [("yoso_conv", "yoso"), ("mra2_s", "mra2")])
def test_a_variant_shares_its_base_per_task_settings(variant, base, task):
    """yoso_conv takes yoso's tau on every task; mra2_s takes mra2's grid order, and its priors
    except on image and pathfinder, where the paper's differ."""
    options = {m: load_config(composed(f"task={task}", f"attention={m}")).attention.options
               for m in (variant, base)}
    keys = ("tau",) if base == "yoso" else ("input_shape",)
    if base == "mra2" and task not in ("image", "pathfinder"):
        keys += ("initial_prior_first_n_blocks", "initial_prior_diagonal_n_blocks")
    assert {k: options[variant][k] for k in keys} == {k: options[base][k] for k in keys}


def test_a_dataclass_checks_its_values_wherever_it_is_built():
    with pytest.raises(ConfigError, match=r"^trainer.lr=-1 must be > 0$"):
        TrainerConfig(lr=-1)
    with pytest.raises(ConfigError, match=r"trainer.num_threads=0 must be >= 1 or null"):
        TrainerConfig(num_threads=0)
    with pytest.raises(ConfigError, match=r"model.pooling='maen' is not one of mean_over_max_len, "
                                          r"mean, cls \(did you mean mean\?\)"):
        ModelConfig(pooling="maen")
    with pytest.raises(ConfigError, match=r"logger.mode='sometimes' is not one of null, online, "
                                          r"offline"):
        LoggerConfig(mode="sometimes")
    with pytest.raises(AttentionError, match=r"yoso: hash must be one of hadamard, gaussian, "
                                             r"got 'simhash'"):
        make_options("yoso", hash="simhash")
    assert ModelConfig(pooling="cls").pooling is Pooling.cls  # a plain string becomes the member
    assert TrainerConfig().max_steps == "${task.max_steps}"  # unresolved defaults wait for values


def test_a_wrong_value_in_a_yaml_file_is_named_with_its_choices():
    raw = composed()
    raw.model.pooling = "maen"  # as a yaml file of the user's own would set it
    with pytest.raises(ConfigError, match=r"^model.pooling='maen' is not one of mean_over_max_len, "
                                          r"mean, cls \(did you mean mean\?\)$"):
        load_config(raw)
    raw = composed("attention=yoso")
    raw.attention.options.redraw = "never"
    with pytest.raises(ConfigError, match=r"attention: yoso: redraw must be one of every_forward, "
                                          r"training_steps, got 'never'"):
        load_config(raw)


def test_the_fingerprint_takes_an_enumeration_as_its_plain_string():
    """Run folders named before the enumerations existed keep their names."""
    cfg = load_config(composed("attention=performer", "model.pooling=cls"))
    digest = fingerprint(cfg, "d")
    assert cfg.model.pooling is Pooling.cls
    plain = copy.deepcopy(cfg)
    plain.model.pooling = "cls"
    plain.attention.options["feature_map"] = "positive"
    assert fingerprint(plain, "d") == digest
