"""The config tree: every attention and task composes, validates and trains a few steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from attention_zoo import list_attentions
from lra.config import ConfigError, load_config
from lra.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
ATTENTION_CONFIGS = sorted(p.stem for p in (CONF / "attention").glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["runs_dir=unused", "data.root=unused", *overrides])


def test_every_registered_attention_has_a_config_and_back():
    assert ATTENTION_CONFIGS == list_attentions()


DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


@pytest.mark.parametrize("group, names", [
    ("attention_task", {f"{a}_{t}" for a in ATTENTION_CONFIGS for t in TASKS}),
    ("attention_data", {f"{a}_{d}" for a in ATTENTION_CONFIGS for d in DATA}),
    ("protocol_attention_task", {f"{p}_{a}_{t}" for p in ("lra_original", "small_protocol")
                                 for a in ATTENTION_CONFIGS for t in TASKS})])
def test_every_attention_pair_preset_names_a_real_pair(group, names):
    """conf/config.yaml picks these files by interpolated names: one that matches no real
    combination would never apply."""
    for path in (CONF / group).glob("*.yaml"):
        assert path.stem in names, path


@pytest.mark.parametrize("attention", ["softmax", "longformer"])
def test_attention_dropout_is_off_on_the_mini_suite_only(attention):
    mini = load_config(composed(f"attention={attention}", "data=mini"))
    assert mini.attention.options["dropout"] == 0
    lra = load_config(composed(f"attention={attention}", "data=lra", "data.build_missing=false"))
    assert lra.attention.options["dropout"] == 0.1


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("attention", ATTENTION_CONFIGS)
def test_every_attention_task_pair_validates(attention, task):
    cfg = load_config(composed(f"task={task}", f"attention={attention}"))
    assert cfg.attention.name == attention and cfg.task.name == task


def test_task_presets_apply_and_command_line_wins():
    cfg = load_config(composed("task=image", "attention=mra2"))
    assert cfg.attention.options["input_shape"] == [32, 32]
    assert cfg.attention.options["initial_prior_first_n_blocks"] == 1
    cfg = load_config(composed("task=text", "attention=mra2_s",
                               "attention.options.initial_prior_diagonal_n_blocks=3"))
    assert cfg.attention.options["initial_prior_diagonal_n_blocks"] == 3
    assert load_config(composed("task=listops", "attention=yoso")).attention.options["tau"] == 11


@pytest.mark.parametrize("attention", ATTENTION_CONFIGS)
def test_every_attention_trains_on_listops(attention, tiny_data_root, tmp_path):
    """The acceptance run `task=listops attention=<name> data=mini`, shortened to 3 steps."""
    raw = composed(f"attention={attention}", "task.max_len=64", "trainer.max_steps=3",
                   "trainer.eval_every=3", "trainer.batch_size=8", "trainer.progress=false",
                   "data.build_missing=false")
    raw.data.root = str(tiny_data_root)
    raw.runs_dir = str(tmp_path)
    summary = train(load_config(raw))
    assert summary["steps"] == 3 and summary["attention"] == attention
    assert json.loads(Path(summary["run_dir"], "summary.json").read_text())["steps"] == 3


def test_wandb_logger_runs_offline_without_api_key(tiny_data_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    raw = composed("logger=wandb", "task.max_len=64", "trainer.max_steps=2",
                   "trainer.eval_every=2", "trainer.batch_size=8", "trainer.progress=false",
                   "data.build_missing=false")
    raw.data.root = str(tiny_data_root)
    raw.runs_dir = str(tmp_path)
    summary = train(load_config(raw))
    offline = list(Path(summary["run_dir"], "wandb").glob("offline-run-*"))
    assert len(offline) == 1, os.listdir(Path(summary["run_dir"], "wandb"))


MRA_BOUND = "the number of blocks nb = ceil(task.max_len / block_size)"


@pytest.mark.parametrize(("attention", "key", "value", "limit", "bound"), [
    ("mra2", "block_per_row", 100000, 2048 // 32, MRA_BOUND),  # nb blocks of 32 in 2048
    ("mra2_s", "block_per_row", 65, 64, MRA_BOUND),
    ("nystrom", "num_landmarks", 4096, 2048, "one landmark per token, task.max_len"),
    ("soft_conv", "num_landmarks", 5000, 2048, "one landmark per token, task.max_len"),
    ("linformer", "proj_len", 3000, 2048, "task.max_len"),
])
def test_budget_above_max_len_is_clamped_with_a_warning(attention, key, value, limit, bound,
                                                        caplog):
    """A budget the longest input cannot use is clamped (the module computes the same at the
    bound), with one warning naming the key, so the fingerprint says what is computed."""
    from lra.config import fingerprint

    over = load_config(composed("task=listops", f"attention={attention}",
                                f"attention.options.{key}={value}"))
    assert over.attention.options[key] == limit
    [warning] = [r.getMessage() for r in caplog.records if r.name == "lra.config"]
    assert warning == (f"attention.options.{key}={value} is more than {bound} = {limit} can use; "
                       f"clamped to {limit} (the same computation)")
    caplog.clear()
    at = load_config(composed("task=listops", f"attention={attention}",
                              f"attention.options.{key}={limit}"))
    assert not caplog.records
    assert fingerprint(over, "d") == fingerprint(at, "d")


@pytest.mark.parametrize("override, message", [
    ("model.pooling=cls", "attention.options.input_shape=[32, 32] needs model.pooling="
     "mean_over_max_len or mean: a CLS token would not fit the grid"),
    ("task.max_len=1000", "attention.options.input_shape=[32, 32] holds 1024 tokens but "
     "task.max_len=1000"),
])
def test_a_two_dimensional_token_order_must_tile_the_encoders_tokens(override, message):
    """MRA on images orders tokens by 2-D blocks (input_shape [32, 32]): with a CLS token, or a
    length other than 32 * 32, no such order exists."""
    assert load_config(composed("task=image", "attention=mra2")).attention.options[
        "input_shape"] == [32, 32]
    with pytest.raises(ConfigError) as err:
        load_config(composed("task=image", "attention=mra2", override))
    assert str(err.value) == message


def test_budget_within_max_len_is_kept(caplog):
    cfg = load_config(composed("task=listops", "attention=mra2",
                               "attention.options.block_per_row=64"))
    assert cfg.attention.options["block_per_row"] == 64 and not caplog.records


@pytest.mark.parametrize("task", TASKS)
def test_protocol_effects_reads_the_protocol_that_training_runs(task):
    """tools/protocol_effects.py reads the task files itself; the files name only what differs
    from TaskConfig's defaults, so the tool must fill those in as composition does."""
    import importlib.util

    path = CONF.parent / "tools" / "protocol_effects.py"
    spec = importlib.util.spec_from_file_location("protocol_effects", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = composed(f"task={task}")
    read = tool.task_config(task)
    assert (read.warmup_steps, read.max_steps, read.max_len) == (
        cfg.trainer.warmup_steps, cfg.trainer.max_steps, cfg.task.max_len)
