"""The band of attention_zoo/local.py, Longformer (longformer.py) and the test inputs and error
measure of structured.py, by value against loops written out here."""
from __future__ import annotations

import math

import pytest
import torch

from attention_zoo import build_attention
from attention_zoo.longformer import LongformerOptions
from attention_zoo.masking import suffix_mask
from attention_zoo.registry import AttentionError
from attention_zoo.structured import padded_qkv, structured_qkv


def dense_longformer(q, k, v, mask, window, num_global):
    """Each row an exact softmax over its allowed keys, as longformer.py's docstring says: a
    real key j is allowed for query i when |i - j| <= window // 2, or j is global, or i is
    (global: position < num_global); padded query rows are zero. Float64, one row at a time."""
    batch, heads, seq, d = q.shape
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(batch):
        for i in range(seq):
            if not mask[b, i]:
                continue
            keys = [j for j in range(seq) if mask[b, j] and (
                abs(i - j) <= window // 2 or j < num_global or i < num_global)]
            logits = q[b, :, i, None].double() @ k[b, :, keys].double().transpose(-1, -2)
            weights = torch.softmax(logits / math.sqrt(d), dim=-1)
            out[b, :, i] = (weights @ v[b, :, keys].double())[:, 0]
    return out


@pytest.mark.parametrize("window, num_global, head_dim, lengths", [
    (4, 4, 2, [12, 7, 3]),  # more global tokens than head dims; a padded global token
    (2, 1, 8, [12, 5, 1]),  # half window 1: blocks of one token
    (6, 0, 4, [12, 12, 9]),  # no global token
    (64, 3, 4, [12, 2, 8]),  # a window wider than the input
])
def test_longformer_is_the_dense_softmax_over_window_and_global_keys(window, num_global,
                                                                     head_dim, lengths):
    torch.manual_seed(0)
    attn = build_attention("longformer", num_heads=2, head_dim=head_dim, max_seq_len=64,
                           window=window, num_global=num_global, dropout=0.0)
    q, k, v = (torch.randn(3, 2, 12, head_dim) for _ in range(3))
    mask = suffix_mask(lengths, 12)
    want = dense_longformer(q, k, v, mask, window, num_global)
    torch.testing.assert_close(attn(q, k, v, mask).double(), want, rtol=1e-5, atol=1e-6)


def test_longformer_options_are_checked_with_the_attention_and_option_named():
    LongformerOptions(window=0, num_global=0, dropout=0.0)
    for options, message in (
            ({"window": -1}, "longformer: window must be an int >= 0, got -1"),
            ({"num_global": -1}, "longformer: num_global must be an int >= 0, got -1"),
            ({"dropout": 1.5}, "longformer: dropout must be a number in [0, 1), got 1.5")):
        with pytest.raises(AttentionError) as error:
            LongformerOptions(**options)
        assert str(error.value) == message


def test_structured_inputs_are_the_seeds_alone_and_leave_the_global_rng():
    """The same seed gives the same q, k, v (seed 0 by default) whatever torch's global RNG
    holds, and drawing them does not move it; another seed gives others."""
    torch.manual_seed(1)
    a = structured_qkv(2, 2, 16, 8)
    state = torch.get_rng_state()
    torch.manual_seed(2)
    b = structured_qkv(2, 2, 16, 8, seed=0)
    assert torch.equal(torch.get_rng_state(), torch.Generator().manual_seed(2).get_state())
    for x, y, z in zip(a, b, structured_qkv(2, 2, 16, 8, seed=1), strict=True):
        assert x.shape == (2, 2, 16, 8) and torch.equal(x, y) and not torch.equal(x, z)
    assert not torch.equal(state, torch.get_rng_state())  # the check above can fail


def test_structured_tokens_are_a_unit_walk_plus_noise_of_the_stated_size():
    """q / (scale d^1/4) = walk + noise * g / sqrt(d), the walk a unit vector per token and g
    standard Gaussian, so its squared norm averages 1 + noise^2 (the cross term averages 0),
    for q and k alike; q - k holds the two noises only: 2 noise^2. Without noise q = k and every
    token has norm scale d^1/4 exactly. 2048 tokens of 64 dims: these means hold to a few %."""
    d, scale, noise = 64, 3.0, 0.3
    q, k, v = structured_qkv(4, 2, 256, d, seed=3, scale=scale, noise=noise)
    unit = scale * d ** 0.25
    for x in (q, k):
        assert ((x / unit).pow(2).sum(-1).mean().item()
                == pytest.approx(1 + noise ** 2, rel=0.02))
    assert ((q - k) / unit).pow(2).sum(-1).mean().item() == pytest.approx(2 * noise ** 2,
                                                                         rel=0.05)
    assert v.pow(2).mean().item() == pytest.approx(1.0, rel=0.05)
    q0, k0, _ = structured_qkv(2, 2, 16, 8, seed=3, noise=0.0)
    assert torch.equal(q0, k0)
    torch.testing.assert_close(q0.norm(dim=-1), torch.full((2, 2, 16), 3.0 * 8 ** 0.25))


def test_structured_inputs_come_in_the_dtype_asked():
    q, k, v = structured_qkv(1, 1, 4, 8, dtype=torch.float64)
    assert q.dtype == k.dtype == v.dtype == torch.float64
    for x, y in zip((q, k, v), structured_qkv(1, 1, 4, 8), strict=True):
        torch.testing.assert_close(x.float(), y)


@pytest.mark.parametrize("structured", [True, False])
def test_padded_inputs_have_the_lengths_asked_and_depend_on_the_seed_alone(structured):
    lengths = [7, 3, 1]
    torch.manual_seed(5)
    q, k, v, mask = padded_qkv(lengths, 2, 7, 4, structured=structured)
    assert torch.equal(mask, suffix_mask(lengths, 7))
    assert mask.sum(dim=1).tolist() == lengths
    torch.manual_seed(6)
    again = padded_qkv(lengths, 2, 7, 4, structured=structured, seed=0)
    other = padded_qkv(lengths, 2, 7, 4, structured=structured, seed=1)
    for i, x in enumerate((q, k, v)):
        assert x.shape == (3, 2, 7, 4)
        assert torch.equal(x, again[i]) and not torch.equal(x, other[i])
    if structured:
        for x, y in zip((q, k, v), structured_qkv(3, 2, 7, 4, seed=0), strict=True):
            assert torch.equal(x, y)
    else:
        assert not torch.equal(q, k) and not torch.equal(k, v)
        big = padded_qkv([4096], 1, 4096, 4, structured=False, seed=2)[:3]
        for x in big:  # standard Gaussian: mean 0, variance 1, to a few %
            assert abs(x.mean().item()) < 0.05 and x.var().item() == pytest.approx(1, rel=0.05)
