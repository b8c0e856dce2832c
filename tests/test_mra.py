"""MRA-2 and MRA-2-s: exactness at full budget, error falling with the budget, gradients, any
length / head_dim, exact budget under ties, the 2-D grid reordering and low-precision inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import exact, make

from attention_zoo import AttentionError
from attention_zoo.masking import suffix_mask
from attention_zoo.mra import grid_order, mra_attention, patch_shape, prior_tiers, select_blocks
from attention_zoo.structured import relative_error, structured_qkv

NAMES = ["mra2", "mra2_s"]
MAX_LEN = 8192  # the model length MRA's default budget is sized from


def random_inputs(batch, heads, seq, head_dim, *, seed=0, dtype=torch.float32, lengths=None):
    """Gaussian q, k, v and a suffix-padding mask; random per-example lengths unless given
    (the first example is always full)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen, dtype=dtype)
               for _ in range(3))
    if lengths is None:
        lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
        lengths[0] = seq
    return q, k, v, suffix_mask(lengths, seq)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("seq", [64, 100, 256, 333])
def test_full_budget_is_exact_softmax(name, dtype, tol, seq):
    """With every block chosen, both variants are exact attention, padding and priors included."""
    q, k, v, mask = random_inputs(4, 2, seq, 16, seed=seq, dtype=dtype)
    out = make(name, MAX_LEN, block_per_row=seq, initial_prior_first_n_blocks=1,
               initial_prior_diagonal_n_blocks=3)(q, k, v, mask)
    torch.testing.assert_close(out, exact(q, k, v, mask), atol=tol, rtol=tol)


# Relative error at block_per_row 1, 2, 4, 8 (test_error_falls_with_budget, measured on CPU).
MEASURED = {
    ("mra2", 512): (0.4488, 0.3634, 0.1065, 0.0004),
    ("mra2_s", 512): (0.8900, 0.5335, 0.1173, 0.0005),
    ("mra2", 1024): (0.4936, 0.4155, 0.1854, 0.0259),
    ("mra2_s", 1024): (1.4971, 1.0101, 0.3394, 0.0425),
}


@pytest.mark.parametrize("seq", [512, 1024])
def test_error_falls_with_budget(seq):
    q, k, v = structured_qkv(2, 2, seq, 32, seed=0)
    mask = torch.ones(2, seq, dtype=torch.bool)
    target = exact(q, k, v, mask)
    errors = {}
    for name in NAMES:
        errors[name] = [
            relative_error(make(name, seq, head_dim=32, block_per_row=bpr)(
                q, k, v, mask), target, mask)
            for bpr in (1, 2, 4, 8)
        ]
        print(f"\n{name} seq={seq} relative error at block_per_row 1, 2, 4, 8: "
              + ", ".join(f"{e:.4f}" for e in errors[name]))
    for name in NAMES:
        assert all(a > b for a, b in zip(errors[name], errors[name][1:], strict=False)), errors
        # Each error within 1.5x of the one measured (deterministic inputs, so a regression of
        # the approximation shows here even if the order survives).
        assert all(e < 1.5 * m for e, m in zip(errors[name], MEASURED[name, seq], strict=True)), \
            errors
    # The low-resolution term only helps on these inputs.
    assert all(f <= s for f, s in zip(errors["mra2"], errors["mra2_s"], strict=True)), errors


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    """Partial budget (10 of 25 block pairs) and a padded tail, so every branch is exercised."""
    q, k, v, mask = random_inputs(1, 1, 40, 4, dtype=torch.float64, lengths=[35])
    attn = make(name, MAX_LEN, heads=1, head_dim=4, block_size=8, block_per_row=2)
    inputs = tuple(x.requires_grad_(True) for x in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: attn(a, b, c, mask), inputs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seq", [1, 2, 31, 32, 33, 1000, 4096])
def test_any_length_is_finite_with_gradients(name, seq):
    q, k, v, mask = random_inputs(1 if seq == 4096 else 2, 2, seq, 32, seed=seq)
    q, k, v = (x.requires_grad_(True) for x in (q, k, v))
    out = make(name, MAX_LEN, head_dim=32)(q, k, v, mask)
    assert out.shape == q.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.parametrize("name", NAMES)
def test_length_8192_forward(name):
    q, k, v, mask = random_inputs(1, 2, 8192, 32, lengths=[8000])
    with torch.no_grad():
        out = make(name, MAX_LEN, head_dim=32)(q, k, v, mask)
    assert out.shape == q.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("head_dim", [16, 32, 64, 80])
def test_any_head_dim(name, head_dim):
    q, k, v, mask = random_inputs(2, 2, 200, head_dim, seed=head_dim)
    out = make(name, MAX_LEN, head_dim=head_dim, block_per_row=2)(q, k, v, mask)
    assert out.shape == q.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_input_shorter_than_max_seq_len(name):
    """The budget follows the input: 100 tokens give 4 blocks, so 8 per row covers all 16 pairs
    (the published code sized top-k from max_seq_len and crashed here)."""
    q, k, v, mask = random_inputs(2, 2, 100, 16)
    out = make(name, 4096, block_per_row=8)(q, k, v, mask)
    torch.testing.assert_close(out, exact(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_selection_takes_exactly_the_budget_under_ties():
    logits = torch.zeros(2, 3, 10, 10)  # every pair ties
    valid = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    for budget in (1, 7, 30, 100):
        rows, cols = select_blocks(logits, valid, budget)
        flat = rows * 10 + cols
        assert flat.shape == (2, 3, budget)
        # Distinct pairs, and ties go to the lowest flat index.
        assert (flat.sort(dim=-1).values == torch.arange(budget)).all()


def test_selection_puts_priors_and_valid_pairs_first():
    logits = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 1e4
    valid = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    valid[..., 7, :] = False  # an empty last block: its pairs come last, priors or not
    valid[..., :, 7] = False
    rows, cols = select_blocks(logits, valid, 20, first_n=1, diagonal_n=1)
    # Priors on valid pairs: row 0 and col 0 (13 pairs) plus the diagonal (6 more) = 19.
    chosen = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    chosen.view(1, 2, 64).scatter_(-1, rows * 8 + cols, True)
    prior = torch.zeros(8, 8, dtype=torch.bool)
    prior[0, :7] = prior[:7, 0] = True
    prior[range(7), range(7)] = True
    assert chosen[..., prior].all() and not chosen[..., 7, :].any()
    assert chosen.sum(dim=(-1, -2)).eq(20).all()


@pytest.mark.parametrize("name", NAMES)
def test_constant_inputs(name):
    """All logits tie. Exactly the budget is chosen, and MRA-2 stays exact because block means of
    constant q, k are exact: chosen blocks replace their low-resolution term, never add to it."""
    seq = 256
    q = torch.ones(2, 2, seq, 16)
    v = torch.randn(2, 2, seq, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.arange(seq)[None, :] < torch.tensor([[seq], [150]])
    out = make(name, MAX_LEN, block_per_row=2)(q, q, v, mask)
    assert torch.isfinite(out).all()
    if name == "mra2":
        torch.testing.assert_close(out, exact(q, q, v, mask), atol=1e-5, rtol=1e-5)


def test_grid_order_makes_4x8_patches():
    order = grid_order(32, 32, 32, torch.device("cpu"))
    assert sorted(order.tolist()) == list(range(1024))
    first = {r * 32 + c for r in range(4) for c in range(8)}
    second = {r * 32 + c for r in range(4) for c in range(8, 16)}
    assert set(order[:32].tolist()) == first and set(order[32:64].tolist()) == second


@pytest.mark.parametrize("name", NAMES)
def test_grid_full_budget_is_exact(name):
    q, k, v, mask = random_inputs(2, 2, 1024, 16)
    attn = make(name, MAX_LEN, block_per_row=32, input_shape=[32, 32])
    torch.testing.assert_close(attn(q, k, v, mask), exact(q, k, v, mask), atol=1e-5, rtol=1e-5)
    # With a partial budget the patches change which pairs are exact, hence the output.
    q, k, v = structured_qkv(1, 2, 1024, 16)
    mask = torch.ones(1, 1024, dtype=torch.bool)
    grid = make(name, MAX_LEN, block_per_row=2, input_shape=[32, 32])(q, k, v, mask)
    flat = make(name, MAX_LEN, block_per_row=2)(q, k, v, mask)
    assert not torch.allclose(grid, flat)


@pytest.mark.parametrize("options, message", [
    ({"input_shape": [30, 30]}, "tiles"),
    ({"input_shape": [3, 8]}, "tiles"),  # an 8 x 8 grid would tile: the height is checked
    ({"input_shape": [32]}, r"\[H, W\]"),
    ({"input_shape": [0, 4]}, r"^mra: input_shape must be \[H, W\] with two positive ints, "
                              r"got \[0, 4\]$"),
    ({"input_shape": [True, 4]}, r"two positive ints, got \[True, 4\]$"),
    ({"block_size": 0}, r"^mra: block_size must be an int >= 1, got 0$"),
    ({"block_per_row": 0}, r"^mra: block_per_row must be an int >= 1, got 0$"),
    ({"initial_prior_first_n_blocks": -1}, "initial_prior_first_n_blocks"),
    ({"initial_prior_diagonal_n_blocks": -1},
     r"^mra: initial_prior_diagonal_n_blocks must be an int >= 0, got -1$"),
    ({"backend": "x"}, r"^mra: backend must be one of .*, got 'x'$"),
    ({"budget_from": "x"}, r"^mra: budget_from must be one of max_seq_len, real_length, "
                           r"got 'x'$"),
])
def test_bad_options_are_explained(options, message):
    with pytest.raises(AttentionError, match=message):
        make("mra2", MAX_LEN, **options)


def test_smallest_options_are_accepted():
    make("mra2", block_size=1, block_per_row=1)
    make("mra2", input_shape=[1, 32])


def test_grid_length_mismatch_is_explained():
    q, k, v, mask = random_inputs(1, 2, 1000, 16)
    with pytest.raises(AttentionError, match=r"^mra2: input_shape 32 x 32 = 1024 tokens does not "
                                             r"match the sequence length 1000$"):
        make("mra2", MAX_LEN, input_shape=[32, 32])(q, k, v, mask)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(name, dtype):
    q, k, v, mask = random_inputs(2, 2, 300, 32)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    attn = make(name, MAX_LEN, head_dim=32, block_per_row=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v, mask)
    assert out.dtype == dtype
    reference = attn(q.float(), k.float(), v.float(), mask)
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


def test_patch_shape_takes_a_row_or_a_column_when_only_that_tiles():
    """A grid 3 tokens high takes 1 x 32 patches; 3 wide, 32 x 1; otherwise the most square."""
    assert patch_shape(3, 64, 32) == (1, 32)
    assert patch_shape(64, 3, 32) == (32, 1)
    assert patch_shape(32, 32, 32) == (4, 8) and patch_shape(16, 16, 16) == (4, 4)


def test_mra_attention_defaults_to_no_priors_and_the_example_budget():
    """Called without them, mra_attention has no priors, sizes the budget from each example's
    real blocks and uses the reference kernel; each prior changes the result on these inputs."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 64, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.arange(64)[None] < torch.tensor([[64], [41]])
    common = dict(block_size=8, block_per_row=1, approx_mode="sparse")
    default = mra_attention(q, k, v, mask, **common)
    explicit = mra_attention(q, k, v, mask, first_n=0, diagonal_n=0, budget_blocks=None,
                             **common)
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    for prior in ({"first_n": 1}, {"diagonal_n": 1}, {"budget_blocks": 16}):
        assert (mra_attention(q, k, v, mask, **prior, **common) - default).abs().max() > 1e-3


def test_prior_tiers_count_the_band_and_the_first_blocks():
    """diagonal_n = 4 marks |row - col| <= 2 (n // 2, as published), first_n = 2 the first two
    rows and columns; a pair in both counts 2."""
    idx = torch.arange(6)
    band = ((idx[:, None] - idx[None, :]).abs() <= 2).long()
    first = ((idx[:, None] < 2) | (idx[None, :] < 2)).long()
    cpu = torch.device("cpu")
    assert torch.equal(prior_tiers(6, 0, 4, cpu), band)
    assert torch.equal(prior_tiers(6, 0, 5, cpu), band)
    assert torch.equal(prior_tiers(6, 2, 0, cpu), first)
    assert torch.equal(prior_tiers(6, 2, 4, cpu), band + first)


def test_unknown_approx_mode_is_explained():
    q = torch.randn(1, 1, 16, 4)
    with pytest.raises(AttentionError, match=r"^mra: approx_mode must be 'full' or 'sparse', "
                                             r"got 'dense'$"):
        mra_attention(q, q, q, torch.ones(1, 16, dtype=torch.bool), block_size=8,
                      block_per_row=1, approx_mode="dense")


def test_each_query_block_is_normalised_on_its_own_however_large_another_blocks_logits():
    """MRA-2 shifts each query row's low-resolution logits by that row's own maximum, so a
    query block with logits near 500 (where a shift shared with it would underflow every other
    row's exp to 0) leaves the other blocks' outputs as they were. The diagonal prior with a
    budget of one pair per block row fixes the exact blocks, so block 0's queries reach no
    other row's choice."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 32, 4, generator=gen) for _ in range(3))
    k[..., 0] += 2.0  # every key block mean points the same way along dim 0
    mask = torch.ones(1, 32, dtype=torch.bool)
    common = dict(block_size=8, block_per_row=1, approx_mode="full", diagonal_n=1)
    before = mra_attention(q, k, v, mask, **common)
    loud = q.clone()
    loud[:, :, :8, 0] = 500.0
    after = mra_attention(loud, k, v, mask, **common)
    assert (after[:, :, :8] - before[:, :, :8]).abs().max() > 0.1  # block 0 did change
    torch.testing.assert_close(after[:, :, 8:], before[:, :, 8:])


def test_the_exact_blocks_run_on_the_backend_that_resolve_picked(monkeypatch):
    """_attend hands the exact blocks to the kernel `kernels.resolve` returned (and reports its
    name), not to a fixed one: a recording backend that delegates to the reference sees the
    calls, and the output is the reference's."""
    import kernels
    from kernels.block_sparse import reference

    calls = []

    class Recording:
        @staticmethod
        def attention(*args, **kwargs):
            calls.append(kwargs["block_size"])
            return reference.attention(*args, **kwargs)

    q, k, v, mask = random_inputs(2, 2, 64, 16)
    expected = make("mra2", 64, block_size=16, block_per_row=2, backend="reference")(q, k, v,
                                                                                   mask)
    monkeypatch.setattr(kernels, "resolve", lambda family, backend, device: ("recording",
                                                                            Recording))
    attn = make("mra2", 64, block_size=16, block_per_row=2)
    out = attn(q, k, v, mask)
    assert calls == [16] and attn.backend_in_use == "recording"
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
