"""The encoder: padding never reaches the pooled output, pair heads, it can learn; the projection
to heads, pooling against the final norm, the option errors and the embedding init."""

from __future__ import annotations

import pytest
import torch

from lra.model import AttentionLayer, AttentionSpec, Classifier, Encoder, ModelConfig


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


def recorded_qkv(layer: AttentionLayer, x: torch.Tensor, mask: torch.Tensor):
    """The q, k, v the layer's attention receives."""
    seen = []
    attend = layer.attn.forward
    layer.attn.forward = lambda q, k, v, m: seen.append((q, k, v)) or attend(q, k, v, m)
    layer(x, mask)
    return seen[0]


@pytest.mark.parametrize("attention, parts", [("softmax", 3), ("reformer", 2)])
def test_projection_splits_into_heads_and_shares_qk_when_asked(attention, parts):
    """(batch, seq, parts * heads * head_dim) -> q, k, v (batch, heads, seq, head_dim), in the
    order q, k, v; an attention that needs shared q/k (Reformer, SOFT) gets k = q from one
    projection of two parts (q and v)."""
    torch.manual_seed(0)
    cfg = ModelConfig(dim=8, num_heads=2, head_dim=4)
    layer = AttentionLayer(cfg, AttentionSpec(attention), max_seq_len=16)
    assert layer.qkv.out_features == parts * 2 * 4
    x, mask = torch.randn(3, 16, 8), torch.ones(3, 16, dtype=torch.bool)
    q, k, v = recorded_qkv(layer, x, mask)
    # Column block i of the projection is part i; inside it, head h holds columns h*4 .. h*4+3.
    chunks = [c.view(3, 16, 2, 4).transpose(1, 2) for c in layer.qkv(x).chunk(parts, dim=-1)]
    expected = (chunks[0], chunks[0], chunks[1]) if parts == 2 else tuple(chunks)
    for got, want in zip((q, k, v), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bad_pooling_and_head_activation_are_explained():
    # The dataclass checks its choices where it is built (lra.checks.choice).
    with pytest.raises(ValueError, match=r"^model.pooling='max' is not one of "
                                         r"mean_over_max_len, mean, cls$"):
        ModelConfig(pooling="max")
    with pytest.raises(ValueError, match=r"^model.head_activation='tanh' is not one of relu, "
                                         r"gelu$"):
        ModelConfig(head_activation="tanh")


@pytest.mark.parametrize("pooling", ["mean", "mean_over_max_len", "cls"])
def test_pooling_reads_the_final_norm_of_the_real_tokens(pooling):
    """The pooled vector against the final LayerNorm's output h (batch, seq, dim): the mean of h
    over each example's real tokens (one example has a single token), their sum over
    task.max_len, or h at the prepended cls position."""
    torch.manual_seed(0)
    enc = Encoder(ModelConfig(dim=8, num_heads=2, head_dim=4, ffn_dim=16, pooling=pooling),
                  AttentionSpec("softmax_naive"), vocab_size=10, max_len=9).eval()
    seen = []
    enc.norm.register_forward_hook(lambda module, args, out: seen.append(out))
    lengths = torch.tensor([7, 1, 4])
    mask = torch.arange(7)[None] < lengths[:, None]
    tokens = torch.randint(1, 10, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = enc(tokens, mask)
    h = seen[0]
    if pooling == "cls":
        assert h.shape == (3, 8, 8)
        expected = h[:, 0]
    else:
        sums = torch.stack([h[i, :n].sum(0) for i, n in enumerate(lengths.tolist())])
        expected = sums / (lengths[:, None] if pooling == "mean" else 9)
    torch.testing.assert_close(pooled, expected, rtol=1e-6, atol=1e-7)


def test_embeddings_start_at_the_harness_scale():
    """Token and position embeddings are drawn from N(0, 0.02^2), as the published harness does
    (6400 and 3200 draws: the sample std is within 3% of 0.02)."""
    torch.manual_seed(0)
    enc = Encoder(ModelConfig(), AttentionSpec("softmax"), vocab_size=100, max_len=50)
    for table in (enc.tokens.weight, enc.positions.weight):
        assert abs(table.std().item() - 0.02) < 0.0006 and abs(table.mean().item()) < 0.001
