"""The C++/OpenMP backend: `block_sparse.cpp` compiled just in time, registered through
torch.library (a fake kernel for tracing, autograd tying the forward op to the backward op).

Same functions and shapes as `reference.py`. fp32 and fp64 run natively; lower precisions are
computed in fp32 and cast back (fp32 accumulation).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..build import load_library

SOURCES = [Path(__file__).with_name("block_sparse.cpp")]


def load():
    """Build (or reuse) the library and register its fake kernels and autograd; returns this
    module, whose `attention` then runs the C++ ops."""
    load_library("lra_block_sparse", SOURCES)
    ops = torch.ops.lra_block_sparse

    @torch.library.register_fake("lra_block_sparse::forward")
    def _(q, k, kt, v, key_real, row_offsets, col_index, block_size, scale):
        return torch.empty_like(q), q.new_empty(q.shape[:-1])

    @torch.library.register_fake("lra_block_sparse::backward")
    def _(grad_out, delta, q, k, kt, vt, lse, key_real, row_offsets, col_index, block_size,
          scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(q)

    def setup_context(ctx, inputs, output):
        # kt is not kept: the backward transposes k again, so it lives only during each pass.
        q, k, _, v, key_real, row_offsets, col_index, block_size, scale = inputs
        ctx.save_for_backward(q, k, v, *output, key_real, row_offsets, col_index)
        ctx.block_size, ctx.scale = block_size, scale

    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, key_real, row_offsets, col_index = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # delta_i = dO_i . O_i - dlse_i; rows with no real key (lse -inf) carry no gradient.
        delta = (grad_out * out).sum(-1)
        if grad_lse is not None:  # None when lse is unused downstream (MRA-2-s)
            delta = delta - torch.where(torch.isfinite(lse), grad_lse, 0)
        block = ctx.block_size
        grad_q, grad_k, grad_v = ops.backward(
            grad_out, delta.contiguous(), q, k, transposed(k, block), transposed(v, block), lse,
            key_real, row_offsets, col_index, block, ctx.scale)
        # kt is k in another layout, made from k: its gradient is carried by k's.
        return grad_q, grad_k, None, grad_v, None, None, None, None, None

    torch.library.register_autograd("lra_block_sparse::forward", backward,
                                    setup_context=setup_context)
    return _Backend(ops)


class _Backend:
    """`attention` over the loaded ops (kept apart from `load` so a failed build leaves no
    half-registered state behind)."""

    def __init__(self, ops):
        self.ops = ops

    def attention(self, q, k, v, key_real, row_offsets, col_index, *, block_size: int,
                  scale: float):
        dtype = q.dtype
        work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        q, k, v = (x.to(work).contiguous() for x in (q, k, v))
        out, lse = self.ops.forward(q, k, transposed(k, block_size), v, key_real.contiguous(),
                                    row_offsets.contiguous(), col_index.contiguous(), block_size,
                                    scale)
        return out.to(dtype), lse


def transposed(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """(batch, heads, seq, d) -> (batch, heads, nb, d, b): each block transposed (a copy), the
    layout in which the kernel's logits read rows. Made here rather than inside the op so that
    it is a tensor the memory accounting of lra.memory sees."""
    return x.unflatten(2, (-1, block_size)).transpose(-1, -2).contiguous()

