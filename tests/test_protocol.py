"""The training protocol of the published MRA harness (mlpen/mra-attention, old_code/LRA), which
our defaults follow: its model (pooling, head) through an independent re-implementation written
here, its OneCycleLR schedule, and its AMP choices."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lra.config import TrainerConfig
from lra.model import AttentionSpec, Classifier, ModelConfig
from lra.schedules import build as build_scheduler
from lra.train import amp_dtype
from tests.conftest import ROOT

VOCAB, MAX_LEN, CLASSES = 20, 64, 5


def harness_logits(w: dict[str, torch.Tensor], tokens, mask, *, heads: int, layers: int):
    """The harness's ModelForSC in eval mode, written from its description: word + position
    embeddings; pre-LN blocks x + W_o softmax(q k^T / sqrt(d) - 1e6 (1 - mask)) v, then
    x + MLP(LN(x)) with GELU; LN(x) * mask; the mean over all (padded) positions; Linear, ReLU,
    Linear. tokens, mask: (batch, MAX_LEN), padded to the task's length as its data was."""
    m = mask.to(torch.float32)
    x = w["word"][tokens] + w["pos"][: tokens.shape[1]]  # (batch, seq, dim)
    batch, seq, dim = x.shape
    for i in range(layers):
        p = f"b{i}."
        h = F.layer_norm(x, (dim,), w[p + "ln1.w"], w[p + "ln1.b"])

        def split(t):  # (batch, seq, heads * d) -> (batch, heads, seq, d)
            return t.reshape(batch, seq, heads, -1).transpose(1, 2)

        q, k, v = (split(F.linear(h, w[p + n + ".w"], w[p + n + ".b"])) for n in "qkv")
        dot = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) - 1e6 * (1 - m[:, None, None])
        att = (dot.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, -1)
        x = x + F.linear(att, w[p + "o.w"], w[p + "o.b"])
        h = F.layer_norm(x, (dim,), w[p + "ln2.w"], w[p + "ln2.b"])
        h = F.linear(F.gelu(F.linear(h, w[p + "f1.w"], w[p + "f1.b"])), w[p + "f2.w"],
                     w[p + "f2.b"])
        x = x + h
    x = F.layer_norm(x, (dim,), w["ln.w"], w["ln.b"]) * m[..., None]
    pooled = x.mean(1)  # over every position of the padded input
    hidden = F.relu(F.linear(pooled, w["h1.w"], w["h1.b"]))
    return F.linear(hidden, w["h2.w"], w["h2.b"])


def harness_weights(model: Classifier) -> dict[str, torch.Tensor]:
    """Our parameters under the harness's names (its q, k, v are three Linears; ours one)."""
    enc, sd = model.encoder, model.state_dict()
    w = {"word": enc.tokens.weight, "pos": enc.positions.weight, "ln.w": enc.norm.weight,
         "ln.b": enc.norm.bias, "h1.w": sd["head.0.weight"], "h1.b": sd["head.0.bias"],
         "h2.w": sd["head.2.weight"], "h2.b": sd["head.2.bias"]}
    for i, block in enumerate(enc.blocks):
        p = f"b{i}."
        for name, part in zip("qkv", block.attn.qkv.weight.chunk(3), strict=True):
            w[p + name + ".w"] = part
        for name, part in zip("qkv", block.attn.qkv.bias.chunk(3), strict=True):
            w[p + name + ".b"] = part
        w |= {p + "o.w": block.attn.out.weight, p + "o.b": block.attn.out.bias,
              p + "ln1.w": block.norm1.weight, p + "ln1.b": block.norm1.bias,
              p + "ln2.w": block.norm2.weight, p + "ln2.b": block.norm2.bias,
              p + "f1.w": block.ffn[0].weight, p + "f1.b": block.ffn[0].bias,
              p + "f2.w": block.ffn[3].weight, p + "f2.b": block.ffn[3].bias}
    return w


@torch.no_grad()
def test_default_model_gives_the_harness_logits():
    """Our default encoder (pooling mean_over_max_len, ReLU head) with its weights mapped into
    the harness model: the same logits to 1e-6, for inputs padded to the task's length (as the
    harness's data) and for the same inputs padded only to the batch's longest (mini data)."""
    torch.manual_seed(0)
    cfg = ModelConfig()
    model = Classifier(cfg, AttentionSpec("softmax"), vocab_size=VOCAB, max_len=MAX_LEN,
                       num_classes=CLASSES).eval()
    lengths = torch.tensor([64, 40, 7, 23])
    mask = torch.arange(MAX_LEN)[None] < lengths[:, None]
    tokens = torch.randint(1, VOCAB, (4, MAX_LEN)) * mask  # 0 = padding, as the harness
    expected = harness_logits(harness_weights(model), tokens, mask, heads=cfg.num_heads,
                              layers=cfg.num_layers)
    torch.testing.assert_close(model(tokens, mask), expected, atol=1e-6, rtol=0)
    # Without the full-length example, the batch pads to 40: the divisor stays task.max_len.
    short = slice(1, 4)
    torch.testing.assert_close(model(tokens[short, :40], mask[short, :40]), expected[short],
                               atol=1e-6, rtol=0)
    # The alternative (mean over real tokens, GELU head) is a different model.
    other = Classifier(ModelConfig(pooling="mean", head_activation="gelu"),
                       AttentionSpec("softmax"), vocab_size=VOCAB, max_len=MAX_LEN,
                       num_classes=CLASSES).eval()
    other.load_state_dict(model.state_dict())
    assert (other(tokens, mask) - expected).abs().max() > 1e-3


def lr_beta1_trace(opt, sched, steps: int) -> list[tuple[float, float]]:
    """(lr, beta1) used by each of `steps` optimiser steps, stepping the scheduler after each."""
    seen = []
    for _ in range(steps):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
        opt.step()
        sched.step()
    return seen


def test_onecycle_is_the_harness_schedule():
    """lr and Adam's beta1 at step 0, at the warmup's peak and at the last step, against
    OneCycleLR called with the harness's arguments and against the values they must take."""
    lr, warmup, total = 1e-4, 1000, 5000  # ListOps

    def run(make_scheduler):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([param], lr=lr, betas=(0.9, 0.999), eps=1e-6)
        return lr_beta1_trace(opt, make_scheduler(opt), total)

    ours = run(lambda opt: build_scheduler(opt, "onecycle", warmup, total))
    harness = run(lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        optimizer=opt, max_lr=lr, pct_start=warmup / total, anneal_strategy="linear",
        total_steps=total))
    # OneCycleLR's warmup phase ends at step warmup - 1 (its peak).
    stated = {0: (lr / 25, 0.95), warmup - 1: (lr, 0.85), total - 1: (lr / 25 / 1e4, 0.95)}
    for step, (want_lr, want_beta1) in stated.items():
        assert ours[step] == harness[step]
        assert ours[step][0] == pytest.approx(want_lr, rel=1e-6)
        assert ours[step][1] == pytest.approx(want_beta1, rel=1e-6)
    assert ours == harness
    # The alternative: linear warmup from lr/warmup and fixed betas.
    linear = run(lambda opt: build_scheduler(opt, "linear", warmup, total))
    assert linear[0] == (pytest.approx(lr / warmup), 0.9) and linear[warmup][0] == lr


@pytest.mark.parametrize("schedule", ["onecycle", "linear"])
def test_schedule_resumes_exactly_from_its_state(schedule):
    """The optimizer's and scheduler's state_dicts (what last.pt keeps) continue the lr and beta1
    sequence exactly; the end-to-end resume is tests/test_train.py's killed-run test."""
    def fresh():
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([param], lr=1e-3)
        return opt, build_scheduler(opt, schedule, 4, 12)

    whole = lr_beta1_trace(*fresh(), 12)
    opt, sched = fresh()
    head = lr_beta1_trace(opt, sched, 5)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    opt, sched = fresh()
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    assert head + lr_beta1_trace(opt, sched, 7) == whole


def test_amp_is_fp16_on_cuda_only():
    """The published AMP: fp16 (the trainer adds a gradient scaler for it) on CUDA; no autocast
    on CPU whatever the setting. (The CUDA step itself is not run here.)"""
    tc = TrainerConfig()
    assert tc.amp_dtype == "fp16" and tc.grad_clip == 0 and tc.schedule == "onecycle"
    assert amp_dtype(tc, torch.device("cuda")) == torch.float16
    assert amp_dtype(tc, torch.device("cpu")) is None
    assert amp_dtype(TrainerConfig(amp_dtype="bf16"), torch.device("cuda")) == torch.bfloat16
    assert amp_dtype(TrainerConfig(amp=False), torch.device("cuda")) is None


@pytest.mark.parametrize("fp32", [True, False])
def test_attention_fp32_runs_attention_outside_autocast(fp32):
    """Under autocast (bf16 on CPU, the same code path as CUDA's fp16), model.attention_fp32
    hands the attention fp32 q, k, v with autocast off; false leaves softmax in bf16."""
    torch.manual_seed(0)
    model = Classifier(ModelConfig(attention_fp32=fp32), AttentionSpec("softmax"),
                       vocab_size=VOCAB, max_len=MAX_LEN, num_classes=CLASSES).eval()
    seen = []
    model.encoder.blocks[0].attn.attn.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu"))))
    tokens = torch.randint(1, VOCAB, (2, MAX_LEN))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(tokens, torch.ones_like(tokens, dtype=torch.bool))
    assert seen == ([(torch.float32, False)] if fp32 else [(torch.bfloat16, True)])


# The published harness's settings (old_code/LRA: run_tasks.py, model.py and the models'
# config.json), read from its code, for `+experiment=reproduce_mra task=image attention=mra2`.
REPRODUCE_MRA_IMAGE = {
    "data.name": "lra", "data.mask_zero_tokens_as_padding": True, "data.pad_to": "max",
    "model.dim": 64, "model.num_layers": 2, "model.num_heads": 2, "model.head_dim": 32,
    "model.ffn_dim": 128, "model.dropout": 0.1, "model.pooling": "mean_over_max_len",
    "model.head_activation": "relu", "model.attention_fp32": True,
    "task.max_len": 1024, "trainer.batch_size": 256, "trainer.warmup_steps": 175,
    "trainer.max_steps": 35000, "trainer.eval_every": 175,
    "trainer.lr": 1e-4, "trainer.betas": [0.9, 0.999], "trainer.eps": 1e-6,
    "trainer.weight_decay": 0.0, "trainer.schedule": "onecycle", "trainer.grad_clip": 0.0,
    "trainer.amp": True, "trainer.amp_dtype": "fp16",
}


def test_reproduce_mra_preset_shows_the_published_settings():
    """`python -m lra.train +experiment=reproduce_mra task=image attention=mra2 --cfg job`, as a
    user runs it, prints the harness's settings."""
    out = subprocess.run([sys.executable, "-m", "lra.train", "+experiment=reproduce_mra",
                          "task=image", "attention=mra2", "--cfg", "job", "--resolve"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
                         env={**os.environ, "HYDRA_FULL_ERROR": "1"}).stdout
    job = OmegaConf.create(out)
    shown = {key: OmegaConf.select(job, key) for key in REPRODUCE_MRA_IMAGE}
    shown["trainer.betas"] = list(shown["trainer.betas"])
    assert shown == REPRODUCE_MRA_IMAGE
    assert job.tag == "reproduce_mra" and job.attention.name == "mra2"
