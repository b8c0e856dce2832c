"""H-Transformer-1D (attention_zoo/h_transformer.py), by value: against exact softmax
(conftest.exact) where one block covers the sequence, against itself alone for batch
independence, and the options' messages."""
from __future__ import annotations

import pytest
import torch
from conftest import exact

from attention_zoo import build_attention
from attention_zoo.h_transformer import HTransformer1dOptions
from attention_zoo.masking import suffix_mask
from attention_zoo.registry import AttentionError


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_one_block_is_exact_softmax_even_at_logits_far_from_zero(sign):
    """b >= seq: one block, one level, exact softmax. Every logit near +-500 (positive inputs
    times 30): a padded or out-of-range key, whose logit would be 0, must not set the row's
    reference (exp(-500) underflows float32), and the level's rescale exp(m_l - m) must not
    overflow as exp(m_l + m) would."""
    torch.manual_seed(0)
    attn = build_attention("h_transformer_1d", num_heads=2, head_dim=4, max_seq_len=16,
                           block_size=8)
    x = torch.rand(2, 2, 6, 4) + 0.5
    q, k, v = 30 * x, sign * 30 * x, torch.randn(2, 2, 6, 4)
    mask = suffix_mask([6, 4], 6)
    out = attn(q, k, v, mask)
    assert torch.isfinite(out).all()
    expected = exact(q.double(), k.double(), v.double(), mask)  # padded rows zero
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


def test_each_query_row_has_its_own_reference():
    """A batch partner with logits near 500 leaves an example's output as it is alone (a
    reference shared over the batch would underflow the quiet example's weights to 0)."""
    torch.manual_seed(1)
    attn = build_attention("h_transformer_1d", num_heads=1, head_dim=4, max_seq_len=16,
                           block_size=8)
    x = torch.rand(2, 1, 6, 4) + 0.5
    x[0] *= 30
    mask = torch.ones(2, 6, dtype=torch.bool)
    together, alone = attn(x, x, x, mask), attn(x[1:], x[1:], x[1:], mask[1:])
    assert together[1].abs().sum() > 0
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-6)


def test_options_are_checked_with_the_attention_named():
    HTransformer1dOptions(block_size=2)
    for value, message in ((0, "block_size must be an int >= 2, got 0"),
                           (3, "block_size must be even (a coarse block is two finer blocks), "
                               "got 3")):
        with pytest.raises(AttentionError) as error:
            HTransformer1dOptions(block_size=value)
        assert str(error.value) == f"h_transformer_1d: {message}"
