"""Linformer (attention_zoo/linformer.py) by value: the projection E of each init, its slicing
and capping, the layer sharing, and the output against softmax over E k, E v written out."""
from __future__ import annotations

import math

import pytest
import torch

from attention_zoo import build_attention
from attention_zoo.linformer import Init, LinformerOptions, pooling_projection
from attention_zoo.masking import suffix_mask
from attention_zoo.registry import AttentionError


def test_pooling_rows_are_the_means_of_equal_segments():
    """proj_len 3 over 7 positions: position i is in segment floor(3 i / 7), so segments
    {0, 1, 2}, {3, 4}, {5, 6}."""
    third, half = 1 / 3, 1 / 2
    want = torch.tensor([[third, third, third, 0, 0, 0, 0],
                         [0, 0, 0, half, half, 0, 0],
                         [0, 0, 0, 0, 0, half, half]])
    torch.testing.assert_close(pooling_projection(3, 7), want)
    torch.testing.assert_close(pooling_projection(2, 2), torch.eye(2))


@pytest.mark.parametrize("proj_len, rows", [(4, 4), (40, 16)])
def test_the_pooling_projection_is_one_per_head_capped_at_max_seq_len(proj_len, rows):
    attn = build_attention("linformer", num_heads=3, head_dim=4, max_seq_len=16,
                           proj_len=proj_len, init="pooling")
    assert attn.projection.shape == (3, rows, 16)
    for head in attn.projection:
        torch.testing.assert_close(head, pooling_projection(rows, 16))


def reference(e, q, k, v, mask):
    """softmax(q k'^T / sqrt(d)) v' over the projected positions that some real token feeds,
    k' = E k, v' = E v over the real tokens only: one (example, head) at a time, in float64."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(q.shape[0]):
        real = mask[b]
        for h in range(q.shape[1]):
            rows = e[h][:, real].double()  # (proj_len, real tokens)
            reached = rows.abs().sum(dim=1) > 0
            k_proj = rows[reached] @ k[b, h, real].double()
            v_proj = rows[reached] @ v[b, h, real].double()
            logits = q[b, h].double() @ k_proj.T / math.sqrt(q.shape[-1])
            out[b, h, real] = torch.softmax(logits[real], dim=-1) @ v_proj
    return out


@pytest.mark.parametrize("init", ["gaussian", "pooling"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_output_is_softmax_over_the_reached_projected_positions(init, dtype):
    """Inputs shorter than max_seq_len (E sliced to them), one example of 5 real tokens: with
    pooling, the segments wholly in its padding feed nothing and are no keys (a key k' = 0
    would still take weight exp(0)). A float32 module on float64 inputs computes in float64."""
    torch.manual_seed(0)
    attn = build_attention("linformer", num_heads=2, head_dim=4, max_seq_len=32, proj_len=8,
                           init=init)
    q, k, v = (torch.randn(2, 2, 16, 4, dtype=dtype) for _ in range(3))
    mask = suffix_mask([16, 5], 16)
    out = attn(q, k, v, mask)
    assert out.dtype == dtype
    want = reference(attn.projection.detach()[:, :, :16], q, k, v, mask)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12,
                                                                         "atol": 1e-12}
    torch.testing.assert_close(out.double(), want, **tol)


def test_options_are_checked_with_the_attention_and_option_named():
    LinformerOptions(proj_len=1)
    assert LinformerOptions(init="pooling").init is Init.pooling
    for options, message in (
            ({"proj_len": 0}, "linformer: proj_len must be an int >= 1, got 0"),
            ({"init": "uniform"}, "linformer: init must be one of gaussian, pooling, "
                                  "got 'uniform'"),
            ({"share_across_layers": "yes"}, "linformer: share_across_layers must be true or "
                                             "false, got 'yes'")):
        with pytest.raises(AttentionError) as error:
            LinformerOptions(**options)
        assert str(error.value) == message
