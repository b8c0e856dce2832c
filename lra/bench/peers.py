"""Peers: the PyPI implementations a user would otherwise pick, on the same q, k, v at equal
settings (the optional extra `peers`). Each entry maps one of our attentions to a builder of the
package's attention core for a budget value of our knob, called on (batch, heads, seq, head_dim)
tensors like ours, and the options of ours that make the settings equal.

Left out: linformer and h-transformer-1d expose only whole self-attention layers whose
projections of the sequence (Linformer's E, F) or of the model width are their own learned
parameters, so there is no setting at which they read our q, k, v.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable

import torch
from torch import nn

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Peer:
    attention: str          # ours
    package: str            # the PyPI name
    module: str             # its import name
    ours: Callable[[int], dict]   # budget value -> our options at the equal setting
    build: Callable[[int, int, int], Attend]   # (budget value, heads, head_dim) -> attend


def _performer(features: int, heads: int, head_dim: int) -> Attend:
    from performer_pytorch import FastAttention

    core = FastAttention(dim_heads=head_dim, nb_features=features, causal=False)
    return lambda q, k, v, mask: core(q, k, v)


def _nystrom(landmarks: int, heads: int, head_dim: int) -> Attend:
    from nystrom_attention import NystromAttention

    # Its layer projects x to q, k, v and back; identities make it read ours as they are.
    layer = NystromAttention(dim=heads * head_dim, dim_head=head_dim, heads=heads,
                             num_landmarks=landmarks, pinv_iterations=6, residual=False)
    layer.to_qkv, layer.to_out = nn.Identity(), nn.Identity()

    def attend(q, k, v, mask):
        merged = torch.cat([x.transpose(1, 2).flatten(2) for x in (q, k, v)], dim=-1)
        out = layer(merged)  # (batch, seq, heads * head_dim)
        return out.unflatten(-1, (heads, head_dim)).transpose(1, 2)
    return attend


def _local(window: int, heads: int, head_dim: int) -> Attend:
    from local_attention import LocalAttention

    # exact_windowsize: query i sees |i - j| <= window_size, our longformer's window / 2.
    core = LocalAttention(window_size=window // 2, causal=False, look_backward=1,
                          look_forward=1, exact_windowsize=True, autopad=True)
    return lambda q, k, v, mask: core(q, k, v)


def _reformer(hashes: int, heads: int, head_dim: int) -> Attend:
    from reformer_pytorch.reformer_pytorch import LSHAttention

    core = LSHAttention(bucket_size=64, n_hashes=hashes, causal=False)

    def attend(q, k, v, mask):  # shared qk; the package folds heads into the batch
        batch = q.shape[0]
        out = core(q.flatten(0, 1), v.flatten(0, 1))[0]
        return out.unflatten(0, (batch, heads))
    return attend


PEERS = [
    Peer("performer", "performer-pytorch", "performer_pytorch",
         lambda m: {"num_features": m}, _performer),
    Peer("nystrom", "nystrom-attention", "nystrom_attention",
         lambda m: {"num_landmarks": m}, _nystrom),
    Peer("longformer", "local-attention", "local_attention",
         lambda w: {"window": w, "num_global": 0}, _local),
    Peer("reformer", "reformer-pytorch", "reformer_pytorch",
         lambda h: {"num_hashes": h, "chunk_size": 64}, _reformer),
]


def installed() -> list[Peer]:
    return [p for p in PEERS if importlib.util.find_spec(p.module) is not None]
