"""Inputs with locality structure, and the error measure used by tests and benchmarks.

Random Gaussian q, k give nearly uniform attention, which every method approximates well and
which says nothing about real workloads. Real attention is peaked and local: tokens attend to their
neighbourhood. `structured_qkv` draws each token's q and k around a smooth random walk, so nearby
tokens have similar keys and the attention matrix concentrates near the diagonal, at a scale where
softmax is far from uniform.
"""

from __future__ import annotations

import torch

from .masking import masked_rows, suffix_mask


def structured_qkv(
    batch: int,
    heads: int,
    seq: int,
    head_dim: int,
    *,
    seed: int = 0,
    noise: float = 0.3,
    scale: float = 3.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v: (batch, heads, seq, head_dim) around one random walk per (batch, head).

    The walk (N(0, I) steps), centred and scaled to unit length per token, turns slowly, so nearby
    tokens point the same way: at seq 1,024 and head_dim 64 the mean cosine between tokens i and
    j is 0.996 at |i - j| = 1, 0.94 at 16, 0.53 at 128 and -0.55 at 512. (The step size cancels
    in that scaling, so there is no smoothness knob.) `noise` blurs q and k around the walk and
    `scale` sets how peaked softmax(qk^T/sqrt(d)) is.
    """
    gen = torch.Generator().manual_seed(seed)
    walk = torch.cumsum(torch.randn(batch, heads, seq, head_dim, generator=gen), dim=2)
    walk = walk - walk.mean(dim=2, keepdim=True)
    walk = walk / walk.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    q = scale * (walk + noise * torch.randn(walk.shape, generator=gen) / head_dim**0.5)
    k = scale * (walk + noise * torch.randn(walk.shape, generator=gen) / head_dim**0.5)
    v = torch.randn(batch, heads, seq, head_dim, generator=gen)
    q = q * head_dim**0.25
    k = k * head_dim**0.25
    return q.to(dtype), k.to(dtype), v.to(dtype)


def padded_qkv(
    lengths: list[int], heads: int, seq: int, head_dim: int, *, structured: bool, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (len(lengths), heads, seq, head_dim), structured (`structured_qkv`) or Gaussian,
    and the suffix mask (batch, seq) whose example b has `lengths[b]` real tokens."""
    batch = len(lengths)
    if structured:
        q, k, v = structured_qkv(batch, heads, seq, head_dim, seed=seed)
    else:
        gen = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen) for _ in range(3))
    return q, k, v, suffix_mask(lengths, seq)


def relative_error(out: torch.Tensor, exact: torch.Tensor, mask: torch.Tensor) -> float:
    """||out - exact|| / ||exact|| over the real query rows."""
    out, exact = out.detach(), exact.detach()  # a measurement, never part of a graph
    return float(masked_rows(out - exact, mask).norm() / masked_rows(exact, mask).norm())
