"""kernels.lsh's Triton backend (kernels/lsh/gpu.py) equals the reference for the same hash draws,
run on the CPU through Triton's interpreter at small sizes. No GPU runs here: what this checks is
the kernels' arithmetic, masks and survivor rule, not their speed or their CUDA compilation.

TRITON_INTERPRET must be set before gpu.py defines its kernels, so it is set when this file is
collected (it matters to nothing but Triton)."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from test_kernels_lsh import ESTIMATORS, make_case, relative_error, run

from kernels.backend import BackendError, resolve
from kernels.lsh import reference

os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is part of the dev extra; install '.[dev]'")


@pytest.fixture(scope="module")
def gpu():
    return importlib.import_module("kernels.lsh.gpu")


# Lengths not multiples of the 32-row tiles, head_dim 20 (padded to 32 lanes), tau 1..6; slots 5
# cuts every case but the first to the published workspace rule.
SHAPES = [(1, 16, 1, 1), (7, 16, 3, 2), (45, 20, 5, 3), (70, 32, 6, 4)]


@pytest.mark.parametrize("estimator, slots", ESTIMATORS)
@pytest.mark.parametrize("n, d, tau, rounds", SHAPES)
def test_triton_equals_reference(gpu, monkeypatch, n, d, tau, rounds, estimator, slots):
    """Forward and all three gradients in fp32, with random padding; outputs start as NaN
    (LRA_KERNELS_POISON), so an element a kernel leaves unwritten fails."""
    monkeypatch.setenv("LRA_KERNELS_POISON", "1")
    case = make_case(1000 * n + d, n, d, tau, rounds, torch.float32)
    for name, ours, oracle in zip(("out", "dq", "dk", "dv"), run(gpu, case, estimator, slots, n),
                                  run(reference, case, estimator, slots, n), strict=True):
        err = relative_error(ours, oracle)
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


def test_triton_keeps_the_input_dtype_and_computes_in_fp32(gpu):
    """bf16 inputs come back bf16, within bf16 rounding of the fp32 reference."""
    case = make_case(9, 40, 16, 4, 3, torch.float32)
    low = [x.bfloat16() for x in (case.q, case.k, case.v)]
    out = gpu.lsh_cumulation(*low, case.q_codes, case.k_codes, case.bits, case.num_buckets)
    want = reference.lsh_cumulation(*(x.float() for x in low), case.q_codes, case.k_codes,
                                    case.bits, case.num_buckets)
    assert out.dtype == torch.bfloat16
    assert relative_error(out.float(), want) < 1e-2


def test_triton_ops_pass_opcheck(gpu):
    """Schemas, fake kernels (torch.compile) and the autograd registration hold up."""
    case = make_case(5, 13, 16, 2, 2, torch.float32)
    ops = torch.ops.lra_lsh_triton
    codes = case.q_codes, case.k_codes
    q, k, v = (x.clone().requires_grad_(True) for x in (case.q, case.k, case.v))
    torch.library.opcheck(ops.cumulation.default, (*codes, case.v))
    torch.library.opcheck(ops.weighted_cumulation.default,
                          (codes[0], case.q, case.g, codes[1], case.v, case.k, case.bits, "v2",
                           4, 7))
    torch.library.opcheck(ops.lsh_cumulation.default,
                          (q, k, v, *codes, case.bits, "v2", 4, 7))


def test_triton_backend_is_for_cuda():
    """Asked for by name on the CPU it raises, naming the device it runs on."""
    with pytest.raises(BackendError, match="runs on cuda, not cpu"):
        resolve("lsh", "triton", "cpu")
