"""kernels.block_sparse: every backend against the reference (and the reference against a dense
oracle written here), forward and backward, on fresh random inputs; backend choice and fallback;
MRA training on either backend."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import kernels
from attention_zoo import build_attention
from kernels import backend as kernel_backend
from kernels.block_sparse import csr_from_pairs, reference

# Every CPU backend but the oracle, whether or not it loads: one that cannot load fails its tests.
FAST = [n for n in kernel_backend.registered_backends("block_sparse", "cpu") if n != "reference"]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Kernels fill their outputs with NaN first: an element they never write fails a check."""
    monkeypatch.setenv("LRA_KERNELS_POISON", "1")


def random_problem(seed: int, *, batch: int, heads: int, seq: int, d: int, block: int,
                   per_row: int, dtype=torch.float32):
    """Random q, k, v, suffix padding per example and a random CSR of at most `per_row * nb`
    distinct pairs per (batch, head), with a random per-example budget as MRA keeps them."""
    gen = torch.Generator().manual_seed(seed)
    padded = -(-seq // block) * block
    nb = padded // block
    q, k, v = (torch.randn(batch, heads, padded, d, generator=gen, dtype=dtype)
               for _ in range(3))
    lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
    lengths[0] = seq
    key_real = torch.arange(padded)[None, :] < lengths[:, None]
    pairs = min(per_row * nb, nb * nb)
    flat = torch.stack([torch.stack([torch.randperm(nb * nb, generator=gen)[:pairs]
                                     for _ in range(heads)]) for _ in range(batch)])
    budget = torch.randint(1, pairs + 1, (batch,), generator=gen)
    budget[0] = pairs
    kept = torch.arange(pairs)[None, None, :] < budget[:, None, None]
    row_offsets, col_index = csr_from_pairs(flat // nb, flat % nb, kept, nb)
    return q, k, v, key_real, row_offsets, col_index


def dense_oracle(q, k, v, key_real, row_offsets, col_index, block):
    """The same attention through an explicit (seq, seq) mask built pair by pair."""
    batch, heads, seq, _ = q.shape
    allowed = torch.zeros(batch, heads, seq, seq, dtype=torch.bool)
    for z in range(batch):
        for h in range(heads):
            offsets = row_offsets[z, h].tolist()
            for row in range(seq // block):
                for slot in range(offsets[row], offsets[row + 1]):
                    col = int(col_index[z, h, slot])
                    rows, cols = slice(row * block, (row + 1) * block), slice(col * block,
                                                                              (col + 1) * block)
                    allowed[z, h, rows, cols] = True
    allowed &= key_real[:, None, None, :]
    logits = (q @ k.mT / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    weights = torch.where(allowed, torch.exp(logits - lse[..., None]), 0)
    return weights @ v, lse


def relative(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run(impl, problem, block, grads):
    """out, lse and the gradients of sum(out * g_out) + sum(lse * g_lse) (finite lse only)."""
    q, k, v, key_real, row_offsets, col_index = problem
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = impl.attention(*leaves, key_real, row_offsets, col_index, block_size=block,
                              scale=q.shape[-1] ** -0.5)
    g_out, g_lse = grads
    loss = (out * g_out).sum() + torch.where(torch.isfinite(lse), lse * g_lse, 0).sum()
    return (out, lse, *torch.autograd.grad(loss, leaves))


def assert_same_lse(lse, target, tol):
    assert torch.equal(torch.isinf(lse), torch.isinf(target))
    finite = torch.isfinite(target)
    scale = target[finite].abs().clamp_min(1).max()
    assert (lse[finite] - target[finite]).abs().max() <= tol * scale


def test_reference_equals_dense_oracle():
    problem = random_problem(0, batch=2, heads=2, seq=100, d=16, block=16, per_row=3,
                             dtype=torch.float64)
    out, lse = reference.attention(*problem, block_size=16, scale=16 ** -0.5)
    dense_out, dense_lse = dense_oracle(*problem, 16)
    torch.testing.assert_close(out, dense_out, atol=1e-12, rtol=1e-12)
    assert_same_lse(lse, dense_lse, 1e-12)
    # Some rows see no real key (budgets and padding): they are zero with lse -inf.
    assert torch.isinf(lse).any() and (out[torch.isinf(lse)] == 0).all()


# (seq, head_dim, block, per_row): block multiples or not, d 16..128, budget 1..all. In fp32 the
# C++ kernel takes AVX2 tiles for blocks and head_dims that are multiples of 16 (rows of 8 for
# the softmax) and portable loops for the rest: block 12 and head_dims 24, 40 run those.
CASES = [
    (1, 16, 32, 1), (31, 24, 32, 1), (100, 32, 32, 2), (257, 64, 32, 3), (512, 40, 32, 16),
    (333, 128, 32, 4), (96, 32, 16, 6), (77, 16, 8, 100), (1000, 64, 32, 8), (4096, 32, 32, 1),
    (120, 24, 12, 3),
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seq, d, block, per_row", CASES)
def test_backend_matches_reference_fp32(backend, seq, d, block, per_row):
    _, impl = kernels.resolve("block_sparse", backend, "cpu")
    batch, heads = (1, 2) if seq >= 2048 else (3, 2)
    problem = random_problem(seq * 7 + d, batch=batch, heads=heads, seq=seq, d=d, block=block,
                             per_row=per_row)
    gen = torch.Generator().manual_seed(1)
    grads = (torch.randn(problem[0].shape, generator=gen),
             torch.randn(problem[0].shape[:-1], generator=gen))
    fast = run(impl, problem, block, grads)
    slow = run(reference, problem, block, grads)
    assert_same_lse(fast[1], slow[1], 1e-5)
    for got, want in zip(fast[:1] + fast[2:], slow[:1] + slow[2:], strict=True):
        assert torch.isfinite(got).all()
        assert relative(got, want) < 1e-5


@pytest.mark.filterwarnings("ignore::UserWarning")  # flex warns that it runs uncompiled
def test_flex_forward_matches_reference_on_cpu():
    """The CUDA backend's construction (block lists, mask_mod, lse) checked where it can run
    here: flex's eager forward. Its compiled kernels and backward need a GPU."""
    from kernels.block_sparse import flex

    problem = random_problem(2, batch=2, heads=2, seq=200, d=16, block=32, per_row=2)
    out, lse = flex._Backend(compiled=False).attention(*problem, block_size=32, scale=0.25)
    want, want_lse = reference.attention(*problem, block_size=32, scale=0.25)
    assert relative(out, want) < 1e-5
    assert_same_lse(lse, want_lse, 1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_backend_bf16_inputs(backend):
    _, impl = kernels.resolve("block_sparse", backend, "cpu")
    problem = random_problem(3, batch=2, heads=2, seq=300, d=32, block=32, per_row=4)
    q, k, v = (x.bfloat16() for x in problem[:3])
    out, _ = impl.attention(q, k, v, *problem[3:], block_size=32, scale=32 ** -0.5)
    want, _ = reference.attention(*(x.float() for x in (q, k, v)), *problem[3:], block_size=32,
                                  scale=32 ** -0.5)
    assert out.dtype == torch.bfloat16
    assert relative(out.float(), want) < 1e-2


@pytest.mark.parametrize("backend", FAST)
def test_backend_gradcheck_float64(backend):
    _, impl = kernels.resolve("block_sparse", backend, "cpu")
    q, k, v, *rest = random_problem(5, batch=2, heads=1, seq=20, d=4, block=8, per_row=2,
                                    dtype=torch.float64)

    def f(q, k, v):
        out, lse = impl.attention(q, k, v, *rest, block_size=8, scale=0.5)
        return out, torch.where(torch.isfinite(lse), lse, 0)

    assert torch.autograd.gradcheck(f, tuple(x.requires_grad_(True) for x in (q, k, v)))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("name", ["mra2", "mra2_s"])
@pytest.mark.parametrize("priors", [(0, 0), (1, 3)])
def test_mra_on_backend_matches_reference(backend, name, priors):
    """The whole attention (selection, merge) on each backend, padding and priors included."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(3, 2, 700, 32, generator=gen, requires_grad=True) for _ in range(3))
    mask = torch.arange(700)[None, :] < torch.tensor([700, 450, 30])[:, None]
    outs = []
    for which in (backend, "reference"):
        attn = build_attention(name, num_heads=2, head_dim=32, max_seq_len=1024, block_per_row=4,
                               initial_prior_first_n_blocks=priors[0],
                               initial_prior_diagonal_n_blocks=priors[1], backend=which)
        out = attn(q, k, v, mask)
        assert attn.backend_in_use == which
        outs.append((out, *torch.autograd.grad((out * out).sum(), (q, k, v))))
    for got, want in zip(*outs, strict=True):
        assert relative(got, want) < 1e-5


def test_auto_picks_the_fastest_backend_on_cpu():
    assert kernels.available_backends("block_sparse", "cpu")[-1] == "reference"
    name, _ = kernels.resolve("block_sparse", "auto", "cpu")
    assert name == kernels.available_backends("block_sparse", "cpu")[0]
    assert name == "cpp", "the C++ backend must build on this machine (g++, ninja)"


def test_named_backend_that_cannot_load_raises(failing_cpp):
    failing_cpp("block_sparse", "ninja not found; fix: pip install ninja")
    attn = build_attention("mra2", num_heads=1, head_dim=8, max_seq_len=64, backend="cpp")
    q = k = v = torch.randn(1, 1, 64, 8)
    with pytest.raises(kernels.BackendError, match="pip install ninja"):
        attn(q, k, v, torch.ones(1, 64, dtype=torch.bool))


def test_auto_falls_back_to_the_reference_with_one_warning(failing_cpp, caplog):
    """MRA with backend=auto on a machine whose C++ build fails: the reference's output, every
    call, and one warning naming the reason and the fix."""
    failing_cpp("block_sparse", "ninja not found; fix: pip install ninja")
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 1, 100, 8, generator=gen) for _ in range(3))
    mask = torch.arange(100)[None, :] < torch.tensor([[100], [37]])
    want = build_attention("mra2", num_heads=1, head_dim=8, max_seq_len=128,
                           backend="reference")(q, k, v, mask)
    attn = build_attention("mra2", num_heads=1, head_dim=8, max_seq_len=128, backend="auto")
    with caplog.at_level(logging.WARNING, logger="kernels"):
        for _ in range(3):
            torch.testing.assert_close(attn(q, k, v, mask), want, atol=0, rtol=0)
            assert attn.backend_in_use == "reference"
    assert [r.getMessage() for r in caplog.records if r.name == "kernels"] == [
        "kernels: block_sparse backend 'cpp' unavailable on cpu, falling back: ninja not found; "
        "fix: pip install ninja"]


def test_unknown_or_foreign_backend_is_explained():
    with pytest.raises(kernels.BackendError, match="no backend 'nope'"):
        kernels.resolve("block_sparse", "nope", "cpu")
    with pytest.raises(kernels.BackendError, match="runs on cpu, not cuda"):
        kernels.resolve("block_sparse", "cpp", "cuda")


def test_bad_backend_option_names_the_values():
    from attention_zoo import AttentionError

    with pytest.raises(AttentionError, match="backend must be one of auto, reference, cpp"):
        build_attention("mra2", num_heads=1, head_dim=8, max_seq_len=64, backend="fast")


@pytest.mark.parametrize("backend", FAST)
def test_fifty_training_steps_match_reference(backend):
    """The encoder with MRA-2 trains to the same losses on the fast backend as on the reference."""
    from lra.model import AttentionSpec, Classifier, ModelConfig

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 20, (4, 100), generator=gen)
    mask = torch.arange(100)[None, :] < torch.randint(20, 101, (4, 1), generator=gen)
    labels = torch.randint(0, 4, (4,), generator=gen)
    losses = {}
    for which in (backend, "reference"):
        torch.manual_seed(0)
        model = Classifier(ModelConfig(dropout=0.0),
                           AttentionSpec("mra2", {"block_per_row": 2, "backend": which}),
                           vocab_size=20, max_len=128, num_classes=4)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[which] = []
        for _ in range(50):
            loss = torch.nn.functional.cross_entropy(model(tokens, mask), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[which].append(loss.item())
    torch.testing.assert_close(torch.tensor(losses[backend]), torch.tensor(losses["reference"]),
                               atol=1e-4, rtol=1e-4)
    assert losses["reference"][-1] < losses["reference"][0]


def test_training_picks_the_cpp_backend_and_records_it(tiny_data_root, tmp_path):
    """`python -m lra.train attention=mra2` on CPU runs the C++ kernel unasked and says so."""
    import json

    from tests.conftest import run_train

    for name in ("mra2", "softmax"):
        run_train(f"attention={name}", f"data.root={tiny_data_root}", "data.build_missing=false",
                  f"runs_dir={tmp_path}/runs", "task.max_len=64", "trainer.batch_size=16",
                  "trainer.max_steps=2", "trainer.progress=false",
                  f"hydra.run.dir={tmp_path}/hydra-{name}")
    found = {s["attention"]: s["kernel_backend"] for s in (
        json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("summary.json"))}
    assert found == {"mra2": "cpp", "softmax": "-"}


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch, caplog):
    """A build killed mid-way leaves torch's lock file; a later load must not wait on it forever."""
    import os
    import time

    from torch.utils import cpp_extension

    from kernels import build

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "lra_test_lock" / "lock"
    lock.parent.mkdir()
    lock.touch()
    build._clear_stale_lock("lra_test_lock", cpp_extension)
    assert lock.exists()  # a build in progress: keep waiting on it
    old = time.time() - build.STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    with caplog.at_level(logging.WARNING, logger="kernels"):
        build._clear_stale_lock("lra_test_lock", cpp_extension)
    assert not lock.exists() and "stale build lock" in caplog.text
