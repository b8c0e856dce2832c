"""Performer: linear attention through FAVOR+ positive random features (Choromanski et al., 2021).

    out = D^-1 phi(q) (phi(k)^T v),   D = diag(phi(q) sum_j phi(k_j))

with phi the feature map of `random_features.py`, whose products estimate exp(q . k / sqrt(d)).
Cost O(n m d) for m features; the n x n matrix is never formed.
"""

from __future__ import annotations

import dataclasses

import torch

from .draws import module_seed
from .random_features import RandomFeatures
from .registry import Attention, register_attention, require_ints


@dataclasses.dataclass
class PerformerOptions:
    """num_features: m random features (256 in the MRA comparison).
    redraw_every: None keeps the features drawn at construction; N redraws them every N
        training-mode forward calls (eval never redraws).
    seed: seed of the feature draws; None draws one from torch's global RNG at construction.
    """

    num_features: int = 256
    redraw_every: int | None = None
    seed: int | None = None

    def validate(self) -> None:
        require_ints("performer", self, nullable=("redraw_every", "seed"),
                     num_features=1, redraw_every=1, seed=0)


def linear_attention(
    phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised output and normaliser of kernel attention with features phi.

    phi_q, phi_k: (batch, heads, seq, m) (phi_k zero at padded keys); v: (batch, heads, seq, d).
    Returns numerator (batch, heads, seq, d) and denominator (batch, heads, seq, 1).
    """
    numerator = phi_q @ (phi_k.transpose(-1, -2) @ v)  # (m, d) summary first: O(n m d)
    denominator = phi_q @ phi_k.sum(dim=-2)[..., None]
    return numerator, denominator


@register_attention("performer", PerformerOptions)
class PerformerAttention(Attention):
    """FAVOR+ Performer attention.

    Randomness: the features are drawn from the module's seed (`random_features.RandomFeatures`);
    by default they stay fixed, in train and eval. With `redraw_every: N` they are redrawn every
    N training-mode calls; eval uses the latest draw and never redraws, so eval is deterministic.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        opts = self.options
        self.features = RandomFeatures(self.head_dim, opts.num_features, module_seed(opts.seed),
                                       opts.redraw_every)

    full_precision = True

    def _attend(self, q, k, v, mask):
        phi_q, _, phi_k, _ = self.features(q, k, mask)
        numerator, denominator = linear_attention(phi_q, phi_k, v)
        # The denominator is positive for every real query; it is 0 only for an example with no
        # real key, whose rows are padding and are zeroed by the base class.
        return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
