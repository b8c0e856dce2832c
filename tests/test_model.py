"""The encoder: padding never reaches the pooled output, pair heads, and it can learn."""

from __future__ import annotations

import pytest
import torch

from lra.model import AttentionSpec, Classifier, Encoder, ModelConfig


def tokens_and_mask(batch, seq, lengths, vocab=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (batch, seq), generator=gen)
    mask = torch.arange(seq)[None] < torch.tensor(lengths)[:, None]
    return tokens, mask


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("attention", ["softmax", "softmax_naive"])
def test_pooled_output_ignores_padded_tokens(pooling, attention):
    torch.manual_seed(0)
    enc = Encoder(ModelConfig(pooling=pooling), AttentionSpec(attention), vocab_size=20,
                  max_len=50).eval()
    tokens, mask = tokens_and_mask(3, 50, [50, 31, 5])
    other = torch.where(mask, tokens, torch.randint_like(tokens, 1, 20))
    torch.testing.assert_close(enc(tokens, mask), enc(other, mask), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("attention", ["softmax", "softmax_naive", "mra2", "nystrom"])
def test_padded_example_pools_to_its_unpadded_output(pooling, attention):
    """An example padded from 10 to 50 tokens pools to exactly what it gives alone: the pooling
    averages real positions only (padded positions are not zero after the blocks: the FFN's
    biases reach them), and padded keys never reach the real ones."""
    torch.manual_seed(0)
    enc = Encoder(ModelConfig(pooling=pooling), AttentionSpec(attention), vocab_size=20,
                  max_len=50).eval()
    tokens, mask = tokens_and_mask(2, 50, [10, 10])
    with torch.no_grad():
        padded = enc(tokens, mask)
        alone = enc(tokens[:, :10], mask[:, :10])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_pair_head_is_a_dual_encoder():
    torch.manual_seed(0)
    model = Classifier(ModelConfig(), AttentionSpec("softmax"), vocab_size=20, max_len=40,
                       num_classes=2, pair=True).eval()
    t1, m1 = tokens_and_mask(4, 40, [40, 10, 20, 30], seed=1)
    t2, m2 = tokens_and_mask(4, 40, [5, 40, 33, 12], seed=2)
    tokens, mask = torch.stack([t1, t2], 1), torch.stack([m1, m2], 1)
    logits = model(tokens, mask)
    assert logits.shape == (4, 2)
    # One shared encoder: encoding the two inputs separately agrees with the pair path.
    u, v = model.encoder(t1, m1), model.encoder(t2, m2)
    ref = model.head(torch.cat([u, v, u * v, u - v], -1))
    torch.testing.assert_close(logits, ref, atol=1e-6, rtol=1e-6)


def test_tiny_model_overfits_64_examples():
    """A 2-layer model must memorise 64 random-label sequences (>= 95% train accuracy)."""
    torch.manual_seed(0)
    tokens, mask = tokens_and_mask(64, 32, [32 - (i % 9) for i in range(64)], vocab=30, seed=3)
    labels = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(4))
    model = Classifier(ModelConfig(dropout=0.0), AttentionSpec("softmax"), vocab_size=30,
                       max_len=32, num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(tokens, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    accuracy = (model(tokens, mask).argmax(-1) == labels).float().mean().item()
    assert accuracy >= 0.95, f"train accuracy {accuracy:.3f} after 300 steps"
