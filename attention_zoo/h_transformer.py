"""H-Transformer-1D (Zhu & Soricut, ACL 2021): hierarchical attention on an H-matrix partition.

Levels. Level 0 is the sequence itself in blocks of b tokens. Level l+1 halves level l: q and k by
pair means and v by pair sums, all masked (padding never counts), so a level-l token stands for
2^l real-or-padding tokens, its q/k is the mean over its real tokens, its v the sum, and its count
the number of real tokens. Levels stop at the first one with at most 2 blocks.

Partition (each query-key pair is covered exactly once):
  - level 0: each block sees its own and its two neighbour blocks, exactly;
  - level l >= 1: block I sees blocks I - 1 and I + 1, minus what finer levels covered. A level-l
    block is two level-(l-1) blocks (halves), and the only part of a neighbour block already
    covered is the pair of adjacent halves, so key half kh of block I + o is seen from query half
    h iff |2o + kh - h| > 1 (their level-(l-1) distance).
Within a level-l block pair every fine pair gets the coarse weight exp(q_I . k_J / sqrt(d)):
numerator exp(.) * v_sum_J and denominator exp(.) * count_J, so empty coarse keys weigh exactly 0.

Combining levels. Each level exponentiates against its own row max m_l (for stability), then every
level is rescaled to ONE reference per fine query, m = max over levels of m_l, before numerators
and denominators are summed: out = sum_l exp(m_l - m) num_l / sum_l exp(m_l - m) den_l. (The
published pitfall is summing levels that each subtracted a different max.) Keys that are padding,
outside the sequence or excluded by the partition are masked with their weight multiplied by 0,
so a fully masked block contributes 0, never exp(0).

With b >= seq there is one block and one level: exact softmax attention. Deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .blocks import from_blocks, neighbour_blocks, to_blocks
from .masking import neg_inf, pad_all_to_multiple
from .registry import Attention, AttentionError, register_attention, require_ints


def level_pattern(block: int, offsets: tuple[int, ...], coarse: bool, device) -> torch.Tensor:
    """(b, len(offsets) * b) bool: which keys of the neighbour blocks a query sees at a level."""
    if not coarse:
        return torch.ones(block, len(offsets) * block, dtype=torch.bool, device=device)
    half = torch.arange(block, device=device) // (block // 2)  # half of the block, 0 or 1
    dist = torch.cat([(2 * o + half)[None, :] - half[:, None] for o in offsets], dim=1)
    return dist.abs() > 1


def level_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, count: torch.Tensor, block: int,
    coarse: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level: q, k means and v sums (batch, heads, len, d), count (batch, len), len = nb * b.

    Returns numerator (batch, heads, len, d), denominator and row max (batch, heads, len, 1), the
    exponentials taken against that row max.
    """
    offsets = (-1, 1) if coarse else (-1, 0, 1)
    scale = 1 / math.sqrt(q.shape[-1])
    q_blocks = to_blocks(q, block)  # (batch, heads, nb, b, d)
    k_near = neighbour_blocks(to_blocks(k, block), offsets, dim=2)  # (batch, heads, nb, K b, d)
    v_near = neighbour_blocks(to_blocks(v, block), offsets, dim=2)
    c_near = neighbour_blocks(to_blocks(count, block, dim=-1), offsets, dim=1)  # (batch, nb, K b)
    allowed = (c_near > 0)[:, None, :, None, :] & level_pattern(block, offsets, coarse, q.device)
    logits = (q_blocks @ k_near.transpose(-1, -2) * scale).masked_fill(~allowed, neg_inf(q.dtype))
    # The reference cancels out of num / den, so it needs no gradient.
    row_max = logits.amax(dim=-1, keepdim=True).detach()
    weights = torch.where(allowed, torch.exp(logits - row_max), 0)  # (batch, heads, nb, b, K b)
    num = weights @ v_near
    den = weights @ c_near[:, None, :, :, None]
    return from_blocks(num), from_blocks(den), from_blocks(row_max)


@dataclass
class HTransformer1dOptions:
    block_size: int = 16

    def __post_init__(self) -> None:
        require_ints("h_transformer_1d", self, block_size=2)
        if self.block_size % 2:
            raise AttentionError(
                "h_transformer_1d: block_size must be even (a coarse block is two finer blocks), "
                f"got {self.block_size}"
            )


@register_attention("h_transformer_1d", HTransformer1dOptions)
class HTransformer1dAttention(Attention):
    """Hierarchical (H-matrix) attention with exact near-diagonal blocks and coarse far blocks."""

    def _attend(self, q, k, v, mask):
        block, seq = self.options.block_size, q.shape[2]
        # Level-l sums over real tokens (the base class zeroed the padded rows), and counts.
        count = mask.to(q.dtype)  # (batch, len)
        levels = []
        while True:
            top = -(-q.shape[2] // block) <= 2
            # Pad to whole blocks, and to an even number of blocks when a coarser level follows;
            # the new positions are empty tokens (zero sums, count 0).
            (q, k, v), count = pad_all_to_multiple((q, k, v), count, block if top else 2 * block)
            c = count.clamp_min(1)[:, None, :, None]
            levels.append(level_attention(q / c, k / c, v, count, block, coarse=bool(levels)))
            if top:
                break
            q, k, v = (to_blocks(x, 2).sum(dim=-2) for x in (q, k, v))
            count = to_blocks(count, 2, dim=-1).sum(dim=-1)

        def fine(x: torch.Tensor, level: int) -> torch.Tensor:
            """Level-l rows back to fine queries: fine query i reads coarse row i >> l."""
            return x.repeat_interleave(2**level, dim=2)[:, :, :seq]

        reference = torch.stack([fine(m, lvl) for lvl, (_, _, m) in enumerate(levels)]).amax(0)
        num = den = 0
        for lvl, (num_l, den_l, max_l) in enumerate(levels):
            rescale = torch.exp(fine(max_l, lvl) - reference)
            num = num + fine(num_l, lvl) * rescale
            den = den + fine(den_l, lvl) * rescale
        # den >= 1 for a real query (its own token); 0 only on padded rows, zeroed by the caller.
        return num / den.clamp_min(torch.finfo(q.dtype).tiny)
