"""The training protocols as presets: `+experiment=<protocol>/<task>` and `protocol=<name>` in a
sweep give the protocol's values, checked against tables written here from the notes on the
published code (../shared/notes/lra_tasks.md), and the learning-rate schedules they name."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from lra.config import load_config
from lra.schedules import build, lr_factor
from tests.conftest import ROOT
from tests.test_configs import ATTENTION_CONFIGS, CONF, TASKS, composed
from tests.test_protocol import lr_beta1_trace

# The original LRA protocol (JAX configs): dim / heads / layers / FFN, pooling, batch, peak lr,
# schedule, warmup, steps, weight decay, dropout. Retrieval takes Text's schedule (warmup 8000).
# Pathfinder's warmup is not in the table: the task's own (312) is kept; Path-X is Pathfinder's.
LRA_ORIGINAL = {
    "listops": (512, 8, 4, 1024, "cls", 32, 0.05, "rsqrt", 1000, 5000, 0.1, 0.1),
    "text": (256, 4, 4, 1024, "cls", 32, 0.05, "rsqrt", 8000, 20000, 0.1, 0.1),
    "retrieval": (128, 4, 4, 512, "cls", 32, 0.05, "rsqrt", 8000, 5000, 0.1, 0.1),
    "image": (128, 8, 1, 128, "cls", 256, 5e-4, "cosine", 175, 35000, 0.0, 0.3),
    "pathfinder": (32, 4, 4, 32, "mean", 512, 1e-3, "cosine", 312, 62400, 0.0, 0.1),
    "pathx": (32, 4, 4, 32, "mean", 512, 1e-3, "cosine", 312, 62400, 0.0, 0.1),
}


def values(cfg) -> tuple:
    m, t = cfg.model, cfg.trainer
    return (m.dim, m.num_heads, m.num_layers, m.ffn_dim, m.pooling, t.batch_size, t.lr,
            t.schedule, t.warmup_steps, t.max_steps, t.weight_decay, m.dropout)


def test_the_protocol_presets_cover_every_task():
    assert sorted(LRA_ORIGINAL) == TASKS


@pytest.mark.parametrize("task", sorted(LRA_ORIGINAL))
def test_lra_original_preset_has_the_original_values(task):
    cfg = load_config(composed(f"+experiment=lra_original/{task}"))
    assert cfg.task.name == task and cfg.protocol == "lra_original"
    assert values(cfg) == LRA_ORIGINAL[task]
    assert cfg.model.num_heads * cfg.model.head_dim == cfg.model.dim
    assert (tuple(cfg.trainer.betas), cfg.trainer.eps) == ((0.9, 0.98), 1e-9)  # Adam's


def test_lra_original_text_reads_the_original_1000_bytes():
    """The original config's max_length 1000, cut from the data prepared at 4,000; the MRA
    protocol keeps 4,096 and refuses longer data."""
    cfg = load_config(composed("+experiment=lra_original/text", "data=lra"))
    assert (cfg.task.max_len, cfg.data.truncate_to_max_len) == (1000, True)
    small = load_config(composed("task=text", "data=lra"))
    assert (small.task.max_len, small.data.truncate_to_max_len) == (4096, False)


@pytest.mark.parametrize("attention", ["softmax", "longformer"])
def test_lra_original_image_has_the_original_attention_dropout(attention):
    """0.2 on the attention probabilities for image (the JAX image config), 0.1 elsewhere, for
    the attentions with a dropout option."""
    for task, want in (("image", 0.2), ("listops", 0.1), ("pathfinder", 0.1)):
        cfg = load_config(composed("protocol=lra_original", f"task={task}",
                                   f"attention={attention}", "data=lra"))
        assert cfg.attention.options["dropout"] == want, task
    small = load_config(composed("task=image", f"attention={attention}", "data=lra"))
    assert small.attention.options["dropout"] == 0.1


def test_every_cell_with_an_attention_preset_validates_under_lra_original():
    """A cell that fails validation would stop `make lra-all PROTOCOL=lra_original` midway, as
    its CLS pooling once did with MRA's 2-D image grid. Cells of attentions without a per-task
    preset compose the protocol's files as softmax's do (small_protocol's cells: test_configs)."""
    presets = {a for a in ATTENTION_CONFIGS for t in TASKS
               if (CONF / "attention_task" / f"{a}_{t}.yaml").exists()}
    for attention in sorted(presets | {"softmax"}):
        for task in TASKS:
            cfg = load_config(composed("protocol=lra_original", f"task={task}",
                                       f"attention={attention}"))
            assert (cfg.task.name, cfg.attention.name) == (task, attention)


def test_protocol_in_a_sweep_picks_each_task_file():
    """`protocol=lra_original task=text` (as `make lra-all PROTOCOL=lra_original` runs each job)
    is `+experiment=lra_original/text`; trainer=smoke shortens it and keeps its optimiser."""
    a = composed("protocol=lra_original", "task=text")
    b = composed("+experiment=lra_original/text")
    assert OmegaConf.to_container(a) == OmegaConf.to_container(b)
    smoke = load_config(composed("protocol=lra_original", "task=text", "trainer=smoke"))
    assert (smoke.trainer.max_steps, smoke.trainer.warmup_steps) == (50, 5)
    assert (smoke.trainer.lr, smoke.model.dim, smoke.trainer.schedule) == (0.05, 256, "rsqrt")


def test_small_protocol_is_the_default_and_the_papers_run():
    """`+experiment=small_protocol/listops attention=mra2` is the MRA paper's ListOps run: the
    defaults (2 layers, dim 64, 2 x 32 heads, FFN 128, AdamW lr 1e-4, batch 32, warmup 1000,
    5000 steps)."""
    cfg = load_config(composed("+experiment=small_protocol/listops", "attention=mra2"))
    assert cfg.protocol == "small_protocol" and cfg.attention.name == "mra2"
    m, t = cfg.model, cfg.trainer
    assert (m.num_layers, m.dim, m.num_heads, m.head_dim, m.ffn_dim) == (2, 64, 2, 32, 128)
    assert (t.lr, tuple(t.betas), t.eps, t.weight_decay) == (1e-4, (0.9, 0.999), 1e-6, 0.0)
    assert (t.batch_size, t.warmup_steps, t.max_steps, t.schedule) == (32, 1000, 5000,
                                                                       "onecycle")
    default = load_config(composed("task=listops", "attention=mra2"))
    assert OmegaConf.structured(cfg) == OmegaConf.structured(default)


def test_cfg_job_prints_the_original_protocol():
    proc = subprocess.run([sys.executable, "-m", "lra.train", "+experiment=lra_original/listops",
                           "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert (cfg.model.dim, cfg.model.num_layers, cfg.model.pooling) == (512, 4, "cls")
    assert (cfg.trainer.lr, cfg.trainer.schedule, cfg.task.max_steps) == (0.05, "rsqrt", 5000)


def test_rsqrt_is_the_original_unnormalised_schedule():
    """lr = base * min(1, step / warmup) / sqrt(max(step, warmup)), with steps counted from 1."""
    warmup = 1000
    assert lr_factor("rsqrt", warmup - 1, warmup, 5000) == pytest.approx(1 / math.sqrt(1000))
    assert lr_factor("rsqrt", 3999, warmup, 5000) == pytest.approx(1 / math.sqrt(4000))
    assert lr_factor("rsqrt", 499, warmup, 5000) == pytest.approx(0.5 / math.sqrt(1000))


def test_cosine_and_linear_warm_up_then_decay_to_zero():
    for schedule in ("cosine", "linear"):
        assert lr_factor(schedule, 0, 10, 110) == pytest.approx(0.1)
        assert lr_factor(schedule, 9, 10, 110) == pytest.approx(1.0)
        assert lr_factor(schedule, 110, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine", 60, 10, 110) == pytest.approx(0.5)  # half way: cos(pi / 2)
    assert lr_factor("linear", 60, 10, 110) == pytest.approx(0.5)
    assert lr_factor("cosine", 35, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_schedule_edges_warmup_0_or_1_a_one_step_decay_and_steps_past_the_end():
    """Warmup 0 starts at the peak (rsqrt too: 1 / sqrt(1)); a decay phase of one step still
    decays; steps past `total` stay at 0; OneCycleLR with one warmup step (torch's pct_start =
    1 / total divides by zero) decays from the peak at once: step s is (s + 1) / total of the way
    from the peak to peak / 25e4."""
    for schedule in ("rsqrt", "cosine", "linear"):
        assert lr_factor(schedule, 0, 0, 10) == 1.0
    assert lr_factor("linear", 10, 10, 11) == 1.0 and lr_factor("linear", 11, 10, 11) == 0.0
    assert lr_factor("cosine", 11, 10, 11) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine", 120, 10, 110) == pytest.approx(0.0, abs=1e-12)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    build(opt, "linear", 0, 10)
    assert opt.param_groups[0]["lr"] == 1e-3
    lrs = [lr for lr, _ in lr_beta1_trace(opt, build(opt, "onecycle", 1, 10), 10)]
    low = 1e-3 / 25e4
    assert lrs == pytest.approx([1e-3 - (s + 1) / 10 * (1e-3 - low) for s in range(10)])


def test_an_unknown_schedule_fails_when_the_scheduler_is_built():
    """Not at the first step after the warmup, thousands of steps into a run."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError) as err:
        build(opt, "cosin", 1000, 5000)
    assert str(err.value) == \
        "trainer.schedule='cosin' is not one of onecycle, linear, rsqrt, cosine"
