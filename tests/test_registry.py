"""attention_zoo.registry: registration, lookup, option and input checks with their messages, the
full-precision rule and the module repr. A probe attention is registered into a copy of the
registry, so the real one is left as it was."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from attention_zoo import (
    AttentionError,
    attention_class,
    build_attention,
    list_attentions,
    registry,
)
from attention_zoo.masking import suffix_mask
from attention_zoo.registry import Attention, NoOptions, make_options, options_class
from attention_zoo.yoso import Hash


@dataclasses.dataclass
class ProbeOptions:
    alphas: int = 1
    alpha_x: int = 2
    alpha_xy: int = 3


class Probe(Attention):
    """Records the dtypes its _attend sees; returns v."""

    max_supported_len = 8

    def _attend(self, q, k, v, mask):
        self.seen = (q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu"))
        return v


@pytest.fixture
def probe(monkeypatch):
    """The name 'probe', registered for this test only."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_attention("probe", ProbeOptions)(Probe)
    return Probe


def qkv(batch=1, heads=2, seq=4, dim=3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, heads, seq, dim, generator=gen).to(dtype) for _ in range(3)]


def test_registration_and_lookup(probe):
    assert probe.name == "probe"
    assert attention_class("probe") is Probe
    assert options_class("probe") is ProbeOptions
    assert "probe" in list_attentions()
    with pytest.raises(ValueError, match=r"^attention 'probe' is registered twice$"):
        registry.register_attention("probe", ProbeOptions)(Probe)
    with pytest.raises(TypeError, match=r"^options for 'other' must be a dataclass, got <class"):
        registry.register_attention("other", int)


def test_unknown_name_suggests_the_closest_and_lists_all():
    names = ", ".join(list_attentions())
    with pytest.raises(AttentionError) as err:
        build_attention("mra3", num_heads=2, head_dim=16, max_seq_len=64)
    assert str(err.value) == f"unknown attention 'mra3'. Did you mean 'mra2'? Valid names: {names}"
    with pytest.raises(AttentionError) as err:
        build_attention("zzzzzz", num_heads=2, head_dim=16, max_seq_len=64)
    assert str(err.value) == f"unknown attention 'zzzzzz'. Valid names: {names}"


def test_unknown_option_suggests_at_most_two_and_lists_all(probe):
    """difflib's ratio 2M / T ranks alphas (10/11), alpha_x (10/12), alpha_xy (10/13) for 'alpha':
    the two best are named."""
    with pytest.raises(AttentionError) as err:
        make_options("probe", alpha=1, zzz=2)
    assert str(err.value) == ("attention 'probe' has no option(s) alpha, zzz. Did you mean alphas "
                              "or alpha_x? Valid options: alpha_x, alpha_xy, alphas")
    with pytest.raises(AttentionError) as err:
        make_options("softmax", qqqq=1)
    assert str(err.value) == "attention 'softmax' has no option(s) qqqq. Valid options: dropout"
    with pytest.raises(AttentionError) as err:
        make_options("h_transformer_1d", block=1)
    assert str(err.value) == ("attention 'h_transformer_1d' has no option(s) block. Did you mean "
                              "block_size? Valid options: block_size")


def test_no_options_lists_none(probe):
    registry.register_attention("bare", NoOptions)(type("Bare", (Probe,), {}))
    with pytest.raises(AttentionError, match=r"has no option\(s\) x\. Valid options: \(none\)$"):
        make_options("bare", x=1)


@pytest.mark.parametrize("key", ["num_heads", "head_dim", "max_seq_len"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_sizes_must_be_positive_ints(key, value):
    sizes = {"num_heads": 2, "head_dim": 16, "max_seq_len": 64, key: value}
    with pytest.raises(AttentionError) as err:
        build_attention("softmax", **sizes)
    assert str(err.value) == f"attention 'softmax': {key} must be a positive int, got {value!r}"


def test_sizes_of_one_are_allowed():
    attn = build_attention("softmax", num_heads=1, head_dim=1, max_seq_len=1)
    assert (attn.num_heads, attn.head_dim, attn.max_seq_len) == (1, 1, 1)


def test_nullable_int_message_says_or_null():
    with pytest.raises(AttentionError) as err:
        make_options("yoso", tau_slack=-1)
    assert str(err.value) == "yoso: tau_slack must be an int >= 0 or null, got -1"


@pytest.mark.parametrize("value", [1, 1.0, -0.1, False, "0.5"])
def test_dropout_must_be_a_number_in_0_1(value):
    with pytest.raises(AttentionError) as err:
        make_options("softmax", dropout=value)
    assert str(err.value) == f"softmax: dropout must be a number in [0, 1), got {value!r}"


def test_dropout_bounds_that_build():
    assert make_options("softmax", dropout=0).dropout == 0
    assert make_options("longformer", dropout=0.99).dropout == 0.99


def test_input_checks_name_the_module_and_the_shapes(probe):
    attn = build_attention("probe", num_heads=2, head_dim=3, max_seq_len=16)
    q, k, v = qkv()
    mask = torch.ones(1, 4, dtype=torch.bool)
    bad = torch.zeros(1, 2, 5, 3)
    shapes = "q{}, k{}, v{}"
    for args in ((q, bad, v), (q, k, bad), (q[0], k[0], v[0])):
        with pytest.raises(AttentionError) as err:
            attn(*args, mask)
        got = shapes.format(*(tuple(x.shape) for x in args))
        assert str(err.value) == ("probe: q, k, v must share the shape (batch, heads, seq, "
                                  f"head_dim); got {got}")
    for heads, dim in ((3, 3), (2, 4)):
        x = torch.zeros(1, heads, 4, dim)
        with pytest.raises(AttentionError) as err:
            attn(x, x, x, mask)
        expected = f"probe: built for 2 heads x 3 dims, got {heads} heads x {dim} dims"
        assert str(err.value) == expected


def test_length_limits(probe):
    """max_supported_len (8 for the probe) is allowed and one more is not; then max_seq_len."""
    attn = build_attention("probe", num_heads=2, head_dim=3, max_seq_len=16)
    q, k, v = qkv(seq=8)
    attn(q, k, v, torch.ones(1, 8, dtype=torch.bool))
    q, k, v = qkv(seq=9)
    with pytest.raises(AttentionError) as err:
        attn(q, k, v, torch.ones(1, 9, dtype=torch.bool))
    assert str(err.value) == "probe: takes at most 8 tokens, got 9"
    small = build_attention("probe", num_heads=2, head_dim=3, max_seq_len=4)
    q, k, v = qkv(seq=5)
    with pytest.raises(AttentionError) as err:
        small(q, k, v, torch.ones(1, 5, dtype=torch.bool))
    assert str(err.value) == ("probe: input length 5 exceeds max_seq_len=4 it was built for; "
                              "raise task.max_len (or the attention's max_seq_len)")


@pytest.mark.parametrize("dtype, math", [(torch.bfloat16, torch.float32),
                                         (torch.float16, torch.float32),
                                         (torch.float64, torch.float64)])
def test_full_precision_runs_the_math_in_at_least_fp32(probe, dtype, math):
    """q, k and v all reach _attend in the math dtype with autocast off, under autocast too, and
    the output comes back in the input dtype."""
    attn = build_attention("probe", num_heads=2, head_dim=3, max_seq_len=16)
    q, k, v = qkv(dtype=dtype)
    mask = suffix_mask([3], 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v, mask)
    assert attn.seen == (math, math, math, False)
    assert out.dtype == dtype
    torch.testing.assert_close(out, v * mask[:, None, :, None], rtol=0, atol=0)


def test_repr_lists_sizes_and_options(probe):
    attn = build_attention("probe", num_heads=2, head_dim=3, max_seq_len=16, alphas=5)
    assert re.search(r"Probe\(heads=2, head_dim=3, alphas=5, alpha_x=2, alpha_xy=3\)", repr(attn))
    registry.register_attention("bare", NoOptions)(type("Bare", (Probe,), {}))
    bare = build_attention("bare", num_heads=1, head_dim=3, max_seq_len=16)
    assert repr(bare).endswith("(heads=1, head_dim=3)")


def test_choice_formats_as_its_value():
    assert f"{Hash.hadamard}" == "hadamard"
    assert f"{Hash.gaussian:>10}|" == "  gaussian|"
    assert str(Hash.hadamard) == "hadamard"
