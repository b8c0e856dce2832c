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
    def _(q, k, v, key_real, row_offsets, col_index, block_size, scale):
        return torch.empty_like(q), q.new_empty(q.shape[:-1])

    @torch.library.register_fake("lra_block_sparse::backward")
    def _(grad_out, grad_lse, q, k, v, out, lse, key_real, row_offsets, col_index, block_size,
          scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, key_real, row_offsets, col_index, block_size, scale = inputs
        ctx.save_for_backward(q, k, v, *output, key_real, row_offsets, col_index)
        ctx.block_size, ctx.scale = block_size, scale

    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, key_real, row_offsets, col_index = ctx.saved_tensors
        if grad_lse is None:  # lse unused downstream (MRA-2-s)
            grad_lse = torch.zeros_like(lse)
        # Rows with no real key have lse = -inf and carry no gradient.
        grad_lse = torch.where(torch.isfinite(lse), grad_lse, 0)
        grad_q, grad_k, grad_v = ops.backward(
            grad_out.contiguous(), grad_lse.contiguous(), q, k, v, out, lse, key_real,
            row_offsets, col_index, ctx.block_size, ctx.scale)
        return grad_q, grad_k, grad_v, None, None, None, None, None

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
        out, lse = self.ops.forward(q, k, v, key_real.contiguous(), row_offsets.contiguous(),
                                    col_index.contiguous(), block_size, scale)
        return out.to(dtype), lse
