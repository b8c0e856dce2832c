"""Longformer: sliding-window attention plus symmetric global tokens (Beltagy et al., 2020).

Every query sees the keys within its window and the global tokens; every global query sees all
real keys. One softmax per query row covers both, so each row is an exact softmax over its
allowed keys. Cost O(n * (window + num_global)) plus O(num_global * n) for the global rows.

Attention dropout (option `dropout`, training mode only) on the probabilities of both the window
rows and the global rows, 0.1 by default as HuggingFace's Longformer
(`attention_probs_dropout_prob`); the mask comes from torch's global RNG.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .local import Band
from .masking import key_mask, masked_softmax
from .registry import Attention, register_attention, require_ints, require_probability


@dataclasses.dataclass
class LongformerOptions:
    """window: w, read as in the Longformer paper, w / 2 keys on each side: query i sees the keys
        j with |i - j| <= w // 2 (w + 1 keys with itself; 64 in the MRA comparison).
    num_global: the first num_global positions are global tokens (1: token 0, as in the MRA
        comparison, the [CLS] position).
    dropout: rate of dropout on the attention probabilities in training mode (0.1, HF's
        Longformer default; 0.0 = none).
    """

    window: int = 64
    num_global: int = 1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        require_ints("longformer", self, window=0, num_global=0)
        require_probability("longformer", self, "dropout")


@register_attention("longformer", LongformerOptions)
class LongformerAttention(Attention):
    """Sliding window plus global tokens, on one set of projections.

    The full Longformer model gives global tokens their own q/k/v projections; this module
    receives q, k, v already projected, so global tokens use the same projections as the rest (an
    encoder wanting separate ones would have to project them itself). Global tokens are positions
    0 .. num_global - 1; a padded one is never attended, like any padded key. Deterministic.
    """

    def _attend(self, q, k, v, mask):
        num_global = min(self.options.num_global, q.shape[2])
        scale = 1.0 / math.sqrt(q.shape[-1])
        is_global = torch.arange(q.shape[2], device=q.device) < num_global
        # The window leaves global keys out: each row sees them once, through the global columns.
        band = Band(mask & ~is_global, self.options.window // 2)
        qp, kp, vp = band.pad(q), band.pad(k), band.pad(v)

        # window_logits: (batch, heads, nb, block, 3 * block); key_logits: (.., block, g)
        window_logits = band.scores(qp, kp) * scale
        global_keys, global_values = k[:, :, :num_global], v[:, :, :num_global]
        key_logits = band.query_blocks(qp @ global_keys.transpose(-1, -2)) * scale
        global_real = mask[:, None, None, None, :num_global]
        allowed = torch.cat([band.allowed.expand_as(window_logits),
                             global_real.expand_as(key_logits)], dim=-1)
        weights = masked_softmax(torch.cat([window_logits, key_logits], dim=-1), allowed)
        weights = F.dropout(weights, self.options.dropout, self.training)
        width = window_logits.shape[-1]
        out = band.apply(weights[..., :width], vp)
        out = out + (weights[..., width:] @ global_values[:, :, None]).flatten(-3, -2)
        out = band.unpad(out)

        # Global queries see every real key: row_logits (batch, heads, g, seq).
        row_logits = q[:, :, :num_global] @ k.transpose(-1, -2) * scale
        global_weights = masked_softmax(row_logits, key_mask(mask))
        global_out = F.dropout(global_weights, self.options.dropout, self.training) @ v
        return torch.cat([global_out, out[:, :, num_global:]], dim=2)
