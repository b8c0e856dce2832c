"""The dataclasses are the one source of every default: no file of conf/ restates one, an attention
composed by Hydra is the attention `build_attention` makes with no options, and each dataclass
checks its own values wherever it is built."""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf, open_dict

from attention_zoo import AttentionError, build_attention, list_attentions, make_options
from attention_zoo import options_class as attention_options
from lra.config import (
    Config,
    ConfigError,
    LoggerConfig,
    TaskConfig,
    TrainerConfig,
    fingerprint,
    load_config,
    register_schemas,
    schema_keys,
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


def plain(value):
    """A default as the store holds it: an enumeration as its name, a tuple as a list."""
    if isinstance(value, enum.Enum):
        return value.name
    return list(value) if isinstance(value, tuple) else value


def field_default(schema: type, dotted: str):
    """The default of a dotted key, read from the dataclass fields themselves."""
    for part in dotted.split("."):
        f = {f.name: f for f in dataclasses.fields(schema)}[part]
        schema = f.default_factory
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return plain(value)


def test_the_store_holds_every_default_of_the_schema_and_of_every_attention(monkeypatch):
    """What conf/config.yaml composes first: lra_schema (every key of Config at its dataclass
    default) and attention_schema/<name> (the name, every option at its default). The store is
    filled at import; here it is emptied (for this test only) and filled again, so that the test
    holds register_schemas itself and not what the import left."""
    store = ConfigStore.instance()
    monkeypatch.setattr(store, "repo", {})
    register_schemas()
    schema = OmegaConf.to_container(store.load("lra_schema.yaml").node)
    for key in schema_keys():
        stored = functools.reduce(dict.__getitem__, key.split("."), schema)
        assert stored == field_default(Config, key), key
    for name in list_attentions():
        stored = OmegaConf.to_container(store.load(f"attention_schema/{name}.yaml").node)
        options = make_options(name)
        assert stored == {"name": name, "options": {
            f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options)}}


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


FOLDER_RULE = ("must be one folder name: up to 100 letters, digits or _ . = + - (no '/', not "
               "starting with '.' or '-')")
TASK = {"name": "t", "num_classes": 2, "max_len": 8}


@pytest.mark.parametrize("schema, values, message", [
    (TaskConfig, {**TASK, "num_classes": 0}, "task.num_classes=0 must be > 0"),
    (TaskConfig, {**TASK, "max_len": 0}, "task.max_len=0 must be > 0"),
    *[(TrainerConfig, {key: 0}, f"trainer.{key}=0 must be > 0")
      for key in ("max_steps", "batch_size", "eval_every", "accumulate", "lr", "eps")],
    *[(TrainerConfig, {key: -1}, f"trainer.{key}=-1 must be >= 0")
      for key in ("warmup_steps", "weight_decay", "grad_clip")],
    *[(TrainerConfig, {key: 0}, f"trainer.{key}=0 must be >= 1 or null")
      for key in ("eval_batches", "num_threads")],
    *[(TrainerConfig, {"betas": betas}, f"trainer.betas={betas!r} must be two numbers in [0, 1)")
      for betas in ([0.9], [0.9, 0.99, 0.999], [0.9, 1.0], [-0.1, 0.999])],
    (TrainerConfig, {"schedule": "cyclic"},
     "trainer.schedule='cyclic' is not one of onecycle, linear, rsqrt, cosine"),
    (TrainerConfig, {"amp_dtype": "fp8"}, "trainer.amp_dtype='fp8' is not one of fp16, bf16"),
    (TrainerConfig, {"device": "tpu"},
     "trainer.device='tpu' is not one of auto, cpu, cuda (did you mean cpu?)"),
    (LoggerConfig, {"name": "mlflow"}, "logger.name='mlflow' is not one of none, wandb"),
    (Config, {"seed": -1}, "seed=-1 must be in [0, 4294967295] (the range numpy's RNG takes)"),
    (Config, {"seed": 2**32},
     "seed=4294967296 must be in [0, 4294967295] (the range numpy's RNG takes)"),
    (Config, {"tag": ".hidden"}, f"tag='.hidden' {FOLDER_RULE}"),
], ids=lambda x: x.__name__ if isinstance(x, type) else "-".join(x) if isinstance(x, dict)
   else "")  # plain ids: a message in an id is matched by -k (e.g. "not wandb")
def test_every_checked_value_is_refused_with_its_key_and_rule(schema, values, message):
    with pytest.raises(ConfigError) as err:
        schema(**values)
    assert str(err.value) == message


def test_the_edges_of_each_range_are_accepted():
    assert TrainerConfig(betas=[0.0, 0.999], warmup_steps=0, weight_decay=0, grad_clip=0,
                         eval_batches=1, num_threads=1).betas == [0.0, 0.999]
    assert TrainerConfig(eval_batches=None, num_threads=None).eval_batches is None
    assert Config(seed=2**32 - 1).seed == 2**32 - 1
    assert TaskConfig(name="t", num_classes=1, max_len=1).max_len == 1


@pytest.mark.parametrize("override, message", [
    ("trainer.max_steps=many",
     "trainer.max_steps: Value 'many' of type 'str' could not be converted to Integer"),
    ("trainer.betas=[0.9,fast]",
     "trainer.betas[1]: Value 'fast' of type 'str' could not be converted to Float"),
    ("trainer.lr=${nope}", "trainer.lr: Interpolation key 'nope' not found"),
])
def test_a_value_omegaconf_cannot_type_is_one_line_naming_its_key(override, message):
    """OmegaConf's own message, keyed, without the lines it adds about its types."""
    with pytest.raises(ConfigError) as err:
        load_config(composed(override))
    assert str(err.value) == message


def test_a_wrong_value_in_a_yaml_file_is_named_with_its_choices():
    raw = composed()
    raw.model.pooling = "maen"  # as a yaml file of the user's own would set it
    with pytest.raises(ConfigError, match=r"^model.pooling='maen' is not one of mean_over_max_len, "
                                          r"mean, cls \(did you mean mean\?\)$"):
        load_config(raw)
    raw = composed()
    raw.logger.mode = "sometimes"  # an enumeration that may be null says so
    with pytest.raises(ConfigError, match=r"^logger.mode='sometimes' is not one of null, online, "
                                          r"offline$"):
        load_config(raw)
    raw = composed()
    with open_dict(raw):
        raw.trainer.lrr = 1e-3  # a key the schema lacks, from the user's own yaml file
    with pytest.raises(ConfigError, match=r"^unknown key trainer.lrr \(did you mean "
                                          r"trainer.lr\?\); every key is in lra/config.py$"):
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
