"""kernels.lsh: the C++ backend equals the reference for the same hash draws, both equal the
estimators written densely from the collision matrices (v2 with and without the published
1024-slot workspace, here with fewer slots so that small inputs exercise it), v2's mean over
draws is its stated expectation, and backend choice falls back as documented. The C++ library
builds once per machine (cached by torch), about a minute the first time."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from attention_zoo import build_attention
from kernels.backend import BackendError, resolve
from kernels.lsh import lsh_cumulation, reference, simhash_codes


@pytest.fixture(scope="module")
def cpp():
    try:
        return resolve("lsh", "cpp", "cpu")[1]
    except BackendError as err:  # a machine without a compiler: say so, do not hide it
        pytest.fail(f"the lsh C++ backend did not build: {err}")


@dataclasses.dataclass
class Case:
    """Inputs as YosoAttention makes them: unit q, k; padded keys in the trash bucket 2^tau and
    their v rows zero; each example's codes cut to its own bits."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor  # an output gradient
    q_codes: torch.Tensor
    k_codes: torch.Tensor
    bits: torch.Tensor
    num_buckets: int


def make_case(seed: int, n: int, d: int, tau: int, rounds: int, dtype=torch.float64,
              batch: int = 2, heads: int = 2, planes: torch.Tensor | None = None) -> Case:
    gen = torch.Generator().manual_seed(seed)
    q, k, v, g = (torch.randn(batch, heads, n, d, generator=gen, dtype=dtype) for _ in range(4))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    lengths = torch.randint(1, n + 1, (batch,), generator=gen)
    lengths[0] = n
    mask = torch.arange(n)[None, :] < lengths[:, None]  # (batch, n)
    bits = torch.randint(1, tau + 1, (batch,), generator=gen)
    bits[0] = tau
    if planes is None:
        planes = torch.randn(heads, rounds, d, tau, generator=gen, dtype=dtype)
    low = ((1 << bits) - 1)[:, None, None]
    q_codes = simhash_codes(q, planes) & low
    k_codes = (simhash_codes(k, planes) & low).masked_fill(~mask[:, None, :], 2**tau)
    v = torch.where(mask[:, None, :, None], v, 0)
    return Case(q, k, v, g, q_codes, k_codes, bits, 2**tau + 1)


def run(module, case: Case, *settings):
    """(out, dq, dk, dv) of module.lsh_cumulation for the case's output gradient; settings:
    (estimator, slots, seed), or a prefix of them with the function's defaults for the rest."""
    leaves = [x.clone().requires_grad_(True) for x in (case.q, case.k, case.v)]
    out = module.lsh_cumulation(*leaves, case.q_codes, case.k_codes, case.bits, case.num_buckets,
                                *settings)
    out.backward(case.g)
    return [out.detach(), *(x.grad for x in leaves)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


MASK32 = 2**32 - 1


def mix(x: int) -> int:
    """The documented 32-bit mixer, on Python ints."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & MASK32
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & MASK32
    return x ^ (x >> 16)


def survivors(codes_out: torch.Tensor, codes_in: torch.Tensor, slots: int, seed: int
              ) -> torch.Tensor:
    """The capped support, one (row, slot) at a time: among the collision events (b, r) of the
    inputs b = slot, slot + slots, ..., the one of smallest key mix(mix(mix(mix(seed ^ h) ^ a)
    ^ b) ^ r), ties to the smaller b, keeps its b. -> (batch, heads, n_out, n_in) bool."""
    rounds, batch, heads, n_out = codes_out.shape
    n_in = codes_in.shape[-1]
    keep = torch.zeros(batch, heads, n_out, n_in, dtype=torch.bool)
    for x, h, a in itertools.product(range(batch), range(heads), range(n_out)):
        for slot in range(min(slots, n_in)):
            events = [(mix(mix(mix(mix(seed ^ h) ^ a) ^ b) ^ r), b)
                      for b in range(slot, n_in, slots) for r in range(rounds)
                      if codes_out[r, x, h, a] == codes_in[r, x, h, b]]
            if events:
                keep[x, h, a, min(events)[1]] = True
    return keep


def dense(case: Case, estimator: str, slots: int = 0, seed: int = 0):
    """(out, dq, dk, dv) written with the (n, n) collision matrices S^r of the codes."""
    s = (case.q_codes[..., :, None] == case.k_codes[..., None, :]).to(case.v.dtype)
    mean_s, union = s.mean(0), s.amax(0)  # (batch, heads, n, n)
    tau = case.bits.to(case.v.dtype)[:, None, None, None]
    gv = case.g @ case.v.transpose(-1, -2)  # g_i . v_j
    if estimator == "v1":
        pair_q = pair_k = tau / 2 * mean_s * gv
    else:
        y = 0.99 * case.q @ case.k.transpose(-1, -2)
        slope = tau * (1 - torch.arccos(y) / math.pi) ** (tau - 1) / math.pi
        pair_q = pair_k = union * slope * (1 - y**2).rsqrt().clamp_max(10) * gv
        if slots:
            pair_q = pair_q * survivors(case.q_codes, case.k_codes, slots, seed)
            pair_k = pair_k * survivors(case.k_codes, case.q_codes, slots, seed).transpose(-1, -2)
    return (mean_s @ case.v, pair_q @ case.k, pair_k.transpose(-1, -2) @ case.q,
            mean_s.transpose(-1, -2) @ case.g)


# Lengths 1..600 (non-powers of 2), head_dim 16..128, tau 1..12, rounds 1..16; head_dim 20 is
# not a multiple of 8, so fp32 also runs the C++ dots' generic path (the others the AVX2 one).
SHAPES = [(1, 16, 1, 1), (7, 16, 3, 2), (64, 32, 6, 16), (129, 64, 12, 4), (300, 128, 9, 8),
          (600, 48, 12, 3), (45, 20, 5, 3)]


# (estimator, slots): v2 with every colliding pair, v2 cut to few slots, v1.
ESTIMATORS = [("v2", 0), ("v2", 5), ("v1", 0)]
# ... and the workspace's edges: one slot, and more slots than head_dim (8) but fewer than n (45).
DOCUMENTED = [*ESTIMATORS, ("v2", 1), ("v2", 12)]
# Reference table budgets (entries): one element forces one row (v2) or one channel (v1) per
# chunk; 4320 = 3 channels of the v1 table (2 * 2 * 45 rows * 8) and 4 rows of the v2 one
# (2 * 2 * 45 inputs * 5 rounds), each ending in a partial chunk.
BUDGETS = {"reference_in_one_element_chunks": 1, "reference_in_small_chunks": 4320}


@pytest.mark.parametrize("estimator, slots", ESTIMATORS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("n, d, tau, rounds", SHAPES)
def test_cpp_equals_reference(cpp, monkeypatch, n, d, tau, rounds, dtype, tol, estimator, slots):
    """Same hash draws, fresh random inputs with random padding: forward and all three gradients
    agree; outputs start as NaN (LRA_KERNELS_POISON), so an element left unwritten fails."""
    monkeypatch.setenv("LRA_KERNELS_POISON", "1")
    case = make_case(1000 * n + d, n, d, tau, rounds, dtype)
    for name, ours, oracle in zip(("out", "dq", "dk", "dv"), run(cpp, case, estimator, slots, n),
                                  run(reference, case, estimator, slots, n), strict=True):
        err = relative_error(ours, oracle)
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("backend", ["cpp", "reference", *BUDGETS])
@pytest.mark.parametrize("estimator, slots", DOCUMENTED)
def test_backends_compute_the_documented_estimators(cpp, monkeypatch, backend, estimator, slots):
    """Each backend against the dense formulas of kernels/lsh/__init__.py (fp64), the workspace's
    survivors drawn one slot at a time. At LRA sizes the reference cuts its tables into chunks
    (TABLE_BUDGET), which these sizes never reach unless the budget is made small (BUDGETS)."""
    if backend in BUDGETS:
        monkeypatch.setattr(reference, "TABLE_BUDGET", BUDGETS[backend])
    module = cpp if backend == "cpp" else reference
    case = make_case(3, 45, 8, 3, 5)
    for name, ours, formula in zip(("out", "dq", "dk", "dv"),
                                   run(module, case, estimator, slots, 77),
                                   dense(case, estimator, slots, 77), strict=True):
        err = relative_error(ours, formula)
        assert err < 1e-12, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("needed", [(0,), (1,), (2,), (0, 2)])
def test_only_the_gradients_asked_for_are_computed_and_they_are_the_full_ones(cpp, backend,
                                                                             needed):
    module = cpp if backend == "cpp" else reference
    case = make_case(6, 33, 8, 3, 4)
    full = run(module, case, "v2", 5, 9)[1:]
    leaves = [x.clone().requires_grad_(i in needed) for i, x in enumerate((case.q, case.k, case.v))]
    module.lsh_cumulation(*leaves, case.q_codes, case.k_codes, case.bits, case.num_buckets, "v2",
                          5, 9).backward(case.g)
    for i, (leaf, want) in enumerate(zip(leaves, full, strict=True)):
        if i in needed:
            assert torch.equal(leaf.grad, want)
        else:
            assert leaf.grad is None


def test_simhash_codes_are_the_sign_bits_and_a_point_on_a_plane_is_on_its_negative_side():
    """Bit t of round r is [x . plane_{r,t} > 0], read as a binary number (bit 0 lowest): here
    worked out by hand, with dot products of exactly 0 (the zero vector, a point on a plane)."""
    # planes (heads 1, rounds 2, d 2, tau 2), column t the plane: round 0 e0, e1; round 1 -e0, e0+e1
    planes = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 1.0], [0.0, 1.0]]]])
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, -1.0], [-2.0, 0.0]])[None, None]
    # round 0: (1 1) -> 0b11; (0 0) -> 0; (1 -1) -> 0b01; (-2 0) -> 0 (on plane e1)
    # round 1: (1 1) -> 0b10; (0 0) -> 0; (1 -1) -> 0 (on plane e0+e1); (-2 0) -> 0b01
    expected = torch.tensor([[3, 0, 1, 0], [2, 0, 0, 1]])[:, None, None, :]
    assert torch.equal(simhash_codes(x, planes), expected)


@pytest.mark.parametrize("function", ["lsh_cumulation", "weighted_cumulation"])
def test_backends_take_the_same_arguments_and_defaults(cpp, function):
    """kernels.backend calls every backend module through the same names: their signatures agree,
    and lsh_cumulation's defaults are the entry point's (v2, no workspace cap, seed 0)."""
    def defaults(fn, leave_out=()):
        return [(name, p.default) for name, p in inspect.signature(fn).parameters.items()
                if name not in leave_out]

    want = defaults(getattr(reference, function))
    assert defaults(getattr(cpp, function)) == want
    if function == "lsh_cumulation":
        assert defaults(lsh_cumulation, leave_out=("backend",)) == want
    # ... and a call that leaves them out computes with them (v2, no cap, seed 0)
    case = make_case(5, 30, 8, 3, 4)
    for module in (reference, cpp):
        if function == "lsh_cumulation":
            for got, want in zip(run(module, case), run(module, case, "v2", 0, 0), strict=True):
                assert torch.equal(got, want)
        else:
            args = (case.q_codes, case.q, case.g, case.k_codes, case.v, case.k, case.bits,
                    case.num_buckets, "v2")
            assert torch.equal(module.weighted_cumulation(*args),
                               module.weighted_cumulation(*args, 0, 0))


def test_the_reference_cuts_its_tables_to_the_budget(monkeypatch):
    """The point of TABLE_BUDGET: each chunk's tables fit it. At 4320 entries (batch 2, heads 2,
    45 tokens, head_dim 8, 5 rounds, 65 buckets) a v2 chunk is 4 output rows (4 * 45 inputs *
    5 rounds * 4 pairs of (batch, head) = 3600), the last one 1; a v1 chunk is 2 channels of the
    (65-bucket) table; at 1 entry, one row and one channel. Every row and channel once."""
    case = make_case(3, 45, 8, 6, 5)
    args = (case.q_codes, case.q, case.g, case.k_codes, case.v, case.k, case.bits,
            case.num_buckets)
    rows, channels = [], []
    weight, bucket = reference.v2_weight, reference.bucket_cumulation
    monkeypatch.setattr(reference, "v2_weight",
                        lambda sim, tau: rows.append(sim.shape[-2]) or weight(sim, tau))
    monkeypatch.setattr(reference, "bucket_cumulation", lambda c_out, c_in, values, n: (
        channels.append(values.shape[-1] // 8) or bucket(c_out, c_in, values, n)))
    for budget, v2_rows, v1_channels in [(4320, [4] * 11 + [1], [2] * 4), (1, [1] * 45, [1] * 8)]:
        monkeypatch.setattr(reference, "TABLE_BUDGET", budget)
        rows.clear()
        channels.clear()
        reference.weighted_cumulation(*args, "v2")
        reference.weighted_cumulation(*args, "v1")
        assert rows == v2_rows
        assert channels == v1_channels * 5  # per round


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_an_unknown_estimator_is_named(cpp, backend):
    module = cpp if backend == "cpp" else reference
    case = make_case(2, 10, 4, 2, 2)
    message = "estimator must be 'v1' or 'v2', got 'v3'"
    with pytest.raises((ValueError, RuntimeError), match=message):
        module.weighted_cumulation(case.q_codes, case.q, case.g, case.k_codes, case.v, case.k,
                                   case.bits, case.num_buckets, "v3")


def test_slot_survivors_follow_the_collision_counts():
    """Per slot the survivor is drawn over collision events: over many seeds, a key that collides
    in 3 rounds survives 3 times as often as its slot-mate that collides in 1 (within 5 standard
    errors), and a slot holding one colliding key always keeps it."""
    rounds, draws = 4, 3000
    # One query (code 0 every round); keys 0 and 2 share slot 0 of 2 slots, key 1 has slot 1.
    codes_out = torch.zeros(rounds, 1, 1, 1, dtype=torch.long)
    codes_in = torch.tensor([[0, 0, 1], [0, 1, 1], [0, 1, 1], [1, 1, 0]])[:, None, None, :]
    kept = torch.stack([reference.slot_survivors(codes_out[..., None] == codes_in[..., None, :],
                                                 torch.arange(1), 2, seed)[0, 0, 0]
                        for seed in range(draws)]).double()  # (draws, 3)
    assert (kept[:, 1] == 1).all() and (kept[:, 0] + kept[:, 2] == 1).all()
    share = kept[:, 0].mean().item()
    assert abs(share - 0.75) < 5 * math.sqrt(0.75 * 0.25 / draws)


def test_gradcheck_v(cpp):
    """dv is the exact gradient of the sampled forward: gradcheck (fp64) through the C++ ops."""
    case = make_case(4, 11, 4, 2, 3)
    v = case.v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: cpp.lsh_cumulation(case.q, case.k, v, case.q_codes, case.k_codes, case.bits,
                                     case.num_buckets, "v2", 3, 1), (v,))


def test_ops_pass_opcheck(cpp):
    """Schemas, fake kernels (torch.compile) and the autograd registration hold up."""
    case = make_case(5, 13, 4, 2, 2)
    ops = torch.ops.lra_lsh
    q, k, v = (x.clone().requires_grad_(True) for x in (case.q, case.k, case.v))
    codes = case.q_codes, case.k_codes
    torch.library.opcheck(ops.cumulation.default, (*codes, case.v))
    for estimator in ("v1", "v2"):
        torch.library.opcheck(ops.weighted_cumulation.default,
                              (codes[0], case.q, case.g, codes[1], case.v, case.k, case.bits,
                               estimator, 4, 7))
        torch.library.opcheck(ops.lsh_cumulation.default,
                              (q, k, v, *codes, case.bits, estimator, 4, 7))


@pytest.mark.parametrize("estimator", ["v2", "v1"])
def test_mean_over_draws_is_the_expected_gradient(cpp, estimator):
    """Averaged over hash draws, dq equals its expectation (fp64, per element within 5 standard
    errors of the mean over draws, plus 1e-9):
    v2: sum_j (1 - (1 - B_ij)^m) w(q_i . k_j) (g_i . v_j) k_j;
    v1: (tau / 2) sum_j B_ij (g_i . v_j) k_j;
    B_ij = (1 - arccos(q_i . k_j) / pi)^tau. Draws are heads with their own hyperplanes."""
    n, d, tau, rounds, draws = 24, 8, 2, 2, 4000
    gen = torch.Generator().manual_seed(8)
    q, k, v, g = (torch.randn(1, 1, n, d, generator=gen, dtype=torch.float64) for _ in range(4))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    planes = torch.randn(draws, rounds, d, tau, generator=gen, dtype=torch.float64)
    q, k, v, g = (x.expand(1, draws, n, d).contiguous() for x in (q, k, v, g))
    bits = torch.tensor([tau])
    dq = cpp.weighted_cumulation(simhash_codes(q, planes), q, g, simhash_codes(k, planes), v, k,
                                 bits, 2**tau, estimator)[0]  # (draws, n, d)
    x = q[0, 0] @ k[0, 0].T
    b = (1 - torch.arccos(x) / math.pi) ** tau
    gv = g[0, 0] @ v[0, 0].T
    if estimator == "v2":
        y = 0.99 * x
        slope = tau * (1 - torch.arccos(y) / math.pi) ** (tau - 1) / math.pi
        pair = (1 - (1 - b) ** rounds) * slope * (1 - y**2).rsqrt().clamp_max(10) * gv
    else:
        pair = tau / 2 * b * gv
    expected = pair @ k[0, 0]
    stderr = dq.std(dim=0) / math.sqrt(draws)
    gap = (dq.mean(dim=0) - expected).abs()
    print(f"\n{estimator}: max |mean - E| / stderr = {(gap / stderr).max():.2f}")
    assert (gap <= 5 * stderr + 1e-9).all()


def test_auto_picks_cpp_on_cpu(cpp):
    assert resolve("lsh", "auto", "cpu")[0] == "cpp"
    case = make_case(6, 20, 8, 3, 2)
    _, used = lsh_cumulation(case.q, case.k, case.v, case.q_codes, case.k_codes, case.bits,
                             case.num_buckets)
    assert used == "cpp"


def test_named_backend_that_cannot_load_raises(failing_cpp):
    failing_cpp("lsh", "no compiler (test)")
    case = make_case(6, 20, 8, 3, 2)
    with pytest.raises(BackendError, match="no compiler"):
        lsh_cumulation(case.q, case.k, case.v, case.q_codes, case.k_codes, case.bits,
                       case.num_buckets, backend="cpp")
    with pytest.raises(BackendError, match="runs on cpu"):
        resolve("lsh", "cpp", "cuda")


def test_auto_falls_back_to_reference_with_one_warning(failing_cpp, caplog):
    failing_cpp("lsh", "no compiler (test)")
    case = make_case(6, 20, 8, 3, 2)
    with caplog.at_level(logging.WARNING, logger="kernels"):
        for _ in range(2):
            _, used = lsh_cumulation(case.q, case.k, case.v, case.q_codes, case.k_codes,
                                     case.bits, case.num_buckets)
            assert used == "reference"
    warnings = [r for r in caplog.records if r.name == "kernels"]
    assert len(warnings) == 1 and "no compiler" in warnings[0].getMessage()


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_yoso_reports_its_backend_and_backends_agree(cpp, backend):
    """The attention names the backend it ran; the same module state gives the same output and
    gradients on either backend."""
    attn = build_attention("yoso", num_heads=2, head_dim=16, max_seq_len=256, backend=backend,
                           seed=3).train()
    twin = build_attention("yoso", num_heads=2, head_dim=16, max_seq_len=256, backend="auto",
                           seed=3).train()
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 2, 200, 16, generator=gen, requires_grad=True) for _ in range(3))
    mask = torch.arange(200)[None, :] < torch.tensor([[200], [123]])
    results = []
    for module in (attn, twin):
        out = module(q, k, v, mask)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        results.append((out, *grads))
    assert attn.backend_in_use == backend and twin.backend_in_use == "cpp"
    for ours, auto in zip(*results, strict=True):
        assert relative_error(ours, auto) < 1e-5
