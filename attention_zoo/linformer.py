"""Linformer: softmax attention over a learned projection of the sequence (Wang et al., 2020).

    k' = E k,  v' = E v,  out = softmax(q k'^T / sqrt(d)) v'

with E: (proj_len, n) learned, one per head, shared by keys and values (the MRA comparison's
setting). E is sized to max_seq_len and its first n columns are used for an input of length n.
Padded rows of k and v are zero (the base class zeroes them), so padding never reaches k' or v'.
Cost O(n * proj_len * d).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .masking import masked_softmax
from .registry import Attention, register_attention, require_ints


@dataclasses.dataclass
class LinformerOptions:
    """proj_len: projected length k (256 in the MRA comparison)."""

    proj_len: int = 256

    def validate(self) -> None:
        require_ints("linformer", self, proj_len=1)


@register_attention("linformer", LinformerOptions)
class LinformerAttention(Attention):
    """Linformer with one projection E per head shared by keys and values.

    E: (heads, min(proj_len, max_seq_len), max_seq_len). More projected positions than tokens
    would only add positions no token reaches, so proj_len is capped at max_seq_len.
    Initialisation: average pooling, row l the mean over the l-th of proj_len equal segments of
    the max_seq_len positions (the paper lists pooling as a valid projection). Untrained, the
    module then attends to segment means, a real approximation of softmax on inputs with local
    structure that becomes exact when proj_len = seq = max_seq_len; a Gaussian E instead gives
    outputs unrelated to softmax (relative error far above 1) until trained. For an input shorter
    than max_seq_len, the sliced rows of E whose segment lies beyond the input are zero at
    initialisation: projected positions that no real token reaches are masked, so neither the
    input's padding nor its padded length changes the output. Deterministic: no random draws at
    forward time.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        proj_len = min(self.options.proj_len, self.max_seq_len)
        segment = torch.arange(self.max_seq_len) * proj_len // self.max_seq_len
        pooling = (segment[None, :] == torch.arange(proj_len)[:, None]).float()
        pooling = pooling / pooling.sum(dim=-1, keepdim=True)  # (proj_len, max_seq_len)
        self.projection = nn.Parameter(pooling.repeat(self.num_heads, 1, 1))

    full_precision = True

    def _attend(self, q, k, v, mask):
        seq = q.shape[2]
        e = self.projection[:, :, :seq].to(q.dtype)  # (heads, proj_len, seq): sliced to the input
        k_proj = e @ k  # (batch, heads, proj_len, d); padded rows of k, v are zero (base class)
        v_proj = e @ v
        logits = q @ k_proj.transpose(-1, -2) * q.shape[-1] ** -0.5
        # A projected position that no real token of the example feeds (its row of E is zero on
        # them, e.g. a pooling segment wholly in padding) is no key: with k' = 0 it would still
        # take weight exp(0) and make the output depend on how far the batch was padded.
        # reached: (batch, heads, 1, proj_len)
        reached = torch.einsum("hps,bs->bhp", e.abs(), mask.to(e.dtype))[:, :, None, :] > 0
        return masked_softmax(logits, reached) @ v_proj
