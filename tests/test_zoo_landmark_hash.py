"""Landmark, hierarchical and hashing baselines: Nystrom, SOFT, YOSO, H-Transformer-1D, and their
shared steps (pseudo-inverse, conv branch, neighbour blocks), and option checks. Each module's
file (test_nystrom.py, test_soft.py, test_h_transformer.py) holds its steps by value.
`pytest -s` prints measured errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import exact, make

from attention_zoo import AttentionError, build_attention
from attention_zoo.blocks import neighbour_blocks
from attention_zoo.conv_branch import ConvBranch
from attention_zoo.draws import stable_seed
from attention_zoo.masking import suffix_mask
from attention_zoo.pinv import newton_pinv
from attention_zoo.soft import gaussian_kernel, soft_kernel_product
from attention_zoo.structured import relative_error, structured_qkv
from attention_zoo.yoso import gaussian_planes, hadamard_planes, padded_dim
from kernels.lsh import lsh_cumulation
from kernels.lsh.reference import bucket_cumulation, simhash_codes

HEADS, DIM = 2, 16
OURS = ["nystrom", "nystrom_conv", "soft", "soft_conv", "yoso", "yoso_conv", "h_transformer_1d"]


# ---------------------------------------------------------------- pseudo-inverse


@pytest.mark.parametrize("update, iterations", [("razavi", 8), ("newton_schulz", 12)])
def test_pinv_converges_to_linalg_pinv(update, iterations):
    """Converged by 8 third-order or 12 second-order steps here. (Run on far longer and the
    rounding error in the null space of a singular A grows, x3.25 or x2 per step: e.g. 1e-7 after
    20 Razavi steps on the rank-3 matrix. The methods stop at 6 and 20 steps.)"""
    gen = torch.Generator().manual_seed(0)
    # Well-conditioned (singular values in [1, 4]) square matrices, and a rank-3 PSD matrix whose
    # nonzero eigenvalues are in [1, 4] (the pseudo-inverse, not an inverse).
    u, _ = torch.linalg.qr(torch.randn(4, 8, 8, generator=gen, dtype=torch.float64))
    w, _ = torch.linalg.qr(torch.randn(4, 8, 8, generator=gen, dtype=torch.float64))
    s = 1 + 3 * torch.rand(4, 8, generator=gen, dtype=torch.float64)
    square = u @ torch.diag_embed(s) @ w.transpose(-1, -2)
    s_low = torch.cat([s[:, :3], torch.zeros(4, 5, dtype=torch.float64)], dim=1)
    low_rank = u @ torch.diag_embed(s_low) @ u.transpose(-1, -2)
    for a in (square, low_rank):
        err = (newton_pinv(a, iterations, update) - torch.linalg.pinv(a)).abs().max().item()
        print(f"\npinv {update} x{iterations}: max |Z - pinv(A)| = {err:.2e}")
        assert err < 1e-9


def test_pinv_init_scale_is_per_example():
    """A large matrix elsewhere in the batch must not change another's (unconverged) result."""
    gen = torch.Generator().manual_seed(1)
    a = torch.softmax(torch.randn(3, 2, 16, 16, generator=gen), dim=-1)
    a[1] = a[1] * 1000
    batched = newton_pinv(a, 6, "razavi")
    for i in range(3):
        torch.testing.assert_close(newton_pinv(a[i : i + 1], 6, "razavi"), batched[i : i + 1],
                                   rtol=1e-6, atol=0)


# ---------------------------------------------------------------- conv branch


def test_conv_branch_ignores_padded_values():
    branch = ConvBranch(num_heads=HEADS, kernel=33)
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(3, HEADS, 70, DIM, generator=gen)
    mask = suffix_mask([70, 41, 3], 70)
    junk = torch.where(mask[:, None, :, None], v, 1e6 * torch.randn(v.shape, generator=gen))
    junk[2, :, -1] = float("inf")
    torch.testing.assert_close(branch(junk, mask), branch(v, mask), rtol=0, atol=0)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("name, option, value", [
    ("yoso", "tau", 10.5), ("yoso", "tau", True), ("yoso", "tau", 0), ("yoso", "tau", 25),
    ("yoso", "num_hash", 2.5), ("yoso", "num_hash", -1), ("yoso", "tau_slack", 1.5),
    ("yoso", "tau_slack", -1), ("yoso", "seed", 1.0), ("yoso", "seed", -1),
    ("yoso", "backend", "gpu"), ("yoso", "backward", "v3"), ("yoso_conv", "backend", "cuda"),
    ("yoso", "hash", "simhash"), ("yoso", "redraw", "never"), ("yoso", "backward_slots", 0),
    ("yoso", "backward_slots", 1024.0), ("yoso", "tau", 17),  # hadamard: tau <= 16 at head_dim 16
    ("yoso_conv", "conv_kernel", 33.0),
    ("h_transformer_1d", "block_size", 16.0), ("h_transformer_1d", "block_size", True),
    ("h_transformer_1d", "block_size", -2), ("h_transformer_1d", "block_size", 15),
    ("nystrom", "num_landmarks", 64.0), ("nystrom", "pinv_iterations", -1),
    ("nystrom_conv", "conv_kernel", 33.0), ("nystrom_conv", "conv_kernel", False),
    ("nystrom_conv", "conv_kernel", -3), ("nystrom_conv", "conv_kernel", 32),
    ("soft", "pinv_iterations", 2.5), ("soft_conv", "conv_kernel", 33.0),
])
def test_bad_option_values_are_rejected(name, option, value):
    """Floats, bools, negatives and out-of-range ints fail at build time with the option named,
    not later with a bare TypeError."""
    with pytest.raises(AttentionError, match=option):
        make(name, 64, **{option: value})


# ---------------------------------------------------------------- padding shapes nothing


@pytest.mark.parametrize("name", OURS)
def test_suffix_padding_equals_unpadded(name):
    """An example padded to any length gives exactly its unpadded output: padding never shapes
    landmarks (segments, conv windows), hierarchy levels or hash buckets."""
    attn = make(name, 512).double().eval()
    q, k, v = structured_qkv(1, HEADS, 77, DIM, seed=3, dtype=torch.float64)
    k = q if attn.needs_shared_qk else k
    state = attn.state_dict()
    alone = attn(q, k, v, suffix_mask([77], 77))
    attn.load_state_dict(state)  # the same draws again (YOSO redraws on every forward)
    pad = [torch.nn.functional.pad(x, (0, 0, 0, 123)) for x in (q, k, v)]
    padded = attn(*pad, suffix_mask([77], 200))
    torch.testing.assert_close(padded[:, :, :77], alone, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- Nystrom


def errors_over_budget(name: str, option: str, budgets: tuple[int, ...]) -> list[float]:
    """Relative error against exact softmax on structured float64 inputs (n = 256, one padded
    example) for each budget, printed for `pytest -s`; callers bound them."""
    q, k, v = structured_qkv(2, HEADS, 256, DIM, seed=0, dtype=torch.float64)
    mask = suffix_mask([256, 200], 256)
    reference = exact(q, k, v, mask)
    errors = [relative_error(make(name, 256, **{option: b}).double()(q, k, v, mask), reference,
                             mask) for b in budgets]
    print(f"\n{name} relative error, {option} {'/'.join(map(str, budgets))}:",
          " ".join(f"{e:.4f}" for e in errors))
    return errors


def test_nystrom_error_shrinks_with_landmarks():
    errors = errors_over_budget("nystrom", "num_landmarks", (8, 16, 32, 64, 128))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < errors[0] / 3
    measured = (0.6020, 0.4078, 0.2689, 0.1930, 0.1444)
    assert all(e < 1.5 * m for e, m in zip(errors, measured, strict=True)), errors


def test_nystrom_with_one_token_landmarks_is_exact():
    """m = n: every landmark is one token, the three kernels are the softmax matrix S and the
    output is S pinv(S) S v = S v. Only the pseudo-inverse iterations leave an error: at the
    paper's 6 steps it is visible (a few percent), with 40 third-order steps in float64 it is at
    rounding level."""
    q, k, v = structured_qkv(2, HEADS, 128, DIM, seed=1, dtype=torch.float64)
    mask = suffix_mask([128, 90], 128)  # the second example has 90 one-token landmarks
    reference = exact(q, k, v, mask)
    errors = {}
    for steps in (6, 12, 40):
        attn = make("nystrom", 128, num_landmarks=128, pinv_iterations=steps).double()
        errors[steps] = relative_error(attn(q, k, v, mask), reference, mask)
    print("\nnystrom m = n, relative error vs exact by pinv steps:",
          ", ".join(f"{s}: {e:.1e}" for s, e in errors.items()))
    # Measured 4.2e-2, 4.5e-4 and 1.4e-12; bounds about twice that (100x at rounding level).
    assert errors[6] < 0.1 and errors[12] < 1e-3 and errors[40] < 1e-10
    assert errors[6] > 10 * errors[12]  # third-order convergence shows


# ---------------------------------------------------------------- H-Transformer-1D


def test_h_transformer_error_shrinks_with_block():
    errors = errors_over_budget("h_transformer_1d", "block_size", (4, 8, 16, 32, 64))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False))
    measured = (0.3921, 0.2432, 0.1205, 0.0404, 0.0004)
    assert all(e < 1.5 * m for e, m in zip(errors, measured, strict=True)), errors


@pytest.mark.parametrize("seq, block", [(256, 256), (100, 128), (256, 128)])
def test_h_transformer_whole_sequence_block_is_exact(seq, block):
    """One block (or two neighbouring ones) covers every pair exactly at level 0."""
    q, k, v = structured_qkv(2, HEADS, seq, DIM, seed=2, dtype=torch.float64)
    mask = suffix_mask([seq, seq - 37], seq)
    out = make("h_transformer_1d", seq, block_size=block).double()(q, k, v, mask)
    err = relative_error(out, exact(q, k, v, mask), mask)
    print(f"\nh_transformer_1d seq {seq} block {block}: relative error {err:.1e}")
    assert err < 1e-12


def test_neighbour_blocks_any_dim_spelling():
    """The block index may be given counted from either end; it must have a block dim after it."""
    x = torch.arange(2 * 4 * 3 * 5, dtype=torch.float64).view(2, 4, 3, 5)  # (lead, nb, b, f)
    out = neighbour_blocks(x, (-1, 0, 1), dim=1)
    torch.testing.assert_close(neighbour_blocks(x, (-1, 0, 1), dim=-3), out, rtol=0, atol=0)
    assert out.shape == (2, 4, 9, 5)
    torch.testing.assert_close(out[:, 2], torch.cat([x[:, 1], x[:, 2], x[:, 3]], dim=1))
    assert (out[:, 0, :3] == 0).all() and (out[:, 3, 6:] == 0).all()  # beyond the sequence
    mask_blocks = x[..., 0]  # (lead, nb, b): the block index two from the end
    torch.testing.assert_close(neighbour_blocks(mask_blocks, (0, 1), dim=-2),
                               neighbour_blocks(mask_blocks, (0, 1), dim=1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="last dim"):
        neighbour_blocks(x, (0,), dim=-1)


@pytest.mark.parametrize("seq, block", [(300, 4), (300, 16), (1000, 16), (33, 2)])
def test_h_transformer_partition_covers_every_pair_once(seq, block):
    """With q = 0 every coarse weight is exp(0) times the key count, so the output is the mean of
    the real values exactly when each (query, key) pair is counted once across all levels."""
    gen = torch.Generator().manual_seed(4)
    k, v = (torch.randn(2, HEADS, seq, DIM, generator=gen, dtype=torch.float64) for _ in "kv")
    q = torch.zeros_like(k)
    mask = suffix_mask([seq, seq // 2 + 1], seq)
    out = make("h_transformer_1d", seq, block_size=block).double()(q, k, v, mask)
    torch.testing.assert_close(out, exact(q, k, v, mask), rtol=1e-12, atol=1e-12)


def h_transformer_by_hand(q, k, v, mask, block):
    """H-Transformer-1D pair by pair (float64): query i and key j meet at the finest level l whose
    blocks of b level-l tokens (token t >> l) are neighbours, |(i >> l) // b - (j >> l) // b| <= 1,
    with the weight exp(mean q . mean k / sqrt(d)) of the means over the real tokens of their
    level-l tokens; out_i = sum_j w_ij v_j / sum_j w_ij over the real keys, softmax-stable."""
    batch, heads, seq, dim = q.shape
    out = torch.zeros(batch, heads, seq, dim, dtype=torch.float64)
    for b in range(batch):
        real = [t for t in range(seq) if mask[b, t]]

        def mean(x, t, level, b=b, real=real):
            return x[b, :, [u for u in real if u >> level == t >> level]].double().mean(dim=1)

        for i in real:
            logits, values = [], []
            for j in real:
                level = 0
                while abs((i >> level) // block - (j >> level) // block) > 1:
                    level += 1
                logits.append((mean(q, i, level) * mean(k, j, level)).sum(-1) / math.sqrt(dim))
                values.append(v[b, :, j].double())
            weights = torch.softmax(torch.stack(logits, dim=-1), dim=-1)  # (heads, keys)
            out[b, :, i] = torch.einsum("hj,jhd->hd", weights, torch.stack(values))
    return out


def test_h_transformer_matches_the_hierarchy_written_out():
    """Four levels (37 tokens in blocks of 4), a padded example, float64."""
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, HEADS, 37, DIM, generator=gen, dtype=torch.float64)
               for _ in range(3))
    mask = suffix_mask([37, 23], 37)
    out = make("h_transformer_1d", 37, block_size=4).double()(q, k, v, mask)
    expected = h_transformer_by_hand(q, k, v, mask, 4)  # zero on padded rows, as ours
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_h_transformer_rescales_each_query_to_its_own_maximum():
    """Rows whose logits are 1,000 times larger than the others' (float32) leave the others exact:
    each fine query's levels share that query's maximum, not one over the batch, under which the
    small rows' exponentials would underflow to 0."""
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, HEADS, 24, DIM, generator=gen) for _ in range(3))
    q[:, :, :4] *= 1000
    mask = torch.ones(1, 24, dtype=torch.bool)
    out = make("h_transformer_1d", 24, block_size=2)(q, k, v, mask)
    expected = h_transformer_by_hand(q, k, v, mask, 2)
    torch.testing.assert_close(out[:, :, 4:].double(), expected[:, :, 4:], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- SOFT


def test_soft_with_token_landmarks_is_exact_gaussian_product():
    """With the tokens themselves as landmarks, K(q,q) pinv(K(q,q)) K(q,q) v = K(q,q) v.

    The SOFT module never has token landmarks: even at stride 1 each landmark is
    GELU(LayerNorm(W q_i)), a different point, and a Nystrom product on n landmarks other than
    the tokens is not K(q,q) v (the Gaussian kernel's feature space is infinite-dimensional, so
    n landmark features do not span the tokens' features). So exactness is checked on the shared
    kernel product that the module calls, with landmarks = q; the module itself is checked
    against a hand-written reference below.
    """
    seq = 64
    gen = torch.Generator().manual_seed(5)
    # Points about 2 apart: K has off-diagonal mass but stays well conditioned.
    q = torch.randn(2, HEADS, seq, DIM, generator=gen, dtype=torch.float64) * 0.4
    v = torch.randn(2, HEADS, seq, DIM, generator=gen, dtype=torch.float64)
    mask = suffix_mask([seq, 40], seq)
    kernel = gaussian_kernel(q, q) * mask[:, None, None, :]
    reference = kernel @ v
    out = soft_kernel_product(q, q, mask, v, mask, iterations=60)
    assert relative_error(out, reference, mask) < 1e-9


def test_soft_module_matches_a_hand_written_reference():
    """The whole module against its formula written out with independent pieces: q scaled by
    d^-1/4, landmarks GELU(LayerNorm(strided conv)) as an einsum over windows, and
    torch.linalg.pinv for the inverse. Full-length inputs (padding is the test above)."""
    seq, landmarks = 64, 8
    stride = seq // landmarks
    attn = make("soft", seq, num_landmarks=landmarks, pinv_iterations=40).double()
    gen = torch.Generator().manual_seed(12)
    q = torch.randn(2, HEADS, seq, DIM, generator=gen, dtype=torch.float64)
    v = torch.randn(2, HEADS, seq, DIM, generator=gen, dtype=torch.float64)
    mask = suffix_mask([seq, seq], seq)
    with torch.no_grad():
        out = attn(q, q, v, mask)
        qs = q * DIM**-0.25
        weight = attn.landmark_conv.weight  # (out_dim, in_dim, stride)
        windows = qs.view(2, HEADS, landmarks, stride, DIM)  # (batch, heads, m, stride, dim)
        lm = torch.einsum("bhmtc,oct->bhmo", windows, weight)
        norm = attn.landmark_norm
        lm = torch.nn.functional.gelu(
            torch.nn.functional.layer_norm(lm, (DIM,), norm.weight, norm.bias, norm.eps))
        k_ql = torch.exp(-0.5 * torch.cdist(qs, lm) ** 2)  # (batch, heads, seq, m)
        k_ll = torch.exp(-0.5 * torch.cdist(lm, lm) ** 2)
        reference = k_ql @ torch.linalg.pinv(k_ll) @ k_ql.transpose(-1, -2) @ v
    assert relative_error(out, reference, mask) < 1e-8


# ---------------------------------------------------------------- YOSO


def test_yoso_collision_rate_is_the_expected_kernel():
    """Averaged over many hash rounds, the bucket weight of (q, k) approaches
    (1 - arccos(q.k) / pi)^tau."""
    tau, rounds = 6, 4000
    gen = torch.Generator().manual_seed(6)
    cosines = torch.tensor([0.95, 0.7, 0.3, 0.0, -0.4], dtype=torch.float64)
    q = torch.nn.functional.normalize(torch.randn(len(cosines), DIM, generator=gen,
                                                  dtype=torch.float64), dim=-1)
    ortho = torch.randn(len(cosines), DIM, generator=gen, dtype=torch.float64)
    ortho = torch.nn.functional.normalize(ortho - (ortho * q).sum(-1, keepdim=True) * q, dim=-1)
    k = cosines[:, None] * q + (1 - cosines[:, None] ** 2).sqrt() * ortho
    planes = torch.randn(1, rounds, DIM, tau, generator=gen, dtype=torch.float64)
    q_codes = simhash_codes(q[None, None], planes)  # (rounds, 1, 1, pairs)
    k_codes = simhash_codes(k[None, None], planes)
    one_hot = torch.eye(len(cosines), dtype=torch.float64)[None, None]  # value j marks key j
    weight = sum(bucket_cumulation(q_codes[r], k_codes[r], one_hot, 2**tau)
                 for r in range(rounds))[0, 0].diagonal() / rounds
    expected = (1 - torch.arccos(cosines) / math.pi) ** tau
    stderr = (expected * (1 - expected) / rounds).sqrt()
    print("\nyoso collision rate vs (1 - arccos/pi)^tau:",
          ", ".join(f"{c:.2f}: {w:.4f}/{e:.4f}" for c, w, e in zip(cosines.tolist(),
                    weight.tolist(), expected.tolist(), strict=True)))
    assert ((weight - expected).abs() <= 4 * stderr + 1e-3).all()


@pytest.mark.parametrize("name", ["yoso", "yoso_conv"])
def test_yoso_gradients_finite_and_nonzero(name):
    attn = make(name, 512).train()
    q, k, v = (x.requires_grad_(True) for x in structured_qkv(2, HEADS, 300, DIM, seed=8))
    out = attn(q, k, v, suffix_mask([300, 180], 300))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(9))).sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("redraw", ["every_forward", "training_steps"])
def test_yoso_draws_resume_from_a_checkpoint(redraw):
    """Call t hashes with draw t - 1 of the module's seed; the seed and the call count are in the
    state_dict, so a fresh module loaded after N calls makes the uninterrupted run's call N + 1,
    even when its own seed (drawn from the global RNG) differs."""
    q, k, v = structured_qkv(1, HEADS, 128, DIM, seed=11)
    mask = suffix_mask([128], 128)

    def build():
        return build_attention("yoso", num_heads=HEADS, head_dim=DIM, max_seq_len=128,
                               redraw=redraw).train()

    torch.manual_seed(1)
    run = build()
    for _ in range(3):
        run(q, k, v, mask)
    torch.manual_seed(2)
    resumed = build()
    fresh_first = resumed(q, k, v, mask)
    resumed.load_state_dict(run.state_dict())
    out = resumed(q, k, v, mask)
    torch.testing.assert_close(out, run(q, k, v, mask), rtol=0, atol=0)
    assert not torch.equal(out, fresh_first)
    assert not torch.equal(out, run(q, k, v, mask))  # call 5 draws afresh


@pytest.mark.parametrize("redraw, eval_redraws", [("every_forward", True),
                                                  ("training_steps", False)])
def test_yoso_redraw_schedules(redraw, eval_redraws):
    """Two training calls always hash differently; two eval calls too under the published
    schedule, and alike (the last training draw) under training_steps."""
    attn = make("yoso", 256, redraw=redraw)
    q, k, v = structured_qkv(1, HEADS, 256, DIM, seed=10)
    mask = suffix_mask([256], 256)
    attn.train()
    assert not torch.equal(attn(q, k, v, mask), attn(q, k, v, mask))
    attn.eval()
    assert torch.equal(attn(q, k, v, mask), attn(q, k, v, mask)) != eval_redraws


def walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised fast Walsh-Hadamard transform over the last dim (a power of 2), by
    butterflies: (a, b) -> (a + b, a - b) at strides 1, 2, 4, ..."""
    p = x.shape[-1]
    stride = 1
    while stride < p:
        pairs = x.unflatten(-1, (p // (2 * stride), 2, stride))
        x = torch.stack([pairs[..., 0, :] + pairs[..., 1, :], pairs[..., 0, :] - pairs[..., 1, :]],
                        dim=-2).flatten(-3)
        stride *= 2
    return x


@pytest.mark.parametrize("head_dim, tau, rounds", [(16, 5, 7), (12, 4, 3), (64, 12, 16)])
def test_yoso_hadamard_hash_is_the_published_transform(head_dim, tau, rounds):
    """The planes give the codes of the published fast hash written independently: x zero-padded
    to p, three rounds of (multiply by the signs D_i, Walsh-Hadamard transform), then round j of
    transform t reads the signs of outputs (j * tau .. j * tau + tau - 1), bit i worth 2^i, for
    rounds t * (p // tau) + j. The signs are the generator's first draw, (heads, transforms, 3,
    p, 1) bits."""
    from attention_zoo.yoso import hadamard_planes

    heads, p = 2, 1 << (head_dim - 1).bit_length()
    per = p // tau
    transforms = -(-rounds // per)
    planes = hadamard_planes(torch.Generator().manual_seed(4), heads, rounds, head_dim, tau)
    signs = torch.randint(0, 2, (heads, transforms, 3, p, 1),
                          generator=torch.Generator().manual_seed(4)).double()[..., 0] * 2 - 1
    x = torch.randn(1, heads, 50, head_dim, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    y = torch.nn.functional.pad(x, (0, p - head_dim))[:, :, None]  # (1, heads, 1, 50, p)
    for i in range(3):
        y = walsh_hadamard(y * signs[None, :, :, i, None, :])  # (1, heads, transforms, 50, p)
    bits = (y[..., :per * tau] > 0).long().unflatten(-1, (per, tau))  # (..., 50, per, tau)
    codes = (bits * 2 ** torch.arange(tau)).sum(-1)  # (1, heads, transforms, 50, per)
    expected = codes.permute(2, 4, 0, 1, 3).flatten(0, 1)[:rounds]  # (rounds, 1, heads, 50)
    assert torch.equal(simhash_codes(x, planes.double()), expected)


def test_yoso_hadamard_collisions_run_below_the_gaussian_kernel():
    """The Hadamard hash changes the distribution: at q.k = 0.8 (tau 12, head_dim 64) its
    collision rate is below (1 - arccos(q.k) / pi)^tau by more than 5 standard errors (6% below
    here; 32 random pairs x 8000 rounds), while Gaussian planes match it within 4 (the test
    above)."""
    from attention_zoo.yoso import hadamard_planes

    tau, d, pairs, rounds, cos = 12, 64, 32, 8000, 0.8
    gen = torch.Generator().manual_seed(12)
    q = torch.nn.functional.normalize(torch.randn(pairs, d, generator=gen, dtype=torch.float64),
                                      dim=-1)
    ortho = torch.randn(pairs, d, generator=gen, dtype=torch.float64)
    ortho = torch.nn.functional.normalize(ortho - (ortho * q).sum(-1, keepdim=True) * q, dim=-1)
    k = cos * q + math.sqrt(1 - cos**2) * ortho
    planes = hadamard_planes(gen, 1, rounds, d, tau).double()
    same = simhash_codes(q[None, None], planes) == simhash_codes(k[None, None], planes)
    rate = same.double().mean().item()
    expected = (1 - math.acos(cos) / math.pi) ** tau
    stderr = math.sqrt(expected * (1 - expected) / same.numel())
    print(f"\nhadamard collision rate at q.k = {cos}: {rate:.4f} vs {expected:.4f}")
    assert rate < expected - 5 * stderr


# ---------------------------------------------------------------- YOSO's wiring, planes and options


@pytest.mark.parametrize("tau, bits", [(8, [6, 5]), (2, [2, 2])])
def test_yoso_attention_is_the_documented_composition(tau, bits):
    """Forward and backward equal, written out: unit q and k, each example's low `bits` bits of the
    SimHash codes (tau capped at ceil(log2 L) + tau_slack), padded keys in bucket 2^tau and padded
    queries in 2^tau + 1, lsh_cumulation with the v2 workspace seeded by (module seed, draw), and
    the output L2-normalised per row. Padded rows hold finite junk so that their codes matter too.
    tau 8 caps the bits; tau 2 leaves 4 buckets, so that 3 slots (of 16 keys) make the survivor
    draw bind and a padded query's code, were it below 2^tau, would collide."""
    seed = 11
    attn = make("yoso", 16, tau=tau, num_hash=4, seed=seed, backward_slots=3,
                backend="reference").double()
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, HEADS, 16, DIM, generator=gen, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))
    mask = suffix_mask([11, 5], 16)
    grad = torch.randn(2, HEADS, 16, DIM, generator=gen, dtype=torch.float64)
    ours = attn._attend(q, k, v, mask)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)

    assert [min(tau, math.ceil(math.log2(length)) + 2) for length in (11, 5)] == bits
    low = (2 ** torch.tensor(bits) - 1)[:, None, None]
    pad = ~mask[:, None, :]
    planes = attn.draw_planes(0).double()
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    q_codes = (simhash_codes(qn, planes) & low).masked_fill(pad, 2**tau + 1)
    k_codes = (simhash_codes(kn, planes) & low).masked_fill(pad, 2**tau)

    def by_hand(survivor_seed):
        out, _ = lsh_cumulation(qn, kn, v, q_codes, k_codes, torch.tensor(bits), 2**tau + 2,
                                "v2", 3, survivor_seed, "reference")
        out = F.normalize(out, dim=-1)
        return out, torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)

    expected, expected_grads = by_hand(stable_seed(seed, 0))
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    for name, got, want in zip("qkv", ours_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"d{name}")
    if tau == 2:  # the cap binds: another survivor seed moves the q/k gradients
        assert not torch.allclose(by_hand(stable_seed(seed))[1][0], expected_grads[0])


def test_yoso_without_a_slot_cap_keeps_every_colliding_pair():
    """backward_slots null is the complete union, the same gradient as a cap of every key."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, HEADS, 32, DIM, generator=gen, requires_grad=True) for _ in range(3))
    mask = torch.ones(1, 32, dtype=torch.bool)
    grads = [torch.autograd.grad(
        make("yoso", 32, seed=2, tau=4, backward_slots=slots)(q, k, v, mask).sum(), (q, k))
        for slots in (None, 32, 4)]
    for full, capped in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(full, capped, rtol=0, atol=0)
    assert not torch.equal(grads[0][0], grads[2][0])  # a cap below the keys does bind


def test_yoso_reports_the_backend_it_ran():
    attn = make("yoso", 16, backend="reference")
    assert attn.backend_in_use is None  # no forward yet
    q, k, v = structured_qkv(1, HEADS, 16, DIM, seed=1)
    attn(q, k, v, torch.ones(1, 16, dtype=torch.bool))
    assert attn.backend_in_use == "reference"


def test_yoso_planes_follow_the_hash_option():
    for hash_, family in (("hadamard", hadamard_planes), ("gaussian", gaussian_planes)):
        attn = make("yoso", 64, hash=hash_, seed=3, tau=4, num_hash=8)
        expected = family(attn.draws.generator(2), HEADS, 8, DIM, 4)
        torch.testing.assert_close(attn.draw_planes(2), expected, rtol=0, atol=0)
    planes = gaussian_planes(torch.Generator().manual_seed(0), 3, 5, DIM, 4)
    assert planes.shape == (3, 5, DIM, 4)
    assert not torch.equal(planes[0], planes[1])  # each head its own planes


def test_yoso_seed_option_fixes_the_draws():
    """seed=s gives the same planes whatever the global RNG; seed null draws one from it."""
    def planes(seed, torch_seed):
        return make("yoso", 64, seed=seed, torch_seed=torch_seed).draw_planes(0)

    assert torch.equal(planes(5, 0), planes(5, 1))
    assert not torch.equal(planes(5, 0), planes(6, 0))
    assert torch.equal(planes(None, 0), planes(None, 0))
    assert not torch.equal(planes(None, 0), planes(None, 1))


@pytest.mark.parametrize("head_dim, width", [(1, 1), (2, 2), (16, 16), (17, 32), (64, 64),
                                             (65, 128)])
def test_yoso_hadamard_width_is_head_dim_rounded_up_to_a_power_of_two(head_dim, width):
    assert padded_dim(head_dim) == width


def test_yoso_bits_per_example():
    """tau capped at ceil(log2 L) + tau_slack (an empty example counts as L = 1)."""
    lengths = [0, 1, 2, 3, 5, 8, 64]
    mask = suffix_mask(lengths, 64)
    assert make("yoso", 64, tau=12).example_bits(mask).tolist() == [2, 2, 3, 4, 5, 5, 8]
    assert make("yoso", 64, tau=4).example_bits(mask).tolist() == [2, 2, 3, 4, 4, 4, 4]
    assert make("yoso", 64, tau=12, tau_slack=None).example_bits(mask).tolist() == [12] * 7


def test_yoso_option_bounds():
    """The lowest allowed values build, nulls where documented; past them the error names yoso,
    the option and its bound."""
    make("yoso", 64, num_hash=1, tau=1, tau_slack=0, seed=0, backward_slots=1)
    make("yoso", 64, tau_slack=None, seed=None, backward_slots=None)
    make("yoso", 64, hash="gaussian", tau=24)
    make("yoso", 64, tau=16)  # the hadamard width at head_dim 16
    with pytest.raises(AttentionError, match=r"^yoso: num_hash must be an int >= 1, got 0"):
        make("yoso", 64, num_hash=0)
    too_many = r"^yoso: tau must be <= 24 \(2\^tau buckets\), got 25$"
    with pytest.raises(AttentionError, match=too_many):
        make("yoso", 64, hash="gaussian", tau=25)
    with pytest.raises(AttentionError, match=r"^yoso: hash must be one of hadamard, gaussian"):
        make("yoso", 64, hash="simhash")
    with pytest.raises(AttentionError, match=r"^yoso: hash 'hadamard' takes tau bits .* width 16"):
        make("yoso", 64, tau=17)
