"""The contract every registered attention keeps: one parametrised suite over the registry."""

from __future__ import annotations

import pytest
import torch
from conftest import attention_cases, make, same_draws

from attention_zoo import AttentionError
from attention_zoo.masking import suffix_mask

HEADS, HEAD_DIM, MAX_LEN = 2, 16, 2048
# Kernel-backed attentions appear once per CPU backend ("mra2", "mra2@reference", ...).
ALL = attention_cases()


def inputs(batch: int, seq: int, *, seed: int = 0, dtype=torch.float32, lengths=None):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, HEADS, seq, HEAD_DIM, generator=gen, dtype=dtype)
               for _ in range(3))
    if lengths is None:
        lengths = [seq] * batch
    return q, k, v, suffix_mask(lengths, seq)


def qk_for(attn, q, k):
    """Methods with shared q/k get k = q, as the encoder gives them."""
    return (q, q) if attn.needs_shared_qk else (q, k)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seq", [1, 37, 512, 2048])
def test_shape_dtype_finite_and_gradients(name, seq):
    attn = make(name, MAX_LEN).train()
    lengths = [seq, max(1, seq - seq // 3)]
    q, k, v, mask = inputs(2, seq, lengths=lengths)
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    qq, kk = qk_for(attn, q, k)
    out = attn(qq, kk, v, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    # Padded query rows are exactly zero.
    assert (out[~mask[:, None, :, None].expand_as(out)] == 0).all()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    params = [p for p in attn.parameters() if p.grad is not None]
    for grad in [q.grad, v.grad, *(p.grad for p in params)] + ([] if attn.needs_shared_qk
                                                                else [k.grad]):
        assert grad is not None and torch.isfinite(grad).all()
    assert v.grad.abs().sum() > 0
    if seq > 1:  # with one key, softmax weights are constant and dq is truly zero
        assert q.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_float64_keeps_dtype(name):
    attn = make(name, MAX_LEN).double().eval()
    q, k, v, mask = inputs(2, 64, dtype=torch.float64, lengths=[64, 40])
    out = attn(*qk_for(attn, q, k), v, mask)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("train", [False, True])
def test_padding_invariance(name, train):
    """Changing what sits in padded positions never changes a real output."""
    attn = make(name, MAX_LEN).train(train)
    seq = 300
    lengths = [300, 177, 64, 1]
    q, k, v, mask = inputs(4, seq, lengths=lengths)
    junk = inputs(4, seq, seed=7)[:3]
    pad = ~mask[:, None, :, None]
    q2, k2, v2 = (torch.where(pad, 100 * j, x) for x, j in zip((q, k, v), junk, strict=True))
    # A twin in the same state (weights, buffers, draw counters) makes the same random draws
    # (features, hashes, random blocks) on its next call, so only the padded values differ.
    attn_b = make(name, MAX_LEN).train(train)
    attn_b.load_state_dict(attn.state_dict())
    # Attention dropout draws from torch's global RNG: one seed before each call, one mask.
    torch.manual_seed(5)
    out1 = attn(*qk_for(attn, q, k), v, mask)
    torch.manual_seed(5)
    out2 = attn_b(*qk_for(attn_b, q2, k2), v2, mask)
    real = mask[:, None, :, None].expand_as(out1)
    torch.testing.assert_close(out1[real], out2[real], atol=1e-5, rtol=1e-5)


def outputs_and_grads(attn, q, k, v, mask):
    """Output and the gradients of a fixed weighted sum of it w.r.t. q, k, v and the parameters,
    for leaf copies of q, k, v (k is q for shared-qk methods)."""
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = attn(*qk_for(attn, q, k), v, mask)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    grads = [x.grad for x in (q, k, v)] + [p.grad for p in attn.parameters()]
    return out.detach(), grads


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("fill", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_padding_cannot_leak(name, fill):
    """NaN or +-inf in padded q, k, v changes no real output and no gradient, and makes nothing
    non-finite: padded rows are selected away (never multiplied by 0) before any product."""
    seq = 150
    q, k, v, mask = inputs(4, seq, lengths=[seq, 97, 33, 1])
    pad = ~mask[:, None, :, None]
    attn = make(name, MAX_LEN).train()
    attn_b = make(name, MAX_LEN).train()
    attn_b.load_state_dict(attn.state_dict())  # same state, same random draws (see above)
    torch.manual_seed(5)  # and the same attention-dropout mask
    out, grads = outputs_and_grads(attn, q, k, v, mask)
    bad = [x.masked_fill(pad, fill) for x in (q, k, v)]
    torch.manual_seed(5)
    out_bad, grads_bad = outputs_and_grads(attn_b, *bad, mask)
    assert torch.isfinite(out_bad).all()
    assert (out_bad[pad.expand_as(out_bad)] == 0).all()
    torch.testing.assert_close(out_bad, out, atol=0, rtol=0)
    for grad, grad_bad in zip(grads, grads_bad, strict=True):
        if grad is None:  # k of a shared-qk method, or a parameter the call does not use
            assert grad_bad is None
            continue
        assert torch.isfinite(grad_bad).all()
        torch.testing.assert_close(grad_bad, grad, atol=0, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_empty_batch(name):
    """Batch size 0 gives an empty output of the input's shape and dtype (and a usable graph)."""
    attn = make(name, MAX_LEN).train()
    q, k, v, mask = inputs(0, 37)
    q.requires_grad_(True)
    out = attn(*qk_for(attn, q, k), v, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    out.sum().backward()
    assert q.grad.shape == q.shape


@pytest.mark.parametrize("name", ALL)
def test_padded_length_invariance(name):
    """More trailing padding (a batch padded to a longer example) changes no real output."""
    attn = same_draws(make(name, MAX_LEN).eval())
    q, k, v, mask = inputs(2, 300, lengths=[300, 200])
    longer = [torch.nn.functional.pad(x, (0, 0, 0, 400)) for x in (q, k, v)]
    out = attn(*qk_for(attn, q, k), v, mask)
    out_long = attn(*qk_for(attn, longer[0], longer[1]), longer[2],
                    torch.nn.functional.pad(mask, (0, 400)))
    torch.testing.assert_close(out_long[:, :, :300], out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_batch_independence(name):
    """An example's output does not depend on the other examples in its batch."""
    attn = same_draws(make(name, MAX_LEN).eval())
    q, k, v, mask = inputs(3, 200, lengths=[200, 120, 33])
    full = attn(*qk_for(attn, q, k), v, mask)
    for i in range(3):
        sl = slice(i, i + 1)
        alone = attn(*qk_for(attn, q[sl], k[sl]), v[sl], mask[sl])
        torch.testing.assert_close(alone, full[sl], atol=1e-5, rtol=1e-5)
    # Changing another example (values and its padding) leaves example 0 alone.
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[1:].normal_()
    k2[1:].normal_()
    v2[1:].normal_()
    mask2 = mask.clone()
    mask2[1, 60:] = False
    other = attn(*qk_for(attn, q2, k2), v2, mask2)
    torch.testing.assert_close(other[:1], full[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output(name):
    q, k, v, mask = inputs(2, 256, lengths=[256, 100])
    for train in (False, True):
        outs = []
        for _ in range(2):
            attn = make(name, MAX_LEN, torch_seed=11).train(train)
            outs.append(attn(*qk_for(attn, q, k), v, mask))
        torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_all_padding_example_is_zero_and_finite(name):
    attn = make(name, MAX_LEN).eval()
    q, k, v, mask = inputs(2, 64, lengths=[64, 0])
    out = attn(*qk_for(attn, q, k), v, mask)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all()


def test_unknown_name_lists_valid_names():
    with pytest.raises(AttentionError, match="unknown attention 'nope'.*softmax"):
        make("nope", MAX_LEN)


def test_unknown_option_lists_valid_keys():
    with pytest.raises(AttentionError, match="no option"):
        make("softmax", MAX_LEN, window=3)


def test_wrong_mask_is_explained():
    attn = make("softmax", MAX_LEN)
    q, k, v, mask = inputs(2, 8)
    with pytest.raises(AttentionError, match="mask"):
        attn(q, k, v, mask.float())
