"""Block primitives for the zoo's block attentions (MRA's low resolution, BigBird,
H-Transformer-1D, the local band).

The block layout (`to_blocks`, `from_blocks`) and block picking (`gather_blocks`) are the kernels'
own (`kernels/block_sparse/layout.py`, documented there) and are re-exported here; this module
adds what only the zoo uses: masked block means and neighbour blocks. Everything is
differentiable with respect to the block values, and nothing here materialises an (n, n) tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.block_sparse.layout import from_blocks, gather_blocks, to_blocks

__all__ = ["block_means", "from_blocks", "gather_blocks", "neighbour_blocks", "to_blocks"]


def block_means(
    x: torch.Tensor, mask: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block means of x over real tokens, and the number of real tokens per block.

    x: (batch, heads, seq, d); mask: (batch, seq) bool, True = real token.
    Returns means (batch, heads, nb, d) and counts (batch, nb) in x's dtype. A block with no real
    token has mean 0 and count 0, so callers must mask it out rather than trust its mean.
    Padded positions enter with weight exactly 0, so finite padded values never reach the result
    (`Attention.forward` zeroes padded rows before any attention sees them).
    """
    real = to_blocks(mask, block_size, dim=-1).to(x.dtype)  # (batch, nb, b)
    counts = real.sum(dim=-1)  # (batch, nb)
    # A contraction over the block's positions: no (batch, heads, nb, b, d) temporary.
    sums = torch.einsum("znb,zhnbd->zhnd", real, to_blocks(x, block_size))  # (.., nb, d)
    return sums / counts.clamp_min(1)[:, None, :, None], counts


def neighbour_blocks(x: torch.Tensor, offsets: tuple[int, ...], dim: int) -> torch.Tensor:
    """Blocks I + o for o in offsets, side by side: x (..., nb, b, *rest) with the block index at
    `dim` (negative counts from the end) -> (..., nb, len(offsets) * b, *rest). Blocks outside
    the sequence are zeros."""
    dim = dim % x.dim()
    if dim == x.dim() - 1:
        raise ValueError(f"dim {dim} is the last dim of a {x.dim()}-d tensor: the block index "
                         "must be followed by the position inside the block")
    nb = x.shape[dim]
    x = F.pad(x, [0, 0] * (x.dim() - 1 - dim) + [1, 1])
    return torch.cat([x.narrow(dim, 1 + o, nb) for o in offsets], dim=dim + 1)
