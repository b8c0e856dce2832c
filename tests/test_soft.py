"""SOFT (attention_zoo/soft.py) and the depthwise conv branch (conv_branch.py), by value against
computations written out here."""
from __future__ import annotations

import pytest
import torch

from attention_zoo import build_attention
from attention_zoo.conv_branch import ConvOptions
from attention_zoo.masking import suffix_mask
from attention_zoo.nystrom import NystromConvOptions
from attention_zoo.pinv import newton_pinv
from attention_zoo.registry import AttentionError
from attention_zoo.soft import SoftConvOptions, soft_kernel_product


def test_soft_inverts_the_landmark_kernel_by_newton_schulz():
    """K(q, l) Z K(l, q) v with K(a, b) = exp(-|a - b|^2 / 2) (from cdist here) and Z two
    Newton-Schulz steps on K(l, l) (not Razavi's, which differ after two steps); padded keys
    left out of K(l, q) v."""
    torch.manual_seed(0)
    q, v = torch.randn(2, 2, 6, 4, dtype=torch.float64), torch.randn(2, 2, 6, 4,
                                                                     dtype=torch.float64)
    landmarks = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    mask = suffix_mask([6, 4], 6)
    valid = torch.ones(2, 3, dtype=torch.bool)
    k_ql = torch.exp(-torch.cdist(q, landmarks) ** 2 / 2)
    k_ll = torch.exp(-torch.cdist(landmarks, landmarks) ** 2 / 2)
    real_v = v * mask[:, None, :, None]
    for update, same in (("newton_schulz", True), ("razavi", False)):
        want = k_ql @ newton_pinv(k_ll, 2, update) @ k_ql.transpose(-1, -2) @ real_v
        got = soft_kernel_product(q, landmarks, valid, v, mask, 2)
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-10) is same, update


def test_the_conv_branch_adds_a_depthwise_conv_of_the_real_values():
    """nystrom_conv = nystrom + sum_t w[h, t] v[i + t - k // 2] over real positions (zero
    beyond the input and at padding), one filter per head shared by the head's channels."""
    torch.manual_seed(0)
    plain = build_attention("nystrom", num_heads=2, head_dim=4, max_seq_len=16,
                            num_landmarks=4)
    torch.manual_seed(0)
    conv = build_attention("nystrom_conv", num_heads=2, head_dim=4, max_seq_len=16,
                           num_landmarks=4, conv_kernel=3)
    q, k, v = (torch.randn(2, 2, 7, 4) for _ in range(3))
    v[1, :, 5:] = 1e3  # padding content must not reach the branch
    mask = suffix_mask([7, 5], 7)
    w = conv.conv_branch.conv.weight.detach()[:, 0, :, 0]  # (heads, 3)
    want = torch.zeros_like(v)
    for b in range(2):
        for h in range(2):
            for i in range(int(mask[b].sum())):
                for t in range(3):
                    j = i + t - 1
                    if 0 <= j < 7 and mask[b, j]:
                        want[b, h, i] += w[h, t] * v[b, h, j]
    got = conv(q, k, v, mask) - plain(q, k, v, mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_conv_options_check_the_kernel_and_the_base_options_with_the_class_named():
    ConvOptions(conv_kernel=1)
    assert NystromConvOptions(conv_kernel=1).conv_kernel == 1
    for cls in (NystromConvOptions, SoftConvOptions):
        for options, message in (
                ({"conv_kernel": 0}, "conv_kernel must be an int >= 1, got 0"),
                ({"conv_kernel": 4}, "conv_kernel must be odd (output length = input length), "
                                     "got 4"),
                ({"num_landmarks": 0}, "num_landmarks must be an int >= 1, got 0")):
            with pytest.raises(AttentionError) as error:
                cls(**options)
            assert str(error.value) == f"{cls.__name__}: {message}"
