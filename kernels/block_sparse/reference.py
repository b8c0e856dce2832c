"""Block-sparse exact attention in plain PyTorch: the oracle every fast path is held to.

Shapes (one definition for every backend of this family):
    q, k, v:      (batch, heads, seq, d), seq a multiple of block_size b; nb = seq / b
    key_real:     (batch, seq) bool, True = a real key
    row_offsets:  (batch, heads, nb + 1) int64, CSR: the pairs of row block r are the slots
                  row_offsets[r] ... row_offsets[r + 1] - 1
    col_index:    (batch, heads, K) int64, the key block of each slot (slots past the last offset
                  are unused)
Returns out (batch, heads, seq, d) and lse (batch, heads, seq):
    s_ij = scale * q_i . k_j over the real keys j of the selected blocks of i's row block,
    lse_i = log sum_j exp(s_ij),  out_i = sum_j exp(s_ij - lse_i) v_j,
and out_i = 0, lse_i = -inf for a row with no real key. Autograd differentiates all of it; the
(K, b, b) logits are materialised, which the fused backends avoid.
"""

from __future__ import annotations

import torch

from .layout import from_blocks, gather_blocks, scatter_blocks, to_blocks


def slot_rows(row_offsets: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row block of every CSR slot (batch, heads, K), and whether the slot is used."""
    nb = row_offsets.shape[-1] - 1
    slots = torch.arange(num_slots, device=row_offsets.device).expand(
        *row_offsets.shape[:-1], num_slots)
    rows = torch.searchsorted(row_offsets[..., 1:].contiguous(), slots.contiguous(), right=True)
    return rows.clamp_max(nb - 1), rows < nb


def attention(q, k, v, key_real, row_offsets, col_index, *, block_size: int, scale: float):
    b = block_size
    nb = q.shape[2] // b
    rows, used = slot_rows(row_offsets, col_index.shape[-1])
    cols = torch.where(used, col_index, 0)
    logits = gather_blocks(to_blocks(q, b), rows) @ gather_blocks(to_blocks(k, b), cols).mT
    logits = logits * scale  # (batch, heads, K, b, b)
    allowed = gather_blocks(to_blocks(key_real, b, dim=-1)[:, None], cols)[..., None, :]
    allowed = allowed & used[..., None, None]  # (batch, heads, K, 1, b)
    logits = logits.masked_fill(~allowed, float("-inf"))
    # Each row's max over all its blocks: a shift that cancels, so it carries no gradient.
    with torch.no_grad():
        row_max = scatter_blocks(logits.amax(dim=-1), rows, nb, reduce="amax",
                                 fill=float("-inf"))  # (batch, heads, nb, b)
        row_max = torch.where(torch.isfinite(row_max), row_max, 0)
    weights = torch.exp(logits - gather_blocks(row_max, rows)[..., None])
    numerator = scatter_blocks(weights @ gather_blocks(to_blocks(v, b), cols), rows, nb)
    total = scatter_blocks(weights.sum(dim=-1), rows, nb)  # (batch, heads, nb, b)
    has_key = total > 0
    safe = torch.where(has_key, total, 1)
    out = from_blocks(numerator / safe[..., None])
    lse = torch.where(has_key, row_max + torch.log(safe), float("-inf")).flatten(-2)
    return out, lse
