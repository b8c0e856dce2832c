"""The C++/OpenMP backend of the lsh family: lsh.cpp built just in time (ops lra_lsh::*).

Same functions as reference.py. `num_buckets` is accepted for the common signature and unused:
the C++ kernels sort rows by code instead of indexing a 2^tau table. Hashing is one matmul per
round, already BLAS, so `simhash_codes` is the reference's. The differentiable op
lra_lsh::lsh_cumulation gets a fake kernel (torch.compile traces it) and its backward through
torch.library; the backward is reference.gradients (lsh_gradients) run on the C++ ops.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..build import load_library
from .reference import gradients, save_for_gradients, simhash_codes

__all__ = ["cumulation", "load", "lsh_cumulation", "simhash_codes", "weighted_cumulation"]

SOURCES = [Path(__file__).with_name("lsh.cpp")]
_REGISTERED = False


def cumulation(codes_out, codes_in, values, num_buckets):
    """See reference.cumulation."""
    return torch.ops.lra_lsh.cumulation(codes_out, codes_in, values)


def weighted_cumulation(codes_out, sim_out, x_out, codes_in, y_in, z_in, bits, num_buckets,
                        estimator, slots=0, seed=0):
    """See reference.weighted_cumulation."""
    return torch.ops.lra_lsh.weighted_cumulation(codes_out, sim_out, x_out, codes_in, y_in, z_in,
                                                 bits, estimator, slots, seed)


def lsh_cumulation(q, k, v, q_codes, k_codes, bits, num_buckets, estimator="v2", slots=0, seed=0):
    """See reference.lsh_cumulation."""
    return torch.ops.lra_lsh.lsh_cumulation(q, k, v, q_codes, k_codes, bits, estimator, slots,
                                            seed)


def _backward(ctx, grad):
    return gradients(ctx, grad, cumulate=cumulation, weighted=weighted_cumulation)


def _register() -> None:
    """Fake kernels for every op and the autograd formula of lsh_cumulation, once."""
    global _REGISTERED
    if _REGISTERED:
        return

    @torch.library.register_fake("lra_lsh::cumulation")
    def _(codes_out, codes_in, values):
        return values.new_empty(*values.shape[:2], codes_out.shape[-1], values.shape[-1])

    @torch.library.register_fake("lra_lsh::weighted_cumulation")
    def _(codes_out, sim_out, x_out, codes_in, y_in, z_in, bits, estimator, slots, seed):
        return z_in.new_empty(*z_in.shape[:2], codes_out.shape[-1], z_in.shape[-1])

    @torch.library.register_fake("lra_lsh::lsh_cumulation")
    def _(q, k, v, q_codes, k_codes, bits, estimator, slots, seed):
        return v.new_empty(*v.shape[:2], q_codes.shape[-1], v.shape[-1])

    torch.library.register_autograd("lra_lsh::lsh_cumulation", _backward,
                                    setup_context=save_for_gradients)
    _REGISTERED = True


def load():
    """Build (or reuse) the library and register its Python side; the backend's module."""
    load_library("lra_lsh", SOURCES)
    _register()
    return sys.modules[__name__]
