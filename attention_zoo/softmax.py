"""Exact softmax attention: the fast fused path and the explicit n x n oracle."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .masking import key_mask, masked_softmax
from .registry import Attention, register_attention


def _keys_for_empty_examples(mask: torch.Tensor) -> torch.Tensor:
    """Key mask where examples with no real token may see every key.

    A row with no allowed key makes softmax 0/0 = NaN. It can only happen for an example with no
    real token at all, whose queries are all padding and are zeroed anyway; letting those rows see
    every key keeps the arithmetic finite (and its gradients) without changing any real output.
    """
    empty = ~mask.any(dim=-1, keepdim=True)
    return mask | empty


@register_attention("softmax")
class SoftmaxAttention(Attention):
    """softmax(q k^T / sqrt(d)) v through torch's fused scaled_dot_product_attention."""

    def _attend(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask(
            _keys_for_empty_examples(mask)))


@register_attention("softmax_naive")
class NaiveSoftmaxAttention(Attention):
    """The same math with the n x n matrix written out: the test oracle, and the paper's
    "Transformer" baseline for memory comparisons."""

    def _attend(self, q, k, v, mask):
        # logits: (batch, heads, seq_q, seq_k)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return masked_softmax(logits, key_mask(mask)) @ v
