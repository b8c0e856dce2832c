"""Mixed precision: under autocast, a `full_precision` attention computes in fp32 (its math runs
with autocast off: within 1e-5 of the fp64 result, where bf16 math is ~5e-3 off), and every
attention returns the input's dtype.
On CPU with bf16 autocast, the same code path as CUDA AMP (`torch.autocast` on q's device)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make, same_draws

from attention_zoo import attention_class, list_attentions
from attention_zoo.masking import suffix_mask

HEADS, HEAD_DIM, SEQ = 2, 16, 96


# Stated here, not read from the classes: every method but exact softmax exponentiates
# unnormalised logits or random features, inverts a matrix or hashes signs (registry.py).
LOW_PRECISION_OK = {"softmax", "softmax_naive"}


def test_every_approximation_declares_full_precision():
    declared = {n for n in list_attentions() if attention_class(n).full_precision}
    assert declared == set(list_attentions()) - LOW_PRECISION_OK


def inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, HEADS, SEQ, HEAD_DIM, generator=gen).to(dtype) for _ in "qkv")
    return q, k, v, suffix_mask([SEQ, 61], SEQ)


@pytest.mark.parametrize("name", list_attentions())
@torch.no_grad()
def test_autocast_keeps_full_precision_math_in_fp32(name):
    attn = make(name, SEQ, heads=HEADS, head_dim=HEAD_DIM).eval()
    q, k, v, mask = inputs()
    if attn.needs_shared_qk:
        k = q
    # The same module in fp64 (its buffers, random features included, converted).
    reference = copy.deepcopy(attn).double()(q.double(), k.double(), v.double(), mask).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v, mask)
    assert out.dtype == torch.float32
    if name not in LOW_PRECISION_OK:  # fp32 rounding: measured at most 2e-6
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    else:  # bf16 matmuls: about 3 significant digits (measured 5e-3)
        torch.testing.assert_close(out, reference, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("name", [n for n in list_attentions()
                                  if attention_class(n).full_precision])
@torch.no_grad()
def test_bf16_inputs_are_computed_in_fp32_and_returned_in_bf16(name):
    """bf16 q, k, v under autocast give the fp32 result of those same (rounded) inputs, rounded
    once to bf16 at the end."""
    # Both calls draw alike (YOSO redraws on every forward).
    attn = same_draws(make(name, SEQ, heads=HEADS, head_dim=HEAD_DIM).eval())
    q, k, v, mask = inputs(torch.bfloat16)
    if attn.needs_shared_qk:
        k = q
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v, mask)
    assert out.dtype == torch.bfloat16
    reference = attn(q.float(), k.float(), v.float(), mask).to(torch.bfloat16)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
