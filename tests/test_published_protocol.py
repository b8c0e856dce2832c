"""Each protocol option's default holds to the rule of the code the MRA paper's comparison ran,
checked through a dense re-implementation of that rule written here (DEVIATIONS.md, Attentions).
"""

from __future__ import annotations

import math

import pytest
import torch

from attention_zoo import build_attention
from attention_zoo.draws import generator
from attention_zoo.mra import pair_budget, select_blocks
from attention_zoo.structured import padded_qkv, relative_error
from lra.model import AttentionSpec, Encoder, ModelConfig

HEADS = 2


def padded_inputs(lengths, seq, head_dim=32, *, seed=0, structured=False):
    """float64 q, k, v (batch, HEADS, seq, head_dim) and a suffix mask with the given lengths."""
    q, k, v, mask = padded_qkv(lengths, HEADS, seq, head_dim, structured=structured, seed=seed)
    return q.double(), k.double(), v.double(), mask


def dense_softmax(q, k, v, mask):
    logits = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(
        ~mask[:, None, None, :], -math.inf)
    return torch.softmax(logits, dim=-1) @ v


# --- MRA: the published budget, block_per_row * (max_seq_len // 32) pairs, capped at the real --


def published_selection(q, k, mask, budget_of, first_n, diagonal_n, b=32):
    """The published selection, densely: per-block means over real tokens, low logits, minus the
    row max, plus 5e3 per prior, flattened top-k of `budget_of(real_blocks)` pairs (ties to the
    lowest flat index, lra-zoo's rule). Returns chosen (batch, heads, nb, nb) bool and low."""
    batch, heads, n, d = q.shape
    nb = n // b
    weights = mask.to(q.dtype).view(batch, 1, nb, b, 1)
    counts = weights.sum(dim=(1, 3, 4))  # (batch, nb)

    def means(x):
        return (x.view(batch, heads, nb, b, d) * weights).sum(3) / counts.clamp_min(1)[
            :, None, :, None]

    low = means(q) @ means(k).transpose(-1, -2) / math.sqrt(d)  # (batch, heads, nb, nb)
    filled = counts > 0
    valid = (filled[:, :, None] & filled[:, None, :])[:, None]
    row_max = low.masked_fill(~valid, -math.inf).amax(-1, keepdim=True)
    blocks = torch.arange(nb)
    prior = torch.zeros(nb, nb, dtype=q.dtype)
    if diagonal_n:
        prior += 5e3 * ((blocks[:, None] - blocks[None, :]).abs() <= diagonal_n // 2)
    if first_n:
        prior += 5e3 * ((blocks[:, None] < first_n) | (blocks[None, :] < first_n))
    score = torch.where(valid, low - row_max + prior, -math.inf)
    chosen = torch.zeros(batch, heads, nb * nb, dtype=torch.bool)
    for i in range(batch):
        top = torch.sort(score[i].flatten(-2), dim=-1, descending=True, stable=True).indices
        chosen[i].scatter_(-1, top[:, : budget_of(int(filled[i].sum()))], True)
    return chosen.view(batch, heads, nb, nb), low, valid


def published_mra(q, k, v, mask, budget_of, first_n, diagonal_n, sparse, b=32):
    """MRA-2 (or MRA-2-s) as one dense n x n weight matrix: exp(logit) on chosen blocks' real
    keys, exp(low logit) on the real keys of the other valid blocks (MRA-2 only)."""
    chosen, low, valid = published_selection(q, k, mask, budget_of, first_n, diagonal_n, b)

    def tokens(x):  # (.., nb, nb) -> (.., n, n)
        return x.repeat_interleave(b, -2).repeat_interleave(b, -1)

    key_real = mask[:, None, None, :]
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    weights = torch.where(tokens(chosen) & key_real, logits.exp(), 0)
    if not sparse:
        weights = weights + torch.where(tokens(valid & ~chosen) & key_real, tokens(low.exp()), 0)
    total = weights.sum(-1, keepdim=True)
    return weights @ v / torch.where(total > 0, total, 1)


BPR = 2


# (name, priors first_n and diagonal_n, kernel backend: "auto" is the C++ one where it loads)
MRA_CASES = [("mra2", 1, 1, "auto"), ("mra2_s", 0, 0, "reference"), ("mra2_s", 1, 0, "auto")]


@pytest.mark.parametrize("name, first_n, diagonal_n, backend", MRA_CASES)
@pytest.mark.parametrize("max_seq_len", [512, 1024])
@pytest.mark.parametrize("budget_from", ["max_seq_len", "real_length"])
def test_mra_pairs_and_output_follow_the_budget_rule(name, first_n, diagonal_n, backend,
                                                     max_seq_len, budget_from):
    """Published: every example gets bpr * (max_seq_len // 32) pairs, capped at its real pairs,
    computed on the input padded to max_seq_len; real_length: bpr * real blocks. Our module,
    fed the batch padded only to 512, gives the same pairs and the same real rows."""
    lengths = [512, 384, 200, 40]
    q, k, v, mask = padded_inputs(lengths, 512)

    def budget_of(real):
        sized = max_seq_len // 32 if budget_from == "max_seq_len" else real
        return min(BPR * sized, real * real)

    # Selected pairs: our ranking's first `budget` pairs are the dense top-k.
    chosen, low, valid = published_selection(q, k, mask, budget_of, first_n, diagonal_n)
    has_token = mask.view(4, 16, 32).any(-1)
    budget, count = pair_budget(has_token, BPR, max_seq_len // 32
                                if budget_from == "max_seq_len" else None)
    assert budget.tolist() == [budget_of(r) for r in has_token.sum(-1).tolist()]
    rows, cols = select_blocks(low, valid, count, first_n, diagonal_n)
    ours = torch.zeros_like(chosen)
    for i in range(4):
        for h in range(HEADS):
            ours[i, h, rows[i, h, : budget[i]], cols[i, h, : budget[i]]] = True
    assert torch.equal(ours, chosen)

    # Output: the module against the dense published attention on the input padded to
    # max_seq_len (the harness pads every batch to it).
    attn = build_attention(name, num_heads=HEADS, head_dim=32, max_seq_len=max_seq_len,
                           block_per_row=BPR, initial_prior_first_n_blocks=first_n,
                           initial_prior_diagonal_n_blocks=diagonal_n, budget_from=budget_from,
                           backend=backend)
    out = attn(q, k, v, mask)
    extra = max_seq_len - 512
    full = [torch.nn.functional.pad(x, (0, 0, 0, extra)) for x in (q, k, v)]
    reference = published_mra(*full, torch.nn.functional.pad(mask, (0, extra)), budget_of,
                              first_n, diagonal_n, sparse=name == "mra2_s")[:, :, :512]
    real = mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], reference[real], atol=1e-8, rtol=1e-8)


def test_mra_published_budget_makes_short_examples_exact():
    """The published budget at max_seq_len 2048, bpr 8 (ListOps) covers every pair of an example
    of at most 22 blocks (512 pairs >= 22^2): a 500-token example is exact softmax; the
    per-example budget is not."""
    q, k, v, mask = padded_inputs([500, 300], 512)
    exact = dense_softmax(q, k, v, mask)
    errors = {}
    for budget_from in ("max_seq_len", "real_length"):
        attn = build_attention("mra2_s", num_heads=HEADS, head_dim=32, max_seq_len=2048,
                               budget_from=budget_from)
        errors[budget_from] = relative_error(attn(q, k, v, mask), exact, mask)
    assert errors["max_seq_len"] < 1e-10 < 1e-3 < errors["real_length"], errors


# --- Redraws: Reformer's rotations and BigBird's random blocks, seeded by the call number ------

REDRAWN = {"reformer": "rotations", "bigbird": "priorities"}


def redraw_module(name: str, **options):
    return build_attention(name, num_heads=HEADS, head_dim=16, max_seq_len=512, seed=3,
                           **options)


def float_inputs(lengths):
    q, k, v, mask = padded_inputs(lengths, 512, head_dim=16)
    return q.float(), k.float(), v.float(), mask


def call(attn, q, k, v, mask):
    return attn(q, q, v, mask) if attn.needs_shared_qk else attn(q, k, v, mask)


@pytest.mark.parametrize("name", sorted(REDRAWN))
def test_redraw_every_training_call_from_seed_and_call_number(name):
    """Published: a fresh draw on every training forward. Ours: call t draws from
    generator(seed, t - 1), so the buffer is exactly that draw; eval keeps the latest."""
    attn = redraw_module(name).train()
    q, k, v, mask = float_inputs([512, 300])
    buffer = getattr(attn, REDRAWN[name])
    draw = attn.draw_rotations if name == "reformer" else attn.draw_priorities
    outs = []
    for t in range(1, 4):
        outs.append(call(attn, q, k, v, mask))
        assert torch.equal(buffer, draw(generator(3, t - 1)))
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    attn.eval()
    first, second = call(attn, q, k, v, mask), call(attn, q, k, v, mask)
    assert torch.equal(first, second) and torch.equal(buffer, draw(generator(3, 2)))
    fixed = redraw_module(name, redraw_every=None).train()
    assert torch.equal(call(fixed, q, k, v, mask), call(fixed, q, k, v, mask))


@pytest.mark.parametrize("name", sorted(REDRAWN))
def test_redraws_resume_exactly_from_a_state_dict(name):
    q, k, v, mask = float_inputs([512, 300])
    uninterrupted = redraw_module(name).train()
    expected = [call(uninterrupted, q, k, v, mask) for _ in range(4)]
    first = redraw_module(name).train()
    head = [call(first, q, k, v, mask) for _ in range(2)]
    resumed = build_attention(name, num_heads=HEADS, head_dim=16, max_seq_len=512,
                              seed=99).train()  # another seed: the state_dict restores it
    resumed.load_state_dict(first.state_dict())
    tail = [call(resumed, q, k, v, mask) for _ in range(2)]
    for out, want in zip(head + tail, expected, strict=True):
        assert torch.equal(out, want)


def test_reformer_bucket_count_is_the_models_constant():
    """Published (HF): buckets = 2^floor(log2(2 * (length // chunk))) for the padded length,
    which is max_len: 128 at 4096 / chunk 64, also for an example of 300 real tokens. Each
    real token's bucket is argmax([x R; -x R]) over those 128 buckets."""
    attn = build_attention("reformer", num_heads=HEADS, head_dim=16, max_seq_len=4096, seed=1)
    q, _, _, mask = float_inputs([300])
    keys = torch.nn.functional.normalize(q, dim=-1)
    count = 2 ** ((2 * (4096 // 64)).bit_length() - 1)
    rotated = keys[:, :, None] @ attn.rotations[..., : count // 2]  # (1, heads, rounds, n, 64)
    expected = torch.cat([rotated, -rotated], dim=-1).argmax(-1)
    buckets = attn.hash(keys, mask)
    assert count == 128 and torch.equal(buckets[..., :300], expected[..., :300])
    per_example = build_attention("reformer", num_heads=HEADS, head_dim=16, max_seq_len=4096,
                                  seed=1, buckets_from="real_length")
    # 2 * 300 // 64 = 9 -> 8 buckets per (head, round); more than 8 on the model's constant.
    for buckets_used, most in ((per_example.hash(keys, mask), 8), (buckets, 128)):
        distinct = [row[:300].unique().numel() for row in buckets_used.flatten(0, 2)]
        assert max(distinct) <= most and (most == 8 or min(distinct) > 8), distinct


# --- Initial error of Linformer and Scatterbrain at the published settings ---------------------


def published_linformer(q, k, v, mask, proj_len, gen):
    """E ~ randn(heads, proj_len, n) / sqrt(proj_len), shared by k and v; padded rows zeroed."""
    e = torch.randn(q.shape[1], proj_len, q.shape[2], generator=gen, dtype=q.dtype)
    e = e / math.sqrt(proj_len)
    real = mask[:, None, :, None]
    k_proj, v_proj = e @ torch.where(real, k, 0), e @ torch.where(real, v, 0)
    return torch.softmax(q @ k_proj.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v_proj


@pytest.mark.parametrize("structured", [True, False])
def test_linformer_initial_error_follows_the_published_init(structured):
    """At n = 512 (384 real), proj_len 256: our default's error against exact softmax is the
    published Gaussian init's (same distribution, other draws), far above 1; pooling is below 1
    on structured inputs. E's entries have the published standard deviation 1/16."""
    q, k, v, mask = padded_inputs([512, 384], 512, structured=structured)
    exact = dense_softmax(q, k, v, mask)
    ours, published = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        attn = build_attention("linformer", num_heads=HEADS, head_dim=32, max_seq_len=512).double()
        std = float(attn.projection.detach().std())
        assert abs(std * 16 - 1) < 0.02 and abs(float(attn.projection.detach().mean())) < 1e-3
        with torch.no_grad():
            ours.append(relative_error(attn(q, k, v, mask), exact, mask))
        out = published_linformer(q, k, v, mask, 256, torch.Generator().manual_seed(100 + seed))
        published.append(relative_error(out, exact, mask))
    ours_mean, published_mean = sum(ours) / 3, sum(published) / 3
    assert ours_mean > 1 and published_mean > 1
    assert abs(ours_mean / published_mean - 1) < 0.25, (ours, published)
    if structured:
        pooling = build_attention("linformer", num_heads=HEADS, head_dim=32, max_seq_len=512,
                                  init="pooling").double()
        assert relative_error(pooling(q, k, v, mask), exact, mask) < 1


def test_linformer_one_projection_for_every_layer():
    spec = AttentionSpec("linformer", {"proj_len": 16})
    cfg = ModelConfig(num_layers=3)
    shared = Encoder(cfg, spec, vocab_size=10, max_len=64)
    own = Encoder(cfg, AttentionSpec("linformer", {"proj_len": 16,
                                                   "share_across_layers": False}), 10, 64)
    e = [block.attn.attn.projection for block in shared.blocks]
    assert e[1] is e[0] and e[2] is e[0]
    assert len({id(block.attn.attn.projection) for block in own.blocks}) == 3
    count = sum(p.numel() for p in shared.parameters())
    assert sum(p.numel() for p in own.parameters()) - count == 2 * e[0].numel()


def published_scatterbrain(q, k, v, mask, projection, window, symmetric=False):
    """Scatterbrain densely: L = phi(q) phi(k)^T with the hyperbolic map on `projection`
    (r rows, 2r features), exact exp(logit) on the published window, keys j in
    [i - window // 2, i - window // 2 + window) ([i - 32, i + 32) at 64), or with `symmetric`
    on |i - j| <= window // 2; padded keys excluded everywhere."""
    d = q.shape[-1]

    def phi(x):
        x = x * d ** -0.25
        proj = x @ projection.T.to(x.dtype)
        u = torch.cat([proj, -proj], dim=-1) - (x * x).sum(-1, keepdim=True) / 2
        return u.exp() / math.sqrt(u.shape[-1])

    low = phi(q) @ phi(k).transpose(-1, -2)
    exact = (q @ k.transpose(-1, -2) / math.sqrt(d)).exp()
    n = q.shape[2]
    ahead = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # j - i
    last = window // 2 if symmetric else window - window // 2 - 1
    near = (ahead >= -(window // 2)) & (ahead <= last)
    weights = torch.where(near, exact, low) * mask[:, None, None, :]
    return weights @ v / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("window", [0, 1, 5, 8])
@pytest.mark.parametrize("shape", ["half_open", "symmetric"])
def test_scatterbrain_window_is_the_dense_rule_of_its_shape(window, shape):
    """Small and odd windows, float64: the module equals the dense rule on its own draw (w keys
    from i - w // 2 when half-open; |i - j| <= w // 2 when symmetric)."""
    q, k, v, mask = padded_inputs([40, 23], 40, structured=True)
    attn = build_attention("scatterbrain", num_heads=HEADS, head_dim=32, max_seq_len=40, seed=0,
                           window=window, window_shape=shape).double()
    out = attn(q, k, v, mask)
    reference = published_scatterbrain(q, k, v, mask, attn.features.projection, window,
                                       shape == "symmetric")
    real = mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], reference[real], atol=1e-8, rtol=1e-8)


def test_scatterbrain_defaults_are_the_published_features():
    """110 features for head_dim 32 on the cosh map (55 orthogonal rows), equal to the dense
    rule on the module's own draw; its error against softmax stays within the stated bound."""
    q, k, v, mask = padded_inputs([512, 384], 512, structured=True)
    q, k = q / 2, k / 2  # a moderate temperature, where 110 features estimate usefully
    exact = dense_softmax(q, k, v, mask)
    errors = {}
    for label, options in (("published", {}),
                           ("positive 256", {"num_features": 256, "feature_map": "positive"})):
        runs = []
        for seed in range(3):
            attn = build_attention("scatterbrain", num_heads=HEADS, head_dim=32, max_seq_len=512,
                                   seed=seed, **options).double()
            out = attn(q, k, v, mask)
            runs.append(relative_error(out, exact, mask))
            if label == "published":
                projection = attn.features.projection
                assert projection.shape == (55, 32) and attn.features.num_features == 110
                reference = published_scatterbrain(q, k, v, mask, projection, 64)
                real = mask[:, None, :, None].expand_as(out)
                torch.testing.assert_close(out[real], reference[real], atol=1e-8, rtol=1e-8)
                symmetric = build_attention("scatterbrain", num_heads=HEADS, head_dim=32,
                                            max_seq_len=512, seed=seed,
                                            window_shape="symmetric").double()(q, k, v, mask)
                reference = published_scatterbrain(q, k, v, mask, projection, 64, True)
                torch.testing.assert_close(symmetric[real], reference[real], atol=1e-8,
                                           rtol=1e-8)
                assert not torch.allclose(symmetric[real], out[real])
        errors[label] = sum(runs) / len(runs)
    assert errors["published"] < 0.5 and errors["positive 256"] < 0.5, errors
