"""Nystromformer (Xiong et al., AAAI 2021): softmax attention through m segment-mean landmarks.

    out = softmax(q k~^T / sqrt(d)) pinv(softmax(q~ k~^T / sqrt(d))) softmax(q~ k^T / sqrt(d)) v

q~ and k~ are masked segment means over each example's real tokens (landmarks.py), so padding
never shapes or dilutes a landmark and n need not be divisible by m. All three kernels are masked:
empty landmarks (an example shorter than m) drop out of the first two, padded keys out of the
third; the pseudo-inverse sees identity rows for empty landmarks (pinv.masked_pinv), so an example
with L < m real tokens is exactly a Nystrom approximation with L one-token landmarks, which equals
softmax attention up to the error left by the pseudo-inverse iterations. The pseudo-inverse scale
is per (batch, head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .conv_branch import ConvOptions, WithConvBranch
from .landmarks import LandmarkOptions, segment_means
from .masking import key_mask, masked_softmax
from .pinv import masked_pinv
from .registry import Attention, register_attention


@register_attention("nystrom", LandmarkOptions)
class NystromAttention(Attention):
    """Nystrom approximation of softmax attention with masked segment-mean landmarks.

    Deterministic (no randomness). Math in float32 (float64 for float64 inputs) under autocast.
    """

    def _attend(self, q, k, v, mask):
        scale = 1 / math.sqrt(q.shape[-1])
        num_landmarks = min(self.options.num_landmarks, q.shape[2])
        q_land, valid = segment_means(q, mask, num_landmarks)  # (batch, heads, m, dim)
        k_land, _ = segment_means(k, mask, num_landmarks)
        landmark_cols = valid[:, None, None, :]
        # kernel_1: (batch, heads, seq, m); kernel_2: (.., m, m); kernel_3: (.., m, seq).
        kernel_1 = masked_softmax(q @ k_land.transpose(-1, -2) * scale, landmark_cols)
        kernel_2 = masked_softmax(q_land @ k_land.transpose(-1, -2) * scale, landmark_cols)
        kernel_3 = masked_softmax(q_land @ k.transpose(-1, -2) * scale,
                                  key_mask(mask) & valid[:, None, :, None])
        inverse = masked_pinv(kernel_2, valid, self.options.pinv_iterations, "razavi")
        return kernel_1 @ (inverse @ (kernel_3 @ v))


@dataclass
class NystromConvOptions(ConvOptions, LandmarkOptions):
    pass


@register_attention("nystrom_conv", NystromConvOptions)
class NystromConvAttention(WithConvBranch, NystromAttention):
    """Nystrom plus the depthwise conv branch over masked v (conv_branch.py), kernel 33."""
