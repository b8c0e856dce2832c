"""Nystromformer (attention_zoo/nystrom.py), its landmarks (landmarks.py) and the Newton-Schulz
pseudo-inverse (pinv.py), by value against computations written out here."""
from __future__ import annotations

import pytest
import torch

from attention_zoo.landmarks import LandmarkOptions, real_tokens_in_windows, segment_means
from attention_zoo.masking import suffix_mask
from attention_zoo.nystrom import NystromConvOptions
from attention_zoo.pinv import masked_pinv, newton_pinv
from attention_zoo.registry import AttentionError
from attention_zoo.soft import SoftOptions


def test_segment_means_over_real_tokens_mark_empty_segments_invalid():
    """Example 0: 5 real tokens in 2 segments (ranks 0-2 -> segment 0: 0 * 2 // 5 = 0, 2 * 2 //
    5 = 0; ranks 3-4 -> 1). Example 1: 2 real tokens in 4 segments: ranks 0, 1 -> segments 0 * 4
    // 2 = 0 and 4 // 2 = 2, so segments 1 and 3 are empty (zero, invalid). Padding holds junk
    that must not show: NaN, which a mask applied by multiplying would let through."""
    x = torch.arange(1, 7, dtype=torch.float64).reshape(1, 1, 6, 1).repeat(2, 1, 1, 1)
    x[0, 0, 5:] = x[1, 0, 2:] = float("nan")
    mask = suffix_mask([5, 2], 6)
    means, valid = segment_means(x, mask, 2)
    torch.testing.assert_close(means[0, 0, :, 0], torch.tensor([2.0, 4.5], dtype=torch.float64))
    means, valid = segment_means(x, mask, 4)
    assert valid.tolist() == [[True, True, True, True], [True, False, True, False]]
    torch.testing.assert_close(means[1, 0, :, 0], torch.tensor([1.0, 0.0, 2.0, 0.0],
                                                                dtype=torch.float64))
    # example 0 at 4 segments: ranks 0, 1, 2, 3, 4 -> segments 0, 0, 1, 2, 3
    torch.testing.assert_close(means[0, 0, :, 0], torch.tensor([1.5, 3.0, 4.0, 5.0],
                                                                dtype=torch.float64))


def test_windows_hold_the_real_tokens_in_order_and_only_real_windows_are_valid():
    """seq 8 in windows of 2: an example of 4 real tokens fills windows 0 and 1 exactly (window 2
    starts at its length: not valid); one of 3 replicates its last real token."""
    x = torch.arange(10, 18, dtype=torch.float32).reshape(1, 1, 8, 1).repeat(2, 1, 1, 1)
    mask = torch.tensor([[True, False, True, True, False, True, False, False],
                         [True, True, True] + [False] * 5])
    out, valid = real_tokens_in_windows(x, mask, 2)
    assert valid.tolist() == [[True, True, False, False], [True, True, False, False]]
    assert out[0, 0, :, 0].tolist() == [10, 12, 13, 15, 15, 15, 15, 15]
    assert out[1, 0, :, 0].tolist() == [10, 11, 12, 12, 12, 12, 12, 12]


def razavi_step(a, z):
    """Z (13I - 15AZ + 7(AZ)^2 - (AZ)^3) / 4, written out."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    x = a @ z
    return z @ (13 * eye - 15 * x + 7 * x @ x - x @ x @ x) / 4


def test_newton_pinv_starts_from_the_transpose_over_both_norms_for_any_batch_shape():
    """One Razavi step from Z0 = A^T / (||A||_1 ||A||_inf) (max column sum times max row sum),
    for a single matrix and a batch of them (a non-symmetric A tells the two norms apart);
    many steps reach torch's pseudo-inverse."""
    torch.manual_seed(0)
    a = torch.rand(5, 5, dtype=torch.float64) + torch.diag(torch.tensor([0., 1, 2, 3, 4],
                                                                        dtype=torch.float64))
    z0 = a.T / (a.abs().sum(0).max() * a.abs().sum(1).max())
    torch.testing.assert_close(newton_pinv(a, 1, "razavi"), razavi_step(a, z0))
    batch = torch.stack([a, a.T * 2])
    z0s = torch.stack([z0, z0.T / 2])  # (2 A^T)^T / (2 ||A||_inf * 2 ||A||_1)
    torch.testing.assert_close(newton_pinv(batch, 1, "razavi"), razavi_step(batch, z0s))
    torch.testing.assert_close(newton_pinv(a, 30, "razavi"), torch.linalg.pinv(a), rtol=1e-8,
                               atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_newton_pinv_of_low_precision_input_is_computed_in_float32(dtype):
    """Both inverses take low-precision landmark kernels to float32 first: the result is float32,
    bit-equal to inverting the same values given in float32, and near torch's pseudo-inverse."""
    torch.manual_seed(1)
    a = (torch.rand(2, 4, 4) + 2 * torch.eye(4)).to(dtype)
    for pinv in (lambda x: newton_pinv(x, 12, "razavi"),
                 lambda x: masked_pinv(x[None], torch.ones(1, 4, dtype=torch.bool), 12,
                                       "razavi")[0]):
        out = pinv(a)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, pinv(a.float()), rtol=0, atol=0)
        torch.testing.assert_close(out, torch.linalg.pinv(a.float()), rtol=1e-4, atol=1e-5)


def test_masked_pinv_inverts_the_valid_block_with_the_update_asked():
    """A row-stochastic 3 x 3 block (a landmark kernel) in a 4 x 4 matrix whose landmark 3 is
    empty (its row and column junk): the block's own iterate, for both updates, which differ
    after 2 steps."""
    torch.manual_seed(2)
    block = torch.softmax(torch.randn(1, 1, 3, 3, dtype=torch.float64), dim=-1)
    a = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 5
    a[:, :, :3, :3] = block
    valid = torch.tensor([[True, True, True, False]])
    for update in ("razavi", "newton_schulz"):
        out = masked_pinv(a, valid, 2, update)
        torch.testing.assert_close(out[:, :, :3, :3], newton_pinv(block, 2, update))
    with pytest.raises(TypeError):  # no default update: each method names its own
        masked_pinv(a, valid, 2)
    assert not torch.allclose(masked_pinv(a, valid, 2, "newton_schulz"),
                              masked_pinv(a, valid, 2, "razavi"))


def test_landmark_options_are_checked_with_the_options_class_named():
    """One landmark and zero pseudo-inverse steps are allowed; below that the error names the
    options class of Nystrom, Nystrom+Conv or SOFT, the option and its bound."""
    for cls in (LandmarkOptions, NystromConvOptions, SoftOptions):
        cls(num_landmarks=1, pinv_iterations=0)
        for options, message in (({"num_landmarks": 0}, "num_landmarks must be an int >= 1, "
                                                        "got 0"),
                                 ({"pinv_iterations": -1}, "pinv_iterations must be an int "
                                                           ">= 0, got -1")):
            with pytest.raises(AttentionError) as error:
                cls(**options)
            assert str(error.value) == f"{cls.__name__}: {message}"
