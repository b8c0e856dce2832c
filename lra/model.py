"""The shared LRA encoder: embeddings, pre-LayerNorm blocks with a pluggable attention, pooling and
a classifier head, plus the dual-encoder head for two-input tasks (Retrieval).

Shapes: tokens (batch, seq) long, mask (batch, seq) bool with True = real token.
Pair tasks take tokens and mask of shape (batch, 2, seq).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attention_zoo import build_attention
from attention_zoo.masking import masked_rows
from attention_zoo.registry import Choice, in_full_precision

from .checks import choice, fraction, positive


class Pooling(Choice):
    # The sum over real tokens divided by task.max_len, the published harness's mean over its
    # 2^k-padded input (a constant of the task, so padding-invariant).
    mean_over_max_len = enum.auto()
    mean = enum.auto()  # the mean over real tokens
    cls = enum.auto()  # a learned token prepended


class Activation(Choice):
    relu = enum.auto()  # the published harness's
    gelu = enum.auto()


@dataclass
class ModelConfig:
    """Defaults follow the "small" protocol of the Nystromformer and MRA harnesses."""

    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 32
    ffn_dim: int = 128
    dropout: float = 0.1
    pooling: Pooling = Pooling.mean_over_max_len
    head_activation: Activation = Activation.relu  # the head MLP's
    # Under autocast, run every attention on fp32 q, k, v with autocast off (the published
    # harness); false leaves exact softmax in the autocast dtype (the others are fp32 anyway).
    attention_fp32: bool = True

    def __post_init__(self) -> None:
        positive("model", self, "dim", "num_layers", "num_heads", "head_dim", "ffn_dim")
        fraction("model", self, "dropout")
        choice("model", self, pooling=Pooling, head_activation=Activation)


ACTIVATIONS = {Activation.relu: nn.ReLU, Activation.gelu: nn.GELU}


@dataclass
class AttentionSpec:
    name: str = "softmax"
    options: dict[str, Any] = field(default_factory=dict)


class AttentionLayer(nn.Module):
    """Project to heads, run the pluggable attention, merge heads."""

    def __init__(self, cfg: ModelConfig, attention: AttentionSpec, max_seq_len: int):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.attn = build_attention(attention.name, num_heads=cfg.num_heads,
                                    head_dim=cfg.head_dim, max_seq_len=max_seq_len,
                                    **attention.options)
        inner = cfg.num_heads * cfg.head_dim
        # Methods that need shared q/k (Reformer, SOFT) get one projection for both.
        self.shared_qk = self.attn.needs_shared_qk
        self.qkv = nn.Linear(cfg.dim, inner * (2 if self.shared_qk else 3))
        self.out = nn.Linear(inner, cfg.dim)
        self.fp32 = cfg.attention_fp32

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        # (batch, seq, parts * heads * head_dim) -> parts x (batch, heads, seq, head_dim)
        parts = self.qkv(x).view(batch, seq, -1, self.num_heads, self.head_dim)
        parts = parts.permute(2, 0, 3, 1, 4)
        q, k, v = (parts[0], parts[0], parts[1]) if self.shared_qk else parts
        if self.fp32 and torch.is_autocast_enabled(x.device.type):
            out = in_full_precision(self.attn, q, k, v, mask)  # (batch, heads, seq, head_dim)
        else:
            out = self.attn(q, k, v, mask)
        return self.out(out.transpose(1, 2).reshape(batch, seq, -1))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, cfg: ModelConfig, attention: AttentionSpec, max_seq_len: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = AttentionLayer(cfg, attention, max_seq_len)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.ffn_dim, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class Encoder(nn.Module):
    """Token + learned position embeddings, blocks, final LayerNorm, pooled to (batch, dim)."""

    def __init__(self, cfg: ModelConfig, attention: AttentionSpec, vocab_size: int,
                 max_len: int):
        super().__init__()
        self.pooling, self.max_len = cfg.pooling, max_len
        positions = max_len + (cfg.pooling == "cls")
        self.tokens = nn.Embedding(vocab_size, cfg.dim)
        self.positions = nn.Embedding(positions, cfg.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, attention, positions)
                                    for _ in range(cfg.num_layers))
        # Parameters an attention shares across layers (Linformer's E, as published) are tied
        # to the first layer's (`Attention.share_parameters`).
        for block in self.blocks[1:]:
            block.attn.attn.share_parameters(self.blocks[0].attn.attn)
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(tokens)  # (batch, seq, dim)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
            mask = torch.cat([mask.new_ones(len(x), 1), mask], dim=1)
        x = x + self.positions(torch.arange(x.shape[1], device=x.device))
        # Zero padded embeddings so nothing about padding enters the residual stream, whatever
        # the attention does with it.
        x = masked_rows(self.drop(x), mask)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if self.cls is not None:
            return x[:, 0]
        summed = masked_rows(x, mask).sum(1)  # (batch, dim), real tokens only
        if self.pooling == "mean_over_max_len":
            # Divided by the task's length, not the batch's: a batch padded to its longest
            # example (mini data) pools the same as one padded to max_len.
            return summed / self.max_len
        return summed / mask.sum(1, keepdim=True).clamp_min(1)


class Classifier(nn.Module):
    """Encoder + 2-layer MLP head. With `pair=True`, a dual encoder whose head takes
    [u, v, u*v, u-v] of the two pooled inputs (Retrieval)."""

    def __init__(self, cfg: ModelConfig, attention: AttentionSpec, *, vocab_size: int,
                 max_len: int, num_classes: int, pair: bool = False):
        super().__init__()
        self.pair = pair
        self.encoder = Encoder(cfg, attention, vocab_size, max_len)
        features = cfg.dim * (4 if pair else 1)
        self.head = nn.Sequential(nn.Linear(features, cfg.ffn_dim),
                                  ACTIVATIONS[cfg.head_activation](),
                                  nn.Linear(cfg.ffn_dim, num_classes))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.pair:
            return self.head(self.encoder(tokens, mask))
        batch = tokens.shape[0]
        # Encode both inputs in one pass: (batch, 2, seq) -> (2 * batch, seq).
        pooled = self.encoder(tokens.flatten(0, 1), mask.flatten(0, 1)).view(batch, 2, -1)
        u, v = pooled[:, 0], pooled[:, 1]
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))
