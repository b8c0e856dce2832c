"""Block layout and block-pair lists, shared by the block-sparse kernels and the zoo's block
attentions (attention_zoo.blocks re-exports these).

A sequence of n = nb * b tokens is cut into nb blocks of b; block i holds tokens i*b ... i*b+b-1:

    x     (batch, heads, seq, dim)  --to_blocks(x, b)--------->  (batch, heads, nb, b, dim)
    mask  (batch, seq)              --to_blocks(mask, b, -1)-->  (batch, nb, b)

A block-sparse pattern is K (row block, col block) pairs per (batch, head). The kernels take it
in CSR order by row block (`csr_from_pairs`): `row_offsets (batch, heads, nb + 1)` and
`col_index (batch, heads, K)`, the pairs of row block r being slots row_offsets[r] up to
row_offsets[r + 1]. Every function works on any leading dims `*lead`; a block tensor may hold
size 1 in a leading dim and is broadcast against the index.
"""

from __future__ import annotations

import torch


def to_blocks(x: torch.Tensor, block_size: int, dim: int = -2) -> torch.Tensor:
    """Split sequence dimension `dim` into (nb, block_size), as a view. The length must be a
    multiple of block_size: (batch, heads, seq, d) -> (batch, heads, nb, b, d) with dim=-2;
    a mask (batch, seq) -> (batch, nb, b) with dim=-1."""
    seq = x.shape[dim]
    if seq % block_size:
        raise ValueError(f"length {seq} is not a multiple of the block size {block_size}")
    return x.unflatten(dim, (seq // block_size, block_size))


def from_blocks(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_blocks` for the default layout: (*lead, nb, b, d) -> (*lead, nb * b, d)."""
    return x.flatten(-3, -2)


def _index_like(index: torch.Tensor, trailing: torch.Size) -> torch.Tensor:
    """(*lead, K) -> (*lead, K, *trailing) as a broadcast view (no copy), for gather/scatter."""
    return index.reshape(*index.shape, *(1,) * len(trailing)).expand(*index.shape, *trailing)


def gather_blocks(blocks: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[..., p, :] = blocks[..., index[..., p], :].

    blocks: (*lead, nb, *rest), lead dims equal to index's or 1; index: (*lead, K) int64.
    Returns (*lead, K, *rest); gradients flow back to blocks (summed over repeated picks).
    """
    lead = index.shape[:-1]
    rest = blocks.shape[len(lead) + 1:]
    blocks = blocks.expand(*lead, blocks.shape[len(lead)], *rest)
    return torch.gather(blocks, len(lead), _index_like(index, rest))


def scatter_blocks(values: torch.Tensor, index: torch.Tensor, num_blocks: int,
                   reduce: str = "sum", fill: float = 0.0) -> torch.Tensor:
    """The reverse of `gather_blocks`: slot j of the (*lead, num_blocks, *rest) result holds the
    sum (reduce="sum") or max ("amax") of the values[..., p, :] with index[..., p] == j; a slot
    that receives nothing holds 0 ("sum") or `fill` ("amax"). On CUDA the sum uses atomic adds,
    so its last bits may vary between runs; the max is exact in any order."""
    lead = index.shape[:-1]
    rest = values.shape[len(lead) + 1:]
    slots = _index_like(index, rest)
    if reduce == "sum":
        return values.new_zeros(*lead, num_blocks, *rest).scatter_add(len(lead), slots, values)
    if reduce == "amax":
        out = values.new_full((*lead, num_blocks, *rest), fill)
        # include_self=False: a slot that receives values holds their max even below `fill`.
        return out.scatter_reduce(len(lead), slots, values, reduce="amax", include_self=False)
    raise ValueError(f"reduce must be 'sum' or 'amax', got {reduce!r}")


def csr_from_pairs(rows: torch.Tensor, cols: torch.Tensor, kept: torch.Tensor, nb: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR of the kept pairs: rows, cols (*lead, K) int64 and kept (bool, broadcastable to them).

    Pairs are ordered by (row block, col block), so each row block reads its key blocks in
    memory order. Returns row_offsets (*lead, nb + 1) and col_index (*lead, K); the slots past
    row_offsets[..., -1] hold the unkept pairs and are never read.
    """
    kept = kept.expand_as(rows)
    flat = torch.where(kept, rows * nb + cols, nb * nb)  # unkept pairs sort last
    order = torch.argsort(flat, dim=-1)
    col_index = cols.gather(-1, order)
    per_row = torch.zeros(*rows.shape[:-1], nb + 1, dtype=torch.long, device=rows.device)
    per_row = per_row.scatter_add(-1, torch.where(kept, rows, nb), torch.ones_like(rows))
    row_offsets = torch.nn.functional.pad(per_row[..., :nb].cumsum(-1), (1, 0))
    return row_offsets, col_index
