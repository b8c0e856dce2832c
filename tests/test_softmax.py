"""softmax (fused) equals softmax_naive (the oracle) under arbitrary padding masks; attention
dropout read off the weights; empty examples and bad rates."""

from __future__ import annotations

import pytest
import torch

from attention_zoo import AttentionError, build_attention


@pytest.mark.parametrize("seq", [1, 7, 64, 129])
def test_fused_softmax_matches_naive_under_random_masks(seq):
    gen = torch.Generator().manual_seed(seq)
    q, k, v = (torch.randn(5, 2, seq, 16, generator=gen) for _ in range(3))
    # Random (not only suffix) masks, plus one example with no real token at all.
    mask = torch.rand(5, seq, generator=gen) > 0.4
    mask[0] = True
    mask[1] = False
    fused, naive = (build_attention(n, num_heads=2, head_dim=16, max_seq_len=256).eval()
                    for n in ("softmax", "softmax_naive"))
    out_f, out_n = fused(q, k, v, mask), naive(q, k, v, mask)
    torch.testing.assert_close(out_f, out_n, atol=1e-5, rtol=1e-5)
    assert (out_n[1] == 0).all() and torch.isfinite(out_n).all()
    # The naive oracle is the textbook formula on each example's real keys.
    for b in (0, 2, 3, 4):
        keys = mask[b]
        if not keys.any():
            continue
        logits = q[b] @ k[b][:, keys].transpose(-1, -2) / 16**0.5
        ref = torch.softmax(logits, -1) @ v[b][:, keys]
        torch.testing.assert_close(out_n[b][:, mask[b]], ref[:, mask[b]], atol=1e-5, rtol=1e-5)


def weights_after_dropout(name: str, rate: float | None, train: bool) -> tuple[torch.Tensor, ...]:
    """(out, exact weights) for 64 tokens, 2 heads, v = I: out = dropout(softmax(q k^T / 8))."""
    seq = 64
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 2, seq, seq, generator=gen) for _ in range(2))
    v = torch.eye(seq).expand(2, 2, seq, seq)
    mask = torch.ones(2, seq, dtype=torch.bool)
    options = {} if rate is None else {"dropout": rate}
    attn = build_attention(name, num_heads=2, head_dim=seq, max_seq_len=seq, **options)
    torch.manual_seed(1)
    out = attn.train(train)(q, k, v, mask)
    return out, torch.softmax(q @ k.transpose(-1, -2) / seq**0.5, dim=-1)


@pytest.mark.parametrize("name, rate", [("softmax", 0.3), ("softmax_naive", 0.3),
                                        ("softmax", None)])
def test_training_drops_weights_at_the_rate_and_rescales_the_rest(name, rate):
    """Each weight is zeroed with the rate (0.1, the harness's, by default for softmax) and the
    others scaled by 1 / (1 - rate); 16384 weights, so the zeroed fraction is within 0.02."""
    out, weights = weights_after_dropout(name, rate, train=True)
    p = 0.1 if rate is None else rate
    kept = out != 0
    assert abs((~kept).float().mean().item() - p) < 0.02
    torch.testing.assert_close(out[kept], weights[kept] / (1 - p), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, rate", [("softmax", 0.3), ("softmax_naive", None)])
def test_eval_and_the_oracle_default_do_not_drop(name, rate):
    """Eval mode never drops; softmax_naive (the oracle) has dropout 0.0 by default, in training
    mode too."""
    out, weights = weights_after_dropout(name, rate, train=rate is None)
    torch.testing.assert_close(out, weights, rtol=1e-4, atol=1e-6)


def test_empty_example_leaves_the_fused_gradients_finite():
    """An example with no real token sees every key (not none: softmax over nothing is NaN, and
    its backward would reach every input of the batch)."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=gen).requires_grad_(True) for _ in range(3))
    mask = torch.tensor([[True] * 6 + [False] * 3, [False] * 9])
    out = build_attention("softmax", num_heads=2, head_dim=8, max_seq_len=9).eval()(q, k, v, mask)
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all() and x.grad[0].abs().sum() > 0


@pytest.mark.parametrize("name", ["softmax", "softmax_naive"])
@pytest.mark.parametrize("rate", [1.0, -0.1, True])
def test_dropout_outside_0_1_is_explained(name, rate):
    with pytest.raises(AttentionError, match=rf"^softmax: dropout must be a number in \[0, 1\), "
                                             rf"got {rate!r}$"):
        build_attention(name, num_heads=2, head_dim=8, max_seq_len=9, dropout=rate)
