"""Exact softmax attention: the fast fused path and the explicit n x n oracle.

    out = dropout(softmax(q k^T / sqrt(d))) v

Attention dropout (option `dropout`, training mode only) zeroes each probability with that rate
and scales the rest by 1 / (1 - rate), as the MRA comparison's harness did for its softmax
Transformer (0.1, its `dropout_prob`); its mask comes from torch's global RNG, like the model's
other dropout layers. The fused `softmax` defaults to the harness's 0.1; `softmax_naive`, the
test oracle, to 0.0.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .masking import key_mask, masked_softmax
from .registry import Attention, register_attention, require_probability


@dataclasses.dataclass
class SoftmaxOptions:
    """dropout: rate of dropout on the attention probabilities in training mode (0.1 in the
    MRA comparison's harness; 0.0 = none)."""

    dropout: float = 0.1

    def __post_init__(self) -> None:
        require_probability("softmax", self, "dropout")


@dataclasses.dataclass
class NaiveSoftmaxOptions(SoftmaxOptions):
    """dropout: as softmax's, 0.0 by default: the oracle is exact in training mode too."""

    dropout: float = 0.0


def _keys_for_empty_examples(mask: torch.Tensor) -> torch.Tensor:
    """Key mask where examples with no real token may see every key.

    A row with no allowed key makes softmax 0/0 = NaN. It can only happen for an example with no
    real token at all, whose queries are all padding and are zeroed anyway; letting those rows see
    every key keeps the arithmetic finite (and its gradients) without changing any real output.
    """
    empty = ~mask.any(dim=-1, keepdim=True)
    return mask | empty


@register_attention("softmax", SoftmaxOptions)
class SoftmaxAttention(Attention):
    """softmax(q k^T / sqrt(d)) v through torch's fused scaled_dot_product_attention."""

    full_precision = False  # the fused kernel is stable in fp16 and bf16

    def _attend(self, q, k, v, mask):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask(_keys_for_empty_examples(mask)),
            dropout_p=self.options.dropout if self.training else 0.0)


@register_attention("softmax_naive", NaiveSoftmaxOptions)
class NaiveSoftmaxAttention(Attention):
    """The same math with the n x n matrix written out: the test oracle, and the paper's
    "Transformer" baseline for memory comparisons."""

    full_precision = False  # max-subtracted softmax: stable in fp16 and bf16

    def _attend(self, q, k, v, mask):
        # logits: (batch, heads, seq_q, seq_k)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        weights = masked_softmax(logits, key_mask(mask))
        return F.dropout(weights, self.options.dropout, self.training) @ v
