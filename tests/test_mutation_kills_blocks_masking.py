"""The block and mask helpers every attention shares (attention_zoo/blocks.py, masking.py), held
to loops written out here. Tiny inputs: these run for every mutant of the two modules."""

from __future__ import annotations

import math

import pytest
import torch

from attention_zoo.blocks import block_means, neighbour_blocks
from attention_zoo.masking import (
    masked_rows,
    masked_softmax,
    neg_inf,
    pad_all_to_multiple,
    pad_to_multiple,
)


def test_block_means_average_real_tokens_only():
    """Blocks of 3 with 3, 1 and 0 real tokens: the mean of the real rows, their count, and 0 for
    the empty block; padded rows hold 1e6 and must not leak in."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 9, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 1, 1, 1, 1, 0, 1, 0]]).bool()
    x = torch.where(mask[:, None, :, None], x, 1e6)
    means, counts = block_means(x, mask, 3)
    assert means.shape == (2, 2, 3, 4) and means.dtype == x.dtype and counts.dtype == x.dtype
    for z in range(2):
        for n in range(3):
            real = mask[z, 3 * n:3 * n + 3]
            assert counts[z, n].item() == real.sum().item()
            rows = x[z, :, 3 * n:3 * n + 3][:, real]  # (heads, real tokens, d)
            expected = rows.mean(dim=1) if real.any() else torch.zeros(2, 4, dtype=x.dtype)
            torch.testing.assert_close(means[z, :, n], expected, rtol=1e-12, atol=1e-12)


def test_neighbour_blocks_places_each_offset_and_zeros_outside():
    """x (batch, nb, b, d) with block index at dim 1: output block I holds blocks I-1, I, I+1 side
    by side along the in-block positions, zeros where I + o leaves the sequence."""
    x = torch.arange(2 * 4 * 3 * 2, dtype=torch.float32).view(2, 4, 3, 2) + 1
    offsets = (1, -1, 0)  # any order: the output follows it
    out = neighbour_blocks(x, offsets, dim=1)
    assert out.shape == (2, 4, 9, 2)
    for i in range(4):
        for slot, o in enumerate(offsets):
            part = out[:, i, 3 * slot:3 * slot + 3]
            expected = x[:, i + o] if 0 <= i + o < 4 else torch.zeros_like(part)
            torch.testing.assert_close(part, expected, rtol=0, atol=0)
    # A mask's blocks (batch, nb, b): the block index is the one before last.
    m = torch.arange(1, 9).view(2, 2, 2)
    wide = neighbour_blocks(m, (0, 1), dim=-2)
    torch.testing.assert_close(wide, torch.cat([m, torch.stack([m[:, 1], 0 * m[:, 1]], 1)], -1))


def test_neighbour_blocks_rejects_the_last_dim_and_accepts_the_one_before():
    x = torch.ones(1, 2, 3)
    with pytest.raises(ValueError, match="last dim of a 3-d tensor: the block index must be "
                                         "followed by the position inside the block"):
        neighbour_blocks(x, (0,), dim=2)
    assert neighbour_blocks(x, (0, 1), dim=1).shape == (1, 2, 6)


def test_masked_rows_zeroes_padded_rows_holding_inf_and_nan():
    x = torch.randn(2, 1, 3, 2)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    x[0, 0, 1] = math.inf
    x[1, 0, 0] = math.nan
    out = masked_rows(x, mask)
    assert torch.isfinite(out).all()
    for z in range(2):
        for s in range(3):
            expected = x[z, 0, s] if mask[z, s] else torch.zeros(2)
            torch.testing.assert_close(out[z, 0, s], expected, rtol=0, atol=0)


@pytest.mark.parametrize("seq, multiple, padded",
                         [(5, 4, 8), (7, 4, 8), (8, 4, 8), (1, 3, 3), (7, 1, 7)])
def test_pad_to_multiple_adds_padding_at_the_end(seq, multiple, padded):
    x = torch.randn(2, 1, seq, 3) + 5  # no zero entries: padding is recognisable
    mask = torch.ones(2, seq, dtype=torch.bool)
    x_pad, mask_pad = pad_to_multiple(x, mask, multiple)
    assert x_pad.shape == (2, 1, padded, 3) and mask_pad.shape == (2, padded)
    torch.testing.assert_close(x_pad[:, :, :seq], x, rtol=0, atol=0)
    assert (x_pad[:, :, seq:] == 0).all()
    assert mask_pad[:, :seq].all() and not mask_pad[:, seq:].any()


def test_pad_all_to_multiple_pads_every_tensor_and_a_count_mask():
    tensors = [torch.ones(1, 2, 5, 3), torch.full((1, 2, 5, 1), 2.0)]
    counts = torch.tensor([[3.0, 1.0, 2.0, 1.0, 4.0]])  # a float (batch, seq) "mask"
    out, padded = pad_all_to_multiple(tensors, counts, 4)
    assert [t.shape for t in out] == [(1, 2, 8, 3), (1, 2, 8, 1)]
    assert (out[0][:, :, :5] == 1).all() and (out[1][:, :, :5] == 2).all()
    assert (out[0][:, :, 5:] == 0).all() and (out[1][:, :, 5:] == 0).all()
    torch.testing.assert_close(padded, torch.tensor([[3.0, 1.0, 2.0, 1.0, 4.0, 0, 0, 0]]))
    # One tensor alone (the mask comes back with it).
    (alone,), padded = pad_all_to_multiple(tensors[:1], counts, 4)
    assert alone.shape == (1, 2, 8, 3) and padded.shape == (1, 8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_neg_inf_is_finite_and_its_exp_is_zero(dtype):
    floor = torch.tensor(neg_inf(dtype), dtype=dtype)
    big = torch.tensor(torch.finfo(dtype).max / 2, dtype=dtype)
    assert torch.isfinite(floor) and floor < -big / 2
    # Subtracting a row maximum (at most half the range) from the floor stays finite.
    assert torch.isfinite(floor - big)
    assert torch.exp(floor - torch.zeros((), dtype=dtype)).item() == 0


def test_masked_softmax_matches_a_softmax_over_the_allowed_entries():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64) * 4
    allowed = torch.rand(2, 3, 5, generator=gen) > 0.4
    allowed[0, 1] = False  # a row with nothing allowed
    allowed[1, 2] = True
    weights = masked_softmax(logits, allowed)
    for z in range(2):
        for r in range(3):
            row, ok = logits[z, r], allowed[z, r]
            expected = torch.zeros(5, dtype=torch.float64)
            if ok.any():
                expected[ok] = torch.softmax(row[ok], dim=0)
            torch.testing.assert_close(weights[z, r], expected, rtol=1e-12, atol=1e-15)
    # Broadcast: a key mask (batch, 1, keys) over every row.
    keys = torch.tensor([[True, True, False, False, True], [False] * 4 + [True]])[:, None]
    torch.testing.assert_close(masked_softmax(logits, keys).sum(-1),
                               torch.ones(2, 3, dtype=torch.float64))
    assert (masked_softmax(logits, keys)[1, :, 4] == 1).all()
