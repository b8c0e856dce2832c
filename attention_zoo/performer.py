"""Performer: linear attention through FAVOR+ positive random features (Choromanski et al., 2021).

    out = D^-1 phi(q) (phi(k)^T v),   D = diag(phi(q) sum_j phi(k_j))

with phi the feature map of `random_features.py`, whose products estimate exp(q . k / sqrt(d)).
Cost O(n m d) for m features; the n x n matrix is never formed.

Kept as ours where the MRA comparison's harness had bugs (DEVIATIONS.md): q and k are scaled by
d^-1/4 once (the harness did it twice), no eps is added to the features, and padded keys get
phi = 0 (the harness zeroed k, and phi(0) != 0 kept them in the denominator).
"""

from __future__ import annotations

import dataclasses
import enum
import math

import torch

from .draws import module_seed
from .random_features import RandomFeatures
from .registry import Attention, Choice, register_attention, require_choice, require_ints


class FeatureMap(Choice):
    positive = enum.auto()
    hyperbolic = enum.auto()  # the cosh map


@dataclasses.dataclass
class PerformerOptions:
    """num_features: m random features (256 in the MRA comparison); None takes
        int(head_dim * ln(head_dim)), performer-pytorch's default (110 at head_dim 32).
    feature_map: "positive" (m rows, exp(w . x' - |x'|^2 / 2)) or "hyperbolic" (the cosh map:
        m // 2 rows, each giving the pair exp(+-w . x' - |x'|^2 / 2)); see random_features.py.
    redraw_every: None keeps the features drawn at construction; N redraws them every N
        training-mode forward calls (eval never redraws).
    seed: seed of the feature draws; None draws one from torch's global RNG at construction.
    """

    num_features: int | None = 256
    feature_map: FeatureMap = FeatureMap.positive
    redraw_every: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        require_ints("performer", self, nullable=("num_features", "redraw_every", "seed"),
                     num_features=1, redraw_every=1, seed=0)
        require_choice("performer", self, feature_map=FeatureMap)


def default_feature_count(head_dim: int) -> int:
    """int(d ln d), at least 1: performer-pytorch's `nb_features` default, which the
    Scatterbrain code the MRA comparison ran kept (110 for d = 32)."""
    return max(1, int(head_dim * math.log(head_dim)))


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
        count = opts.num_features or default_feature_count(self.head_dim)
        self.features = RandomFeatures(self.head_dim, count, module_seed(opts.seed),
                                       opts.redraw_every, opts.feature_map == "hyperbolic")

    def _attend(self, q, k, v, mask):
        phi_q, _, phi_k, _ = self.features(q, k, mask)
        numerator, denominator = linear_attention(phi_q, phi_k, v)
        # The denominator is positive for every real query; it is 0 only for an example with no
        # real key, whose rows are padding and are zeroed by the base class.
        return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
