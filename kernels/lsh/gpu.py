"""The GPU backend of the lsh family, in Triton (ops lra_lsh_triton::*).

Same functions as reference.py. Each program takes BLOCK_M output rows of one (batch, head) and
walks the inputs in tiles of BLOCK_N, flash-attention style: the tile's collision counts
S_ab = sum_r [codes_out[r, a] == codes_in[r, b]] are compared in registers (no (n, 2^tau)
table, no n x n matrix in memory), and the pair weights go through `tl.dot` with the input rows.
Work is O(n_out n_in rounds) comparisons and O(n_out n_in d) multiply-adds: on a GPU the dense
tile beats gathering the colliding pairs one by one.

v2's capped support (slots < n_in, reference.slot_survivors) is found without a workspace: the
inputs are visited by slot tile s and wrap w (input b = w * slots + s), so a slot's events are
all in one program; a first pass over the wraps takes each slot's smallest event key (the same
mix32 keys as the other backends), a second keeps the pairs that hold it.

Arithmetic is fp32 whatever the input dtype (outputs are cast back): `tl.dot` runs with
input_precision="ieee", not TF32, and arccos is the polynomial of lsh.cpp's fp32 path
(Abramowitz and Stegun 4.4.46, absolute error <= 2e-8). fp64 inputs therefore get fp32 accuracy;
use the reference backend for fp64 on CUDA.

CI runs these kernels on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set before
this module is imported); no GPU has run them yet.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .reference import (
    MASK32,
    MIX_A,
    MIX_B,
    V2_INV_SQRT_CLIP,
    V2_SCALE,
    gradients,
    save_for_gradients,
    simhash_codes,
)

__all__ = ["cumulation", "lsh_cumulation", "simhash_codes", "weighted_cumulation"]

BLOCK_M, BLOCK_N = 32, 32
# constants the kernels read (a @triton.jit function sees module globals only as constexprs)
_MIX_A, _MIX_B, _MASK32 = tl.constexpr(MIX_A), tl.constexpr(MIX_B), tl.constexpr(MASK32)
_SCALE, _CLIP, _PI = tl.constexpr(V2_SCALE), tl.constexpr(V2_INV_SQRT_CLIP), tl.constexpr(math.pi)
_NEVER = tl.constexpr(2**63 - 1)  # above every draw key


@triton.jit
def _mix32(x):
    x = ((x ^ (x >> 16)) * _MIX_A) & _MASK32
    x = ((x ^ (x >> 15)) * _MIX_B) & _MASK32
    return x ^ (x >> 16)


@triton.jit
def _arccos(x):
    a = tl.abs(x)
    p = -0.0012624911
    p = p * a + 0.0066700901
    p = p * a - 0.0170881256
    p = p * a + 0.0308918810
    p = p * a - 0.0501743046
    p = p * a + 0.0889789874
    p = p * a - 0.2145988016
    p = p * a + 1.5707963050
    r = tl.sqrt(1.0 - a) * p
    return tl.where(x < 0, _PI - r, r)


@triton.jit
def _v2_weight(sim, tau):
    """reference.v2_weight: tau (1 - arccos(y) / pi)^(tau - 1) min(10, 1 / sqrt(1 - y^2)) / pi at
    y = 0.99 sim; y stays within +-0.99, so the power's base is above 0.04."""
    y = _SCALE * sim
    clip = tl.minimum(1.0 / tl.sqrt(1.0 - y * y), _CLIP)
    base = 1.0 - _arccos(y) / _PI
    power = tl.where(tau == 1.0, 1.0, tl.exp((tau - 1.0) * tl.log(base)))
    return tau * power * clip / _PI


@triton.jit
def _collisions(co, ci, rows, cols, row_ok, col_ok, rounds, bh, bh_count, n_out, n_in,
                event_base, KEYS: tl.constexpr):
    """(count, least): the rounds in which row a and input b share a bucket, (BLOCK_M, BLOCK_N)
    float, and with KEYS the smallest draw key (mix32 of (event_base_ab, r)) << 31 | b over those
    rounds (2^63 - 1 where none)."""
    count = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    least = tl.full((BLOCK_M, BLOCK_N), _NEVER, tl.int64)
    for r in range(rounds):
        a_code = tl.load(co + (r * bh_count + bh) * n_out + rows, mask=row_ok, other=-1)
        b_code = tl.load(ci + (r * bh_count + bh) * n_in + cols, mask=col_ok, other=-2)
        hit = a_code[:, None] == b_code[None, :]
        count += tl.where(hit, 1.0, 0.0)
        if KEYS:
            key = (_mix32(event_base ^ r) << 31) | cols[None, :].to(tl.int64)
            least = tl.where(hit, tl.minimum(least, key), least)
    return count, least


@triton.jit
def _wrap(co, ci, per_a, rows, row_ok, slot, w, slots, rounds, bh, bh_count, n_out, n_in,
          KEYS: tl.constexpr):
    """(cols, col_ok, count, least) of the inputs b = w * slots + slot: _collisions with the
    event keys' per-pair part mix32(per_a ^ b)."""
    cols = w * slots + slot
    col_ok = (slot < slots) & (cols < n_in)
    base = _mix32(per_a[:, None] ^ cols[None, :].to(tl.int64))
    count, least = _collisions(co, ci, rows, cols, row_ok, col_ok, rounds, bh, bh_count, n_out,
                               n_in, base, KEYS)
    return cols, col_ok, count, least


@triton.jit
def _cumulation_kernel(co, ci, values, out, n_out, n_in, rounds, bh_count, e,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_out
    ch = tl.arange(0, BLOCK_E)
    acc = tl.zeros((BLOCK_M, BLOCK_E), tl.float32)
    for b0 in range(0, n_in, BLOCK_N):
        cols = b0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_in
        count, _ = _collisions(co, ci, rows, cols, row_ok, col_ok, rounds, bh, bh_count, n_out,
                               n_in, 0, False)
        val = tl.load(values + (bh * n_in + cols[:, None]) * e + ch[None, :],
                      mask=col_ok[:, None] & (ch[None, :] < e), other=0.0).to(tl.float32)
        acc += tl.dot(count, val, input_precision="ieee")
    tl.store(out + (bh * n_out + rows[:, None]) * e + ch[None, :], acc / rounds,
             mask=row_ok[:, None] & (ch[None, :] < e))


@triton.jit
def _weighted_kernel(co, so, xo, ci, yi, zi, bits, out, n_out, n_in, rounds, bh_count, heads, d,
                     e, slots, wraps, seed, V2: tl.constexpr, CAPPED: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_E: tl.constexpr):
    """out_a = sum_b c_ab (x_a . y_b) z_b with c_ab = (tau / 2 / rounds) S_ab (v1) or
    w(sim_a . z_b) [b in U_a] (v2). Inputs are visited as b = w * slots + s (uncapped: slots = n_in,
    one wrap)."""
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_out
    dd, ee = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_E)
    tau = tl.load(bits + bh // heads).to(tl.float32)
    x_a = tl.load(xo + (bh * n_out + rows[:, None]) * e + ee[None, :],
                  mask=row_ok[:, None] & (ee[None, :] < e), other=0.0).to(tl.float32)
    s_a = tl.load(so + (bh * n_out + rows[:, None]) * d + dd[None, :],
                  mask=row_ok[:, None] & (dd[None, :] < d), other=0.0).to(tl.float32)
    # per_a: mix32(mix32(seed ^ head) ^ a), the row's part of every draw key; the seed comes as a
    # one-element int64 tensor (an int argument may be specialised to int32 or a constexpr)
    head = (bh % heads).to(tl.int64)
    per_a = _mix32(_mix32(tl.load(seed) ^ head) ^ rows.to(tl.int64))
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for s0 in range(0, slots, BLOCK_N):
        slot = s0 + tl.arange(0, BLOCK_N)
        best = tl.full((BLOCK_M, BLOCK_N), _NEVER, tl.int64)
        if CAPPED:  # each slot's smallest event key over its wraps
            for w in range(wraps):
                _, _, _, least = _wrap(co, ci, per_a, rows, row_ok, slot, w, slots, rounds, bh,
                                       bh_count, n_out, n_in, True)
                best = tl.minimum(best, least)
        for w in range(wraps):
            cols, col_ok, count, least = _wrap(co, ci, per_a, rows, row_ok, slot, w, slots,
                                               rounds, bh, bh_count, n_out, n_in, CAPPED)
            z_b = tl.load(zi + (bh * n_in + cols[:, None]) * d + dd[None, :],
                          mask=col_ok[:, None] & (dd[None, :] < d), other=0.0).to(tl.float32)
            y_b = tl.load(yi + (bh * n_in + cols[:, None]) * e + ee[None, :],
                          mask=col_ok[:, None] & (ee[None, :] < e), other=0.0).to(tl.float32)
            xy = tl.dot(x_a, tl.trans(y_b), input_precision="ieee")
            if V2:
                kept = count > 0
                if CAPPED:
                    kept = kept & (least == best)
                sim = tl.dot(s_a, tl.trans(z_b), input_precision="ieee")
                coef = tl.where(kept, _v2_weight(sim, tau) * xy, 0.0)
            else:
                coef = count * xy
            acc += tl.dot(coef, z_b, input_precision="ieee")
    if not V2:
        acc = acc * (tau / 2 / rounds)
    tl.store(out + (bh * n_out + rows[:, None]) * d + dd[None, :], acc,
             mask=row_ok[:, None] & (dd[None, :] < d))


def _new_output(*sizes: int, like: torch.Tensor) -> torch.Tensor:
    """fp32 output; NaN-filled under LRA_KERNELS_POISON=1 (the tests), so an element a kernel
    leaves unwritten fails the comparison with the reference."""
    if os.environ.get("LRA_KERNELS_POISON") == "1":
        return torch.full(sizes, math.nan, device=like.device)
    return torch.empty(sizes, device=like.device, dtype=torch.float32)


def _width(n: int) -> int:
    """A power-of-two tile width of at least 16 (tl.dot's smallest) covering n channels."""
    return max(16, triton.next_power_of_2(n))


@torch.library.custom_op("lra_lsh_triton::cumulation", mutates_args=())
def _cumulation(codes_out: torch.Tensor, codes_in: torch.Tensor, values: torch.Tensor
                ) -> torch.Tensor:
    rounds, batch, heads, n_out = codes_out.shape
    n_in, e = values.shape[2], values.shape[3]
    out = _new_output(batch, heads, n_out, e, like=values)
    grid = (batch * heads, triton.cdiv(n_out, BLOCK_M))
    _cumulation_kernel[grid](codes_out.contiguous(), codes_in.contiguous(), values.contiguous(),
                             out, n_out, n_in, rounds, batch * heads, e, BLOCK_M=BLOCK_M,
                             BLOCK_N=BLOCK_N, BLOCK_E=_width(e))
    return out.to(values.dtype)


@_cumulation.register_fake
def _(codes_out, codes_in, values):
    return values.new_empty(*values.shape[:2], codes_out.shape[-1], values.shape[-1])


@torch.library.custom_op("lra_lsh_triton::weighted_cumulation", mutates_args=())
def _weighted_cumulation(codes_out: torch.Tensor, sim_out: torch.Tensor, x_out: torch.Tensor,
                         codes_in: torch.Tensor, y_in: torch.Tensor, z_in: torch.Tensor,
                         bits: torch.Tensor, estimator: str, slots: int, seed: int
                         ) -> torch.Tensor:
    rounds, batch, heads, n_out = codes_out.shape
    n_in, d, e = z_in.shape[2], z_in.shape[3], x_out.shape[3]
    v2 = estimator == "v2"
    capped = v2 and 0 < slots < n_in
    span = slots if capped else n_in
    out = _new_output(batch, heads, n_out, d, like=z_in)
    grid = (batch * heads, triton.cdiv(n_out, BLOCK_M))
    tensors = [x.contiguous() for x in (codes_out, sim_out, x_out, codes_in, y_in, z_in)]
    _weighted_kernel[grid](
        *tensors, bits.to(device=z_in.device, dtype=torch.int64).contiguous(), out, n_out, n_in,
        rounds, batch * heads, heads, d, e, span, triton.cdiv(n_in, span) if n_in else 0,
        torch.tensor([seed & MASK32], device=z_in.device), V2=v2, CAPPED=capped,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=_width(d), BLOCK_E=_width(e))
    return out.to(z_in.dtype)


@_weighted_cumulation.register_fake
def _(codes_out, sim_out, x_out, codes_in, y_in, z_in, bits, estimator, slots, seed):
    return z_in.new_empty(*z_in.shape[:2], codes_out.shape[-1], z_in.shape[-1])


def cumulation(codes_out, codes_in, values, num_buckets):
    """See reference.cumulation (num_buckets unused: no bucket table)."""
    return _cumulation(codes_out, codes_in, values)


def weighted_cumulation(codes_out, sim_out, x_out, codes_in, y_in, z_in, bits, num_buckets,
                        estimator, slots=0, seed=0):
    """See reference.weighted_cumulation."""
    if estimator not in ("v1", "v2"):
        raise ValueError(f"kernels.lsh: estimator must be 'v1' or 'v2', got {estimator!r}")
    return _weighted_cumulation(codes_out, sim_out, x_out, codes_in, y_in, z_in, bits, estimator,
                                slots, seed)


@torch.library.custom_op("lra_lsh_triton::lsh_cumulation", mutates_args=())
def _lsh_cumulation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_codes: torch.Tensor,
                    k_codes: torch.Tensor, bits: torch.Tensor, estimator: str, slots: int,
                    seed: int) -> torch.Tensor:
    return _cumulation(q_codes, k_codes, v)


@_lsh_cumulation.register_fake
def _(q, k, v, q_codes, k_codes, bits, estimator, slots, seed):
    return v.new_empty(*v.shape[:2], q_codes.shape[-1], v.shape[-1])


def _backward(ctx, grad):
    return gradients(ctx, grad, cumulate=cumulation, weighted=weighted_cumulation)


_lsh_cumulation.register_autograd(_backward, setup_context=save_for_gradients)


def lsh_cumulation(q, k, v, q_codes, k_codes, bits, num_buckets, estimator="v2", slots=0, seed=0):
    """See reference.lsh_cumulation."""
    return _lsh_cumulation(q, k, v, q_codes, k_codes, bits, estimator, slots, seed)
