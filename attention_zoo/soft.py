"""SOFT (Lu et al., NeurIPS 2021): softmax-free attention with a Gaussian kernel and shared q = k.

    out = K(q, q~) pinv(K(q~, q~)) K(q~, q) v,    K(a, b) = exp(-||a - b||^2 / 2)

with no row normalisation: the Nystrom approximation of K(q, q) v, which is the method itself
(not an estimate of softmax attention). As in the LRA port used by the MRA comparison, q is first
scaled by d^-1/4, so the kernel is exp(-||q - k||^2 / (2 sqrt(d))) in the unscaled inputs.

Landmarks q~ come from a strided conv (kernel = stride = s) followed by LayerNorm and GELU. The
stride is fixed by the longest input, s = ceil(max_seq_len / num_landmarks), so an input at
max_seq_len gets at most num_landmarks landmarks and a shorter one ceil(seq / s) (SOFT fixes the
ratio, not the count). Padding never shapes a landmark: the conv runs over each example's real
tokens moved to the front, the window that would straddle padding repeats the last real token
(landmarks.real_tokens_in_windows), and windows with no real token are masked out of every kernel
and given identity rows in the inverse. The inverse is the Newton-Schulz iteration Z <- Z(2I - AZ)
(pinv.py) from Z0 = A / ||A||_1^2: the official code instead searches alpha in Z0 = alpha A with
`.item()` host syncs; this start is inside the convergence range 0 < alpha < 2 / sigma_max^2
without a search.

Deterministic (no randomness). Math in float32 (float64 for float64 inputs) under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .conv_branch import ConvOptions, WithConvBranch
from .landmarks import LandmarkOptions, real_tokens_in_windows
from .masking import masked_rows
from .pinv import masked_pinv
from .registry import Attention, register_attention


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """exp(-||a_i - b_j||^2 / 2): a (..., n, d), b (..., m, d) -> (..., n, m).

    Expanded as |a|^2 + |b|^2 - 2ab (clamped at 0) rather than cdist, whose gradient is NaN at
    zero distance.
    """
    sq = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2 * a @ b.transpose(-1, -2)
    return torch.exp(-0.5 * sq.clamp_min(0))


def soft_kernel_product(
    q: torch.Tensor,
    landmarks: torch.Tensor,
    landmark_valid: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    iterations: int,
) -> torch.Tensor:
    """K(q, q~) pinv(K(q~, q~)) K(q~, q) v over real keys and valid landmarks.

    q, v: (batch, heads, seq, dim); landmarks: (batch, heads, m, dim); landmark_valid: (batch, m);
    mask: (batch, seq). With landmarks = q (all valid) this is K(q, q) K(q, q)^+ K(q, q) v, which
    is K(q, q) v whenever the iterations have converged.
    """
    # k_ql: (batch, heads, seq, m); invalid landmarks contribute nothing.
    k_ql = torch.where(landmark_valid[:, None, None, :], gaussian_kernel(q, landmarks), 0)
    k_ll = gaussian_kernel(landmarks, landmarks)
    v = masked_rows(v, mask)  # padded keys drop out of K(q~, q) v
    inverse = masked_pinv(k_ll, landmark_valid, iterations, "newton_schulz")
    return k_ql @ (inverse @ (k_ql.transpose(-1, -2) @ v))


@dataclass
class SoftOptions(LandmarkOptions):
    pinv_iterations: int = 20  # the official code's max_iter


@register_attention("soft", SoftOptions)
class SoftAttention(Attention):
    """SOFT: Gaussian-kernel Nystrom attention with conv + LayerNorm + GELU landmarks.

    k is ignored: the encoder passes k = q (needs_shared_qk).
    """

    needs_shared_qk = True
    approximates_softmax = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stride = -(-self.max_seq_len // self.options.num_landmarks)
        self.landmark_conv = nn.Conv1d(self.head_dim, self.head_dim, kernel_size=self.stride,
                                       stride=self.stride, bias=False)
        self.landmark_norm = nn.LayerNorm(self.head_dim)

    def _attend(self, q, k, v, mask):
        batch, heads, _, dim = q.shape
        q = q * dim**-0.25  # padded rows are zero (base class)
        # windows: (batch, heads, w * stride, dim) of real tokens only; valid: (batch, w).
        windows, valid = real_tokens_in_windows(q, mask, self.stride)
        conv_in = windows.reshape(batch * heads, -1, dim).transpose(1, 2)
        landmarks = self.landmark_conv(conv_in).transpose(1, 2).reshape(batch, heads, -1, dim)
        landmarks = F.gelu(self.landmark_norm(landmarks))
        return soft_kernel_product(q, landmarks, valid, v, mask, self.options.pinv_iterations)


@dataclass
class SoftConvOptions(ConvOptions, SoftOptions):
    pass


@register_attention("soft_conv", SoftConvOptions)
class SoftConvAttention(WithConvBranch, SoftAttention):
    """SOFT plus the depthwise conv branch over masked v (conv_branch.py), kernel 33."""
