"""Scatterbrain: sparse plus low-rank attention (Chen et al., NeurIPS 2021).

A Performer estimate L covers every key; on a local window the estimate is replaced by the exact
softmax kernel through the sparse correction S = exp(logits) - L restricted to the window:

    numerator   = L v + S v,          L_ij = phi(q_i) . phi(k_j)  (FAVOR+, all keys)
    denominator = L 1 + S 1,          S_ij = exp(q_i . k_j / sqrt(d)) - L_ij  (j in the window)

so window keys count exactly and the others through the features. Both parts are scaled to one
per-query reference before they are added (see `_attend`), so the normalisers combine
consistently and nothing overflows. Cost O(n m d) for the low-rank part plus O(n * 3w/2 * (d + m))
for the window.

Protocol options, defaults as in the Scatterbrain code the MRA comparison ran: m = int(d ln d)
features (110 at d = 32, performer-pytorch's default; `num_features`) on the hyperbolic (cosh)
map, exp(+-w . x' - |x'|^2 / 2) on m / 2 orthogonal rows (`feature_map`). lra-zoo's former
setting is `num_features: 256, feature_map: positive`. The window is the published one, the w
keys [i - w // 2, i - w // 2 + w) ([i - 32, i + 32) at w = 64); `window_shape: symmetric` takes
|i - j| <= w // 2 (one key more at even w), as Longformer's (DEVIATIONS.md).
"""

from __future__ import annotations

import dataclasses
import enum
import math

import torch

from .local import Band
from .masking import neg_inf
from .performer import FeatureMap, PerformerAttention, PerformerOptions, linear_attention
from .registry import Choice, register_attention, require_choice, require_ints


class WindowShape(Choice):
    half_open = enum.auto()  # the w keys [i - w // 2, i - w // 2 + w), the published window
    symmetric = enum.auto()  # |i - j| <= w // 2


@dataclasses.dataclass
class ScatterbrainOptions(PerformerOptions):
    """window: w keys computed exactly (64 in the MRA comparison), placed by window_shape:
        half_open (published) [i - w // 2, i - w // 2 + w), or symmetric |i - j| <= w // 2.
    The low-rank part takes Performer's options with the published Scatterbrain defaults:
    num_features None = int(head_dim * ln(head_dim)) (110 at head_dim 32) on the hyperbolic
    (cosh) map, 55 rows; `num_features: 256, feature_map: positive` is lra-zoo's former setting.
    Features are fixed per seed by default (redraw_every None).
    """

    num_features: int | None = None
    feature_map: FeatureMap = FeatureMap.hyperbolic
    window: int = 64
    window_shape: WindowShape = WindowShape.half_open

    def __post_init__(self) -> None:
        super().__post_init__()
        require_ints("scatterbrain", self, window=0)
        require_choice("scatterbrain", self, window_shape=WindowShape)


@register_attention("scatterbrain", ScatterbrainOptions)
class ScatterbrainAttention(PerformerAttention):
    """Local window (exact) plus FAVOR+ low rank for the rest.

    A Performer whose window keys count exactly. Randomness is Performer's: fixed features per seed
    by default, train and eval alike, so eval is deterministic. phi(k) is zero at padded keys and
    the window masks them, so padding never counts. With a window covering the sequence the
    low-rank part cancels and the output is exact softmax attention.
    """

    def _attend(self, q, k, v, mask):
        w = self.options.window
        # keys from i - w // 2 up to i + ahead
        ahead = w - w // 2 - 1 if self.options.window_shape == "half_open" else w // 2
        band = Band(mask, w // 2, ahead)
        # phi_q . phi_k estimates exp(logit - q_offset - k_offset).
        phi_q, q_offset, phi_k, k_offset = self.features(q, k, mask)
        low_num, low_den = linear_attention(phi_q, phi_k, v)  # (.., seq, d), (.., seq, 1)

        qp, kp, vp = band.pad(q), band.pad(k), band.pad(v)
        # window_logits, low_window: (batch, heads, nb, block, 3 * block)
        window_logits = band.scores(qp, kp) / math.sqrt(q.shape[-1])
        window_logits = window_logits.masked_fill(~band.allowed, neg_inf(q.dtype))
        low_window = torch.where(band.allowed, band.scores(band.pad(phi_q), band.pad(phi_k)), 0)

        # One reference per query: the larger of the low-rank scale and the window's max logit.
        # Exact weights exp(logit - ref) and the rescaled low rank exp(offsets - ref) L are then
        # both <= 1 at their largest, and share the scale exp(ref).
        # low_log_scale: (batch, heads, nb, block, 1)
        low_log_scale = band.query_blocks(band.pad(q_offset)) + k_offset[..., None]
        ref = torch.maximum(window_logits.amax(dim=-1, keepdim=True), low_log_scale).detach()
        low_scale = torch.exp(low_log_scale - ref)
        # Sparse correction on the window, already at the shared scale.
        correction = torch.exp(window_logits - ref) - low_scale * low_window

        scale = band.unpad(low_scale.flatten(-3, -2))  # (batch, heads, seq, 1)
        numerator = scale * low_num + band.unpad(band.apply(correction, vp))
        denominator = scale * low_den + band.unpad(correction.sum(dim=-1, keepdim=True)
                                                   .flatten(-3, -2))
        # Positive for every real query (its own exact weight is in it); 0 only for an example with
        # no real key, whose rows are padding and are zeroed by the base class.
        return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
