"""softmax (fused) equals softmax_naive (the oracle) under arbitrary padding masks."""

from __future__ import annotations

import pytest
import torch

from attention_zoo import build_attention


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
