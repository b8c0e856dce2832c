"""Performer (attention_zoo/performer.py) and its FAVOR+ features (random_features.py), by value:
the feature map and its offsets written out, the default feature count, the options reaching
the features, and the kernel attention's sums against a loop."""

from __future__ import annotations

import math

import pytest
import torch

from attention_zoo import build_attention
from attention_zoo.draws import generator
from attention_zoo.masking import suffix_mask
from attention_zoo.performer import default_feature_count, linear_attention
from attention_zoo.random_features import RandomFeatures, orthogonal_gaussian


def performer(head_dim=8, **options):
    return build_attention("performer", num_heads=2, head_dim=head_dim, max_seq_len=64,
                           **options)


@pytest.mark.parametrize("head_dim, count", [(32, 110), (16, 44), (3, 3), (2, 1), (1, 1)])
def test_default_feature_count_is_d_ln_d_and_at_least_one(head_dim, count):
    """int(d ln d): 32 ln 32 = 110.9, 16 ln 16 = 44.4, 3 ln 3 = 3.3, 2 ln 2 = 1.4; ln 1 = 0."""
    assert default_feature_count(head_dim) == count


def test_num_features_none_takes_the_default_count():
    assert performer(head_dim=32, num_features=None).features.num_features == 110
    assert performer(head_dim=32, num_features=None).features.projection.shape == (110, 32)
    assert performer(num_features=12).features.num_features == 12


def test_the_seed_option_seeds_the_features_and_the_map_option_picks_them():
    """seed: the projection is draw 0 of that seed (another seed, another projection);
    feature_map: hyperbolic builds m // 2 rows and m features, positive m of each."""
    attn = performer(num_features=12, seed=7)
    want = orthogonal_gaussian(12, 8, generator(7, 0))
    assert torch.equal(attn.features.projection, want)
    assert attn.features.draws.seed == 7
    assert not torch.equal(performer(num_features=12, seed=8).features.projection, want)
    positive, hyperbolic = (performer(num_features=12, seed=0, feature_map=m).features
                            for m in ("positive", "hyperbolic"))
    assert positive.hyperbolic is False and hyperbolic.hyperbolic is True
    assert positive.projection.shape == (12, 8) and positive.num_features == 12
    assert hyperbolic.projection.shape == (6, 8) and hyperbolic.num_features == 12


@pytest.mark.parametrize("num_features, rows, features", [(12, 6, 12), (7, 3, 6), (1, 1, 2)])
def test_hyperbolic_features_have_half_the_rows_and_an_even_count(num_features, rows, features):
    rf = RandomFeatures(8, num_features, 0, None, hyperbolic=True)
    assert rf.projection.shape == (rows, 8) and rf.num_features == features


def test_positive_features_are_the_default():
    rf = RandomFeatures(8, 5, 0, None)
    assert rf.hyperbolic is False and rf.projection.shape == (5, 8) and rf.num_features == 5


def written_out(rf, q, k, mask):
    """The feature map of random_features.py's docstring, in float64, one (example, head) at a
    time: u = W x' - |x'|^2 / 2 (hyperbolic: [W x'; -W x'] - |x'|^2 / 2), x' = d^-1/4 x; phi_q =
    m^-1/2 exp(u_q - its row max), phi_k = m^-1/2 exp(u_k - the max over real keys), 0 at
    padded keys."""
    w = rf.projection.double()
    d, m = q.shape[-1], rf.num_features
    phi_q, q_off = torch.zeros(*q.shape[:3], m, dtype=torch.float64), []
    phi_k, k_off = torch.zeros(*k.shape[:3], m, dtype=torch.float64), []
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            def log_features(x):
                x = x.double() * d ** -0.25
                proj = x @ w.T
                if rf.hyperbolic:
                    proj = torch.cat([proj, -proj], dim=1)
                return proj - 0.5 * (x * x).sum(dim=1, keepdim=True)

            u_q, u_k = log_features(q[b, h]), log_features(k[b, h])
            row_max = u_q.max(dim=1, keepdim=True).values
            phi_q[b, h] = torch.exp(u_q - row_max) / math.sqrt(m)
            q_off.append(row_max)
            real = mask[b]
            top = u_k[real].max() if real.any() else None
            if top is not None:
                phi_k[b, h, real] = torch.exp(u_k[real] - top) / math.sqrt(m)
            k_off.append(top)
    return phi_q, q_off, phi_k, k_off


@pytest.mark.parametrize("hyperbolic", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_features_and_offsets_are_the_written_out_map(hyperbolic, dtype):
    """Two examples (one padded) of two heads, at scales that make the offsets differ per
    query row and per example: each offset is the row's own / the example and head's own."""
    torch.manual_seed(0)
    b, h, n, d = 2, 2, 6, 8
    q = torch.randn(b, h, n, d, dtype=dtype) * torch.linspace(0.5, 3, n, dtype=dtype)[:, None]
    k = torch.randn(b, h, n, d, dtype=dtype) * torch.tensor([1.0, 2.5], dtype=dtype)[:, None,
                                                                                    None, None]
    mask = suffix_mask([6, 4], n)
    rf = RandomFeatures(d, 10, 3, None, hyperbolic=hyperbolic)
    phi_q, q_offset, phi_k, k_offset = rf(q, k, mask)
    want_q, want_q_off, want_k, want_k_off = written_out(rf, q, k, mask)
    assert phi_q.dtype == phi_k.dtype == dtype
    assert phi_q.shape == phi_k.shape == (b, h, n, 10)
    assert q_offset.shape == (b, h, n, 1) and k_offset.shape == (b, h, 1, 1)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12,
                                                                         "atol": 1e-14}
    torch.testing.assert_close(phi_q.double(), want_q, **tol)
    torch.testing.assert_close(phi_k.double(), want_k, **tol)
    torch.testing.assert_close(q_offset.double().reshape(-1, n),
                               torch.stack([o[:, 0] for o in want_q_off]), **tol)
    torch.testing.assert_close(k_offset.double().flatten(), torch.stack(want_k_off), **tol)
    assert (phi_k[1, :, 4:] == 0).all()


def test_hyperbolic_features_estimate_the_softmax_kernel():
    """The cosh map's pairs exp(+-w . x' - |x'|^2 / 2) / sqrt(2r) also estimate
    exp(q . k / sqrt(d)) (about 1% at 2^15 features and these small norms)."""
    torch.manual_seed(0)
    d = 8
    q = torch.randn(1, 1, 4, d) * 0.35
    k = q + 0.2 * torch.randn(1, 1, 4, d)
    rf = RandomFeatures(d, 1 << 15, 0, None, hyperbolic=True)
    phi_q, q_off, phi_k, k_off = rf(q, k, torch.ones(1, 4, dtype=torch.bool))
    estimate = (phi_q * phi_k).sum(-1) * torch.exp(q_off[..., 0] + k_off[..., 0])
    torch.testing.assert_close(estimate, torch.exp((q * k).sum(-1) / math.sqrt(d)), rtol=0.03,
                               atol=0)


def test_linear_attention_is_the_sum_over_keys():
    """numerator_i = sum_j (phi_q_i . phi_k_j) v_j and denominator_i = sum_j phi_q_i . phi_k_j,
    as a loop over keys, at sizes where seq, m and d all differ."""
    torch.manual_seed(1)
    phi_q, phi_k = torch.rand(2, 3, 5, 7), torch.rand(2, 3, 5, 7)
    v = torch.randn(2, 3, 5, 4)
    numerator, denominator = linear_attention(phi_q, phi_k, v)
    weights = torch.einsum("bhim,bhjm->bhij", phi_q, phi_k)
    want = sum(weights[..., j, None] * v[:, :, None, j] for j in range(5))
    torch.testing.assert_close(numerator, want)
    torch.testing.assert_close(denominator, weights.sum(-1, keepdim=True))


def test_a_redraw_is_the_next_draw_of_the_module_seed():
    """redraw_every=1: training call 2 uses draw 1 of the features' seed."""
    rf = RandomFeatures(8, 6, 11, 1).train()
    x, mask = torch.randn(1, 1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    assert torch.equal(rf.projection, orthogonal_gaussian(6, 8, generator(11, 0)))
    rf(x, x, mask)
    rf(x, x, mask)
    assert torch.equal(rf.projection, orthogonal_gaussian(6, 8, generator(11, 1)))


def test_options_are_checked_with_the_attention_and_option_named():
    from attention_zoo.performer import FeatureMap, PerformerOptions
    from attention_zoo.registry import AttentionError

    for ok in ({"num_features": 1}, {"num_features": None}, {"redraw_every": 1},
               {"redraw_every": None}, {"seed": 0}, {"seed": None}):
        PerformerOptions(**ok)
    for key, value, low in (("num_features", 0, 1), ("redraw_every", 0, 1), ("seed", -1, 0),
                            ("num_features", 2.0, 1)):
        with pytest.raises(AttentionError) as error:
            PerformerOptions(**{key: value})
        assert str(error.value) == (f"performer: {key} must be an int >= {low} or null, "
                                    f"got {value!r}")
    with pytest.raises(AttentionError) as error:
        PerformerOptions(feature_map="cosh")
    assert str(error.value) == ("performer: feature_map must be one of positive, hyperbolic, "
                                "got 'cosh'")
    assert PerformerOptions(feature_map="hyperbolic").feature_map is FeatureMap.hyperbolic
