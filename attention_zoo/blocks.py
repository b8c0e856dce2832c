"""Block primitives for block-sparse attention (MRA, BigBird, H-Transformer-1D).

Block layout. A sequence whose length n is a multiple of the block size b is cut into nb = n / b
contiguous blocks: block i holds tokens i*b ... i*b + b - 1. A tensor in block layout keeps the
block index just before the position inside the block:

    x     (batch, heads, seq, dim)  --to_blocks(x, b)--------->  (batch, heads, nb, b, dim)
    mask  (batch, seq)              --to_blocks(mask, b, -1)-->  (batch, nb, b)

Block pairs. A block-sparse pattern is a list of K (row block, col block) pairs per (batch, head),
given as two index tensors `rows, cols: (batch, heads, K)` with values in [0, nb): pair p says
that the queries of block rows[p] see the keys of block cols[p]. Pairs may come in any order and a
row block may appear any number of times (zero included); nothing assumes K is the same fraction
of every row. Published kernels address a pair by the flat index `row * nb + col`;
`rows, cols = flat // nb, flat % nb` converts. Example with nb = 4 and K = 3:

    rows = [0, 0, 3], cols = [0, 2, 3]
    query block 0 sees key blocks 0 and 2, query blocks 1 and 2 see nothing, 3 sees 3;
    sampled_block_matmul(q_blocks, k_blocks, rows, cols)      -> (..., K=3, b, b) logits
    block_sparse_matmul(weights, v_blocks, rows, cols, nb=4)  -> (..., nb=4, b, d), zero in 1, 2

Leading dimensions. Every function here works on any leading dimensions `*lead` (normally
(batch, heads)). Block tensors that do not depend on a leading dimension may hold size 1 there and
are broadcast against the index, e.g. mask blocks (batch, 1, nb, b) gathered with
cols (batch, heads, K).

Everything is differentiable through autograd with respect to the block values (never the
indices), and nothing here materialises an (n, n) or (nb, nb, b, ...) tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masking import masked_rows


def to_blocks(x: torch.Tensor, block_size: int, dim: int = -2) -> torch.Tensor:
    """Split sequence dimension `dim` of x into (nb, block_size). The length must be a multiple
    of block_size (pad first with `masking.pad_to_multiple`).

    (batch, heads, seq, d) -> (batch, heads, nb, b, d) with the default dim=-2;
    a mask (batch, seq) -> (batch, nb, b) with dim=-1. A view: nothing is copied.
    """
    seq = x.shape[dim]
    if seq % block_size:
        raise ValueError(f"length {seq} is not a multiple of the block size {block_size}")
    return x.unflatten(dim, (seq // block_size, block_size))


def from_blocks(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_blocks` for the default layout: (*lead, nb, b, d) -> (*lead, nb * b, d)."""
    return x.flatten(-3, -2)


def block_means(
    x: torch.Tensor, mask: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block means of x over real tokens, and the number of real tokens per block.

    x: (batch, heads, seq, d); mask: (batch, seq) bool, True = real token.
    Returns means (batch, heads, nb, d) and counts (batch, nb) in x's dtype. A block with no real
    token has mean 0 and count 0, so callers must mask it out rather than trust its mean; the
    values at padded positions never reach the result.
    """
    counts = to_blocks(mask, block_size, dim=-1).sum(dim=-1).to(x.dtype)  # (batch, nb)
    # A select (not a product: 0 * NaN is NaN) so padded values cannot leak, whatever they hold.
    # sums: (batch, heads, nb, d)
    sums = to_blocks(masked_rows(x, mask), block_size).sum(dim=-2)
    return sums / counts.clamp_min(1)[:, None, :, None], counts


def _index_like(index: torch.Tensor, trailing: torch.Size) -> torch.Tensor:
    """(*lead, K) -> (*lead, K, *trailing) as a broadcast view (no copy), for gather/scatter."""
    view = index.reshape(*index.shape, *(1,) * len(trailing))
    return view.expand(*index.shape, *trailing)


def gather_blocks(blocks: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick blocks by index: out[..., p, :] = blocks[..., index[..., p], :].

    blocks: (*lead, nb, *rest), with lead dims equal to index's or 1 (broadcast);
    index:  (*lead, K) int64 block numbers in [0, nb).
    Returns (*lead, K, *rest). Gradients flow back to blocks (summed over repeated picks).
    """
    lead = index.shape[:-1]
    rest = blocks.shape[len(lead) + 1 :]
    blocks = blocks.expand(*lead, blocks.shape[len(lead)], *rest)
    return torch.gather(blocks, len(lead), _index_like(index, rest))


def scatter_blocks(
    values: torch.Tensor,
    index: torch.Tensor,
    num_blocks: int,
    reduce: str = "sum",
    fill: float = 0.0,
) -> torch.Tensor:
    """The reverse of `gather_blocks`: send values[..., p, :] to block slot index[..., p].

    values: (*lead, K, *rest); index: (*lead, K) int64 in [0, num_blocks).
    Returns (*lead, num_blocks, *rest) where slot j holds the sum (reduce="sum") or the maximum
    (reduce="amax") of the values sent to it; a slot that receives nothing holds 0 for "sum" and
    `fill` for "amax" (pass a very negative number; `fill` is unused for "sum").
    On CUDA the sum uses atomic adds, so its last bits may vary between runs unless
    `torch.use_deterministic_algorithms(True)`; the max is exact in any order.
    """
    lead = index.shape[:-1]
    rest = values.shape[len(lead) + 1 :]
    dim = len(lead)
    slots = _index_like(index, rest)
    if reduce == "sum":
        out = values.new_zeros(*lead, num_blocks, *rest)
        return out.scatter_add(dim, slots, values)
    if reduce == "amax":
        out = values.new_full((*lead, num_blocks, *rest), fill)
        return out.scatter_reduce(dim, slots, values, reduce="amax", include_self=True)
    raise ValueError(f"reduce must be 'sum' or 'amax', got {reduce!r}")


def sampled_block_matmul(
    a_blocks: torch.Tensor, b_blocks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Block SDDMM: the (rows[p], cols[p]) blocks of a @ b^T, and only those.

    a_blocks, b_blocks: (*lead, nb, b, d) (e.g. queries and keys in block layout);
    rows, cols: (*lead, K).
    Returns (*lead, K, b, b) with
        out[..., p, i, j] = a_blocks[..., rows[p], i, :] . b_blocks[..., cols[p], j, :].
    """
    return gather_blocks(a_blocks, rows) @ gather_blocks(b_blocks, cols).transpose(-1, -2)


def block_sparse_matmul(
    weights: torch.Tensor,
    v_blocks: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    num_row_blocks: int,
) -> torch.Tensor:
    """Block-sparse times dense: W @ v where W holds the b x b blocks `weights` at (rows, cols).

    weights: (*lead, K, b, b); v_blocks: (*lead, nb, b, d); rows, cols: (*lead, K).
    Returns (*lead, num_row_blocks, b, d): row block r sums weights[p] @ v_blocks[cols[p]] over
    every pair p with rows[p] == r (zero for a row block with no pair).
    """
    return scatter_blocks(weights @ gather_blocks(v_blocks, cols), rows, num_row_blocks)


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
