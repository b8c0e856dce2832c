"""Reformer (attention_zoo/reformer.py), by value against computations written out here."""
from __future__ import annotations

import pytest
import torch

from attention_zoo import build_attention
from attention_zoo.reformer import BucketsFrom, ReformerOptions, auto_buckets, sort_and_chunk
from attention_zoo.registry import AttentionError


def test_auto_buckets_is_the_largest_power_of_two_below_twice_the_chunks():
    """2 L / 64 = 0, 2, 3.1, 16, 31.25, 128 -> 2 (at least), 2, 2, 16, 16, 128."""
    lengths = torch.tensor([0, 64, 100, 512, 1000, 4096])
    assert auto_buckets(lengths, 64).tolist() == [2, 2, 2, 16, 16, 128]


def test_each_head_and_round_has_its_own_rotations():
    attn = build_attention("reformer", num_heads=3, head_dim=4, max_seq_len=256, chunk_size=32,
                           num_hashes=2, seed=0)
    assert attn.rotations.shape == (3, 2, 4, 8)  # 2 * 256 / 32 = 16 buckets: 8 rotations
    flat = attn.rotations.flatten(0, 1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(6) for j in range(i))


def test_sort_and_chunk_takes_each_rounds_order_even_with_more_rounds_than_positions():
    """3 rounds over 2 positions, chunks of 1: round r's chunks are x in round r's order."""
    x = torch.tensor([[10.0], [20.0]]).expand(1, 1, 2, 1)
    order = torch.tensor([[0, 1], [1, 0], [1, 0]]).expand(1, 1, 3, 2)
    out = sort_and_chunk(x, order, 1)
    assert out.shape == (1, 1, 3, 2, 1, 1)
    assert out[0, 0, :, :, 0, 0].tolist() == [[10, 20], [20, 10], [20, 10]]


def test_float64_inputs_hash_with_the_same_rotations():
    """A float32 module on float64 inputs gives the float64 module's output (rotations cast to
    the inputs' dtype)."""
    torch.manual_seed(0)
    attn = build_attention("reformer", num_heads=2, head_dim=4, max_seq_len=64, chunk_size=8,
                           seed=0).eval()
    q = torch.randn(2, 2, 32, 4, dtype=torch.float64)
    v = torch.randn(2, 2, 32, 4, dtype=torch.float64)
    mask = torch.ones(2, 32, dtype=torch.bool)
    out = attn(q, q, v, mask)
    torch.testing.assert_close(out, attn.double()(q, q, v, mask))


def test_options_are_checked_with_the_attention_and_option_named():
    ReformerOptions(num_hashes=1, chunk_size=1, num_buckets=2, redraw_every=1, seed=0)
    ReformerOptions(num_buckets=4, redraw_every=None, seed=None)
    assert ReformerOptions(buckets_from="real_length").buckets_from is BucketsFrom.real_length
    for key, value, low, nullable in (("num_hashes", 0, 1, ""), ("chunk_size", 0, 1, ""),
                                      ("num_buckets", 0, 2, " or null"),
                                      ("redraw_every", 0, 1, " or null"),
                                      ("seed", -1, 0, " or null")):
        with pytest.raises(AttentionError) as error:
            ReformerOptions(**{key: value})
        assert str(error.value) == (f"reformer: {key} must be an int >= {low}{nullable}, "
                                    f"got {value}")
    for options, message in (
            ({"buckets_from": "batch"}, "buckets_from must be one of max_seq_len, real_length, "
                                        "got 'batch'"),
            ({"num_buckets": 7}, "num_buckets must be even (argmax over [xR; -xR]), got 7")):
        with pytest.raises(AttentionError) as error:
            ReformerOptions(**options)
        assert str(error.value) == f"reformer: {message}"


def test_one_bucket_is_chunked_in_position_order():
    """Every token the same key: one bucket, sorted by position, so chunk j holds positions
    2j, 2j + 1 and a query sees its own and the previous chunk. Equal logits make the output
    the mean of v over those keys but itself (the self logit rule)."""
    attn = build_attention("reformer", num_heads=1, head_dim=4, max_seq_len=8, chunk_size=2,
                           num_hashes=1, num_buckets=2, seed=0).eval()
    q = torch.ones(1, 1, 8, 4)
    v = torch.randn(1, 1, 8, 4)
    out = attn(q, q, v, torch.ones(1, 8, dtype=torch.bool))
    for i in range(8):
        chunk = i // 2
        keys = [j for j in range(max(0, 2 * chunk - 2), 2 * chunk + 2) if j != i]
        torch.testing.assert_close(out[0, 0, i], v[0, 0, keys].mean(dim=0))
