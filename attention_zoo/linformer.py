"""Linformer: softmax attention over a learned projection of the sequence (Wang et al., 2020).

    k' = E k,  v' = E v,  out = softmax(q k'^T / sqrt(d)) v'

with E: (proj_len, n) learned, one per head, shared by keys and values (the MRA comparison's
setting). E is sized to max_seq_len and its first n columns are used for an input of length n.
Padded rows of k and v are zero (the base class zeroes them), so padding never reaches k' or v'.
Cost O(n * proj_len * d).

Protocol options, defaults as in the code the MRA comparison ran:
  - init "gaussian": E ~ N(0, 1 / proj_len) entrywise, `randn(heads, k, n) / sqrt(k)`;
    "pooling": average pooling over proj_len equal segments (lra-zoo's former default);
  - share_across_layers True: one E for every layer of the encoder (the encoder ties them
    through `share_parameters`); False: one E per layer.
"""

from __future__ import annotations

import dataclasses
import enum

import torch
from torch import nn

from .masking import masked_softmax
from .registry import (
    Attention,
    AttentionError,
    Choice,
    register_attention,
    require_choice,
    require_ints,
)


class Init(Choice):
    gaussian = enum.auto()  # published: randn / sqrt(proj_len)
    pooling = enum.auto()  # segment means


@dataclasses.dataclass
class LinformerOptions:
    """proj_len: projected length k (256 in the MRA comparison).
    init: "gaussian" (published: randn / sqrt(proj_len)) or "pooling" (segment means).
    share_across_layers: one E shared by all layers (published) or one per layer.
    """

    proj_len: int = 256
    init: Init = Init.gaussian
    share_across_layers: bool = True

    def __post_init__(self) -> None:
        require_ints("linformer", self, proj_len=1)
        require_choice("linformer", self, init=Init)
        if not isinstance(self.share_across_layers, bool):
            raise AttentionError(f"linformer: share_across_layers must be true or false, "
                                 f"got {self.share_across_layers!r}")


def pooling_projection(proj_len: int, seq: int) -> torch.Tensor:
    """(proj_len, seq): row l is the mean over the l-th of proj_len equal segments."""
    segment = torch.arange(seq) * proj_len // seq
    pooling = (segment[None, :] == torch.arange(proj_len)[:, None]).float()
    return pooling / pooling.sum(dim=-1, keepdim=True)


@register_attention("linformer", LinformerOptions)
class LinformerAttention(Attention):
    """Linformer with one projection E per head shared by keys and values.

    E: (heads, min(proj_len, max_seq_len), max_seq_len). More projected positions than tokens
    would only add positions no token reaches, so proj_len is capped at max_seq_len.
    Initialisation "gaussian" (published) draws E from torch's global RNG, like any parameter:
    untrained, k' and v' are random mixtures of all tokens and the output is far from softmax
    (relative error above 1) until trained. "pooling" makes row l the mean of the l-th segment:
    untrained, the module attends to segment means, a real approximation of softmax on inputs
    with local structure, exact when proj_len = seq = max_seq_len. For an input shorter than
    max_seq_len, a pooling row whose segment lies beyond the input is zero: projected positions
    that no real token reaches are masked, so neither the input's padding nor its padded length
    changes the output. Deterministic: no random draws at forward time.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        proj_len = min(self.options.proj_len, self.max_seq_len)
        if self.options.init == "gaussian":
            e = torch.randn(self.num_heads, proj_len, self.max_seq_len) / proj_len**0.5
        else:
            e = pooling_projection(proj_len, self.max_seq_len).repeat(self.num_heads, 1, 1)
        self.projection = nn.Parameter(e)

    def share_parameters(self, first: Attention) -> None:
        """One E for the encoder (the published setting): take the first layer's."""
        if self.options.share_across_layers:
            self.projection = first.projection

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
