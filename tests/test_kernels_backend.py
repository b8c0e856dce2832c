"""kernels.backend (one registry and resolver for every kernel family) and kernels.block_sparse's
layout helpers, each against rules written out here: registration, preference order, device
filters, loading once, one warning per skipped backend, every message; the CSR order of
`csr_from_pairs` and the empty-slot rule of `scatter_blocks`."""

from __future__ import annotations

import logging

import pytest
import torch

from kernels import backend as kb
from kernels.block_sparse.layout import csr_from_pairs, from_blocks, scatter_blocks, to_blocks


@pytest.fixture
def registry(monkeypatch, kernel_caches):
    """An empty registry and empty caches, so that these tests see only what they register."""
    monkeypatch.setattr(kb, "_FAMILIES", {})
    return kb


class Loader:
    """A backend's load(): counts its calls; raises `error` if given."""

    def __init__(self, module: str, error: str | None = None):
        self.module, self.error, self.calls = module, error, 0

    def __call__(self):
        self.calls += 1
        if self.error:
            raise kb.BackendError(self.error)
        return self.module


def test_register_keeps_name_devices_and_loader_in_order(registry):
    cpp, ref = Loader("cpp module"), Loader("reference module")
    registry.register("fam", "cpp", ["cpu"], cpp)  # a list of devices is kept as a tuple
    registry.register("fam", "reference", ("cpu", "cuda"), ref)
    assert registry._FAMILIES == {"fam": [kb.Implementation("cpp", ("cpu",), cpp),
                                          kb.Implementation("reference", ("cpu", "cuda"), ref)]}
    registry.register("other", "flex", ("cuda",), Loader("flex"))
    assert list(registry._FAMILIES) == ["fam", "other"]


@pytest.mark.parametrize("name", ["auto", "fast", "CPP"])
def test_register_refuses_a_name_outside_the_backends_and_auto(registry, name):
    with pytest.raises(ValueError) as err:
        registry.register("fam", name, ("cpu",), Loader("x"))
    assert str(err.value) == ("backend name must be one of ('reference', 'cpp', 'flex', "
                              f"'triton'), got {name!r}")
    assert registry._FAMILIES.get("fam", []) == []


def test_register_refuses_a_second_registration(registry):
    registry.register("fam", "cpp", ("cpu",), Loader("a"))
    registry.register("fam", "reference", ("cpu",), Loader("b"))
    with pytest.raises(ValueError) as err:
        registry.register("fam", "cpp", ("cpu",), Loader("c"))
    assert str(err.value) == "kernels: backend 'cpp' of 'fam' is registered twice"


def test_auto_takes_the_first_that_runs_on_the_device_and_loads_it_once(registry):
    gpu, cpp, ref = Loader("triton"), Loader("cpp"), Loader("reference")
    registry.register("fam", "triton", ("cuda",), gpu)
    registry.register("fam", "cpp", ("cpu",), cpp)
    registry.register("fam", "reference", ("cpu", "cuda"), ref)
    for _ in range(3):
        assert registry.resolve("fam", "auto", "cpu") == ("cpp", "cpp")
        assert registry.resolve("fam", "auto", torch.device("cuda")) == ("triton", "triton")
    assert registry.resolve("fam", "reference", "cpu") == ("reference", "reference")
    assert (gpu.calls, cpp.calls, ref.calls) == (1, 1, 1)
    # Another family's backend of the same name is its own module.
    registry.register("fam2", "cpp", ("cpu",), Loader("cpp of fam2"))
    assert registry.resolve("fam2", "auto", "cpu") == ("cpp", "cpp of fam2")
    assert registry.registered_backends("fam", "cpu") == ["cpp", "reference"]
    assert registry.registered_backends("fam", "cuda") == ["triton", "reference"]


def test_a_backend_that_fails_is_tried_once_skipped_with_one_warning_and_raised_by_name(
        registry, caplog):
    broken, ref = Loader("cpp", "ninja not found: pip install ninja"), Loader("reference")
    registry.register("fam", "cpp", ("cpu",), broken)
    registry.register("fam", "reference", ("cpu",), ref)
    with caplog.at_level(logging.WARNING, logger="kernels"):
        for _ in range(3):
            assert registry.resolve("fam", "auto", "cpu") == ("reference", "reference")
    assert [r.getMessage() for r in caplog.records] == [
        "kernels: fam backend 'cpp' unavailable on cpu, falling back: ninja not found: pip "
        "install ninja"]
    for _ in range(2):
        with pytest.raises(kb.BackendError) as err:
            registry.resolve("fam", "cpp", "cpu")
        assert str(err.value) == "ninja not found: pip install ninja"
    assert broken.calls == 1  # remembered, not rebuilt on every call
    # A failing backend before a working one: the working one is still listed.
    assert registry.available_backends("fam", "cpu") == ["reference"]
    assert (broken.calls, ref.calls) == (1, 1)
    assert registry.registered_backends("fam", "cpu") == ["cpp", "reference"]


def test_each_family_and_device_warns_once(registry, caplog):
    for family in ("a", "b"):
        registry.register(family, "cpp", ("cpu", "cuda"), Loader("cpp", "no compiler"))
        registry.register(family, "reference", ("cpu", "cuda"), Loader("reference"))
    with caplog.at_level(logging.WARNING, logger="kernels"):
        for _ in range(2):
            for family in ("a", "b"):
                for device in ("cpu", "cuda"):
                    registry.resolve(family, "auto", device)
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"kernels: {family} backend 'cpp' unavailable on {device}, falling back: no compiler"
        for family in ("a", "b") for device in ("cpu", "cuda")]


def test_every_refusal_says_what_to_do(registry):
    registry.register("fam", "cpp", ("cpu",), Loader("cpp", "no compiler"))
    registry.register("fam", "flex", ("cuda",), Loader("flex"))
    with pytest.raises(kb.BackendError) as err:
        registry.resolve("fam", "triton", "cpu")
    assert str(err.value) == "kernels: fam has no backend 'triton'; choose one of auto, cpp, flex"
    with pytest.raises(kb.BackendError) as err:
        registry.resolve("fam", "flex", "cpu")
    assert str(err.value) == "kernels: fam backend 'flex' runs on cuda, not cpu; use backend=auto"
    registry.register("two", "reference", ("cpu", "mps"), Loader("reference"))
    with pytest.raises(kb.BackendError) as err:
        registry.resolve("two", "reference", "cuda")
    assert str(err.value) == ("kernels: two backend 'reference' runs on cpu/mps, not cuda; use "
                              "backend=auto")
    with pytest.raises(kb.BackendError) as err:
        registry.resolve("fam", "auto", "cpu")  # its only CPU backend cannot load
    assert str(err.value) == "kernels: no backend of fam runs on cpu"
    with pytest.raises(ValueError) as err:
        registry.resolve("nope", "auto", "cpu")
    assert str(err.value) == "kernels: unknown family 'nope'; known: ['fam', 'two']"


def test_csr_lists_the_kept_pairs_by_row_block_then_column_block():
    """nb = 3; pairs given in a scrambled order, two of them not kept: the kept ones come first,
    sorted by (row, col), and the offsets count them per row block."""
    rows = torch.tensor([2, 0, 1, 0, 2, 1, 0])
    cols = torch.tensor([0, 2, 1, 0, 2, 0, 1])
    kept = torch.tensor([True, True, True, True, True, False, False])
    row_offsets, col_index = csr_from_pairs(rows, cols, kept, 3)
    assert row_offsets.tolist() == [0, 2, 3, 5]
    assert col_index[:5].tolist() == [0, 2, 1, 0, 2]  # row 0: 0, 2; row 1: 1; row 2: 0, 2
    assert sorted(col_index[5:].tolist()) == [0, 1]  # the unkept pairs' slots, after the rest
    # Leading dims, and a `kept` broadcast over them.
    lead_offsets, lead_index = csr_from_pairs(rows.expand(2, 3, 7), cols.expand(2, 3, 7),
                                              kept, 3)
    assert torch.equal(lead_offsets, row_offsets.expand(2, 3, 4))
    assert torch.equal(lead_index[..., :5], col_index[:5].expand(2, 3, 5))


def test_scatter_amax_keeps_negative_values_and_fills_only_empty_slots():
    """Slot j holds the max of the values sent to it, whatever `fill` is, and `fill` (default 0)
    where none is sent."""
    values = torch.tensor([[-5.0, -1.0, -3.0]])  # (lead 1, K 3)
    index = torch.tensor([[0, 2, 0]])
    assert scatter_blocks(values, index, 4, reduce="amax").tolist() == [[-3.0, 0.0, -1.0, 0.0]]
    got = scatter_blocks(values, index, 4, reduce="amax", fill=float("-inf"))
    assert got.tolist() == [[-3.0, float("-inf"), -1.0, float("-inf")]]
    assert scatter_blocks(values, index, 4).tolist() == [[-8.0, 0.0, -1.0, 0.0]]
    with pytest.raises(ValueError) as err:
        scatter_blocks(values, index, 4, reduce="mean")
    assert str(err.value) == "reduce must be 'sum' or 'amax', got 'mean'"


def test_blocks_round_trip_and_a_length_off_the_block_is_named():
    x = torch.arange(2 * 3 * 8 * 5.0).reshape(2, 3, 8, 5)
    blocks = to_blocks(x, 4)
    assert blocks.shape == (2, 3, 2, 4, 5) and torch.equal(blocks[:, :, 1, 0], x[:, :, 4])
    assert torch.equal(from_blocks(blocks), x)
    with pytest.raises(ValueError) as err:
        to_blocks(x, 3)
    assert str(err.value) == "length 8 is not a multiple of the block size 3"
