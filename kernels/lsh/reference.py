"""YOSO's hashing and bucket cumulation in plain PyTorch: the oracle (fp64-capable).

Shapes: codes (rounds, batch, heads, n) int64; vectors (batch, heads, n, dim); bits (batch,) int64,
each example's number of hash bits tau. What the backward estimators compute is written in the
package docstring (kernels/lsh/__init__.py).
"""

from __future__ import annotations

import functools
import math

import torch

# Most table entries one chunk of a weighted cumulation may allocate (fp32: 256 MiB).
TABLE_BUDGET = 2**26

# The published estimator's similarity scale and its clip on 1 / sqrt(1 - x^2) (YOSO v2 kernel).
V2_SCALE = 0.99
V2_INV_SQRT_CLIP = 10.0
# The published v2 kernel's workspace: at most this many keys per query (slot = key mod 1024).
V2_SLOTS = 1024

# mix32's constants (odd, below 2^31) and its 32-bit mask.
MIX_A, MIX_B, MASK32 = 0x7FEB352D, 0x2C1B3C6D, 0xFFFFFFFF


def simhash_codes(x: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """SimHash codes: x (batch, heads, seq, d), planes (heads, rounds, d, tau) -> (rounds, batch,
    heads, seq) int64 in [0, 2^tau): bit t is 1 when x lies on the positive side of plane t."""
    tau = planes.shape[-1]
    powers = 2 ** torch.arange(tau, device=x.device)
    return torch.stack([
        ((x @ planes[:, r]) > 0).long() @ powers for r in range(planes.shape[1])
    ])


def bucket_cumulation(
    codes_out: torch.Tensor, codes_in: torch.Tensor, values: torch.Tensor, num_buckets: int
) -> torch.Tensor:
    """One round: out[..., i, :] = sum_j [codes_out[..., i] == codes_in[..., j]] values[..., j, :].

    codes_out: (batch, heads, n_out), codes_in: (batch, heads, n_in) in [0, num_buckets);
    values: (batch, heads, n_in, e) -> (batch, heads, n_out, e). One scatter-add into a
    (batch * heads * num_buckets, e) table, one gather.
    """
    batch, heads, n_in, e = values.shape
    offset = torch.arange(batch * heads, device=values.device).view(batch, heads, 1) * num_buckets
    table = values.new_zeros(batch * heads * num_buckets, e)
    table.index_add_(0, (codes_in + offset).flatten(), values.reshape(-1, e))
    return table[(codes_out + offset).flatten()].view(batch, heads, -1, e)


def cumulation(
    codes_out: torch.Tensor, codes_in: torch.Tensor, values: torch.Tensor, num_buckets: int
) -> torch.Tensor:
    """mean_r sum_j S^r_ij values_j, S^r_ij = [codes_out[r, ..., i] == codes_in[r, ..., j]]:
    the forward (out = cumulation(q_codes, k_codes, v)) and dv (cumulation(k_codes, q_codes, g))."""
    rounds = codes_out.shape[0]
    return sum(bucket_cumulation(codes_out[r], codes_in[r], values, num_buckets)
               for r in range(rounds)) / rounds


def _weighted_bucket_cumulation(
    codes_out: torch.Tensor, x_out: torch.Tensor, codes_in: torch.Tensor, y_in: torch.Tensor,
    z_in: torch.Tensor, num_buckets: int,
) -> torch.Tensor:
    """One round: out_a = sum_b [code_a == code_b] (x_a . y_b) z_b, with x, y: (batch, heads, n, e)
    and z: (batch, heads, n_in, d): buckets hold sum_b y_b[w] z_b per channel w, chunked over w."""
    batch, heads, n_in, e = y_in.shape
    dim = z_in.shape[-1]
    rows = batch * heads * max(num_buckets, n_in, x_out.shape[2])
    chunk = max(1, min(e, TABLE_BUDGET // (rows * dim)))
    out = z_in.new_zeros(batch, heads, x_out.shape[2], dim)
    for w in range(0, e, chunk):
        outer = (y_in[..., w:w + chunk, None] * z_in[..., None, :]).flatten(-2)
        summed = bucket_cumulation(codes_out, codes_in, outer, num_buckets).unflatten(-1, (-1, dim))
        out = out + (x_out[..., w:w + chunk, None] * summed).sum(dim=-2)
    return out


def v2_weight(sim: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The published per-pair weight dB/dx of B(x) = (1 - arccos(x) / pi)^tau, at x = 0.99 sim,
    with 1 / sqrt(1 - x^2) clipped at 10; tau broadcasts against sim."""
    x = V2_SCALE * sim
    inv_sqrt = torch.rsqrt(1 - x * x).clamp_max(V2_INV_SQRT_CLIP)
    return tau * (1 - torch.arccos(x) / math.pi) ** (tau - 1) * inv_sqrt / math.pi


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xor-shift-multiply) on int64 tensors holding values in [0, 2^32);
    the constants are below 2^31, so no product leaves int64. lsh.cpp has the same function."""
    x = ((x ^ (x >> 16)) * MIX_A) & MASK32
    x = ((x ^ (x >> 15)) * MIX_B) & MASK32
    return x ^ (x >> 16)


def slot_survivors(collide: torch.Tensor, rows: torch.Tensor, slots: int, seed: int
                   ) -> torch.Tensor:
    """The published v2 workspace: per output row a, input b goes to slot b mod `slots` and one
    collision event (b, round) per slot survives, drawn uniformly over the slot's events.

    collide: (rounds, batch, heads, rows, n_in) bool, S^r_ab; rows: (rows,) the a indices ->
    (batch, heads, rows, n_in) bool, the surviving pairs. Event (a, b, r) of head h draws the key
    mix32(mix32(mix32(mix32(seed ^ h) ^ a) ^ b) ^ r); the slot keeps the event with the smallest
    (key, b), so b survives with probability (its events) / (the slot's events)."""
    _, batch, heads, n_rows, n_in = collide.shape
    # Keys only for the collision events: the full (rounds, ..., n_in) grid of int64 keys would
    # be a dozen passes over 8 bytes per element, most of them for pairs that never collide.
    r, x, h, a, b = collide.nonzero(as_tuple=True)  # round, example, head, row, input
    key = mix32(mix32(mix32(mix32((seed & MASK32) ^ h) ^ rows[a]) ^ b) ^ r)
    never = torch.iinfo(torch.int64).max
    # a pair's events share b, so the smallest (key * 2^31 + b) is its smallest key's
    pair = ((x * heads + h) * n_rows + a) * n_in + b
    full = torch.full((batch * heads * n_rows * n_in,), never, device=collide.device)
    full = full.scatter_reduce_(0, pair, key * 2**31 + b, "amin").view(batch, heads, n_rows, n_in)
    union = full != never
    # (batch, heads, rows, n_in / slots rounded up, slots): b sits at [b // slots, b % slots]
    grid = torch.cat([full, full.new_full((*full.shape[:-1], -n_in % slots), never)], dim=-1)
    grid = grid.unflatten(-1, (-1, slots))
    # the slot's smallest over the few b sharing it (an elementwise minimum: torch's int64 amin
    # over this strided axis is ~20x slower)
    least = functools.reduce(torch.minimum, grid.unbind(dim=-2))
    return union & (grid == least[..., None, :]).flatten(-2)[..., :n_in]


def _union_weighted_cumulation(
    codes_out: torch.Tensor, sim_out: torch.Tensor, x_out: torch.Tensor, codes_in: torch.Tensor,
    y_in: torch.Tensor, z_in: torch.Tensor, bits: torch.Tensor, slots: int, seed: int,
) -> torch.Tensor:
    """out_a = sum_{b in U_a} w(sim_a . z_b) (x_a . y_b) z_b, U_a = the b colliding with a in at
    least one round (cut to the slot survivors when slots > 0 and n_in > slots), dense over
    (chunk of a, all b)."""
    batch, heads, n_out, _ = x_out.shape
    n_in = z_in.shape[2]
    tau = bits.to(z_in.dtype)[:, None, None, None]  # (batch, 1, 1, 1)
    chunk = max(1, TABLE_BUDGET // (batch * heads * n_in * codes_out.shape[0]))
    out = z_in.new_empty(batch, heads, n_out, z_in.shape[-1])
    for a in range(0, n_out, chunk):
        rows = slice(a, a + chunk)
        # collide: (rounds, batch, heads, chunk, n_in); union: (batch, heads, chunk, n_in)
        collide = codes_out[..., rows, None] == codes_in[..., None, :]
        if 0 < slots < n_in:
            row_index = torch.arange(n_out, device=z_in.device)[rows]
            union = slot_survivors(collide, row_index, slots, seed)
        else:
            union = collide.any(dim=0)
        weight = v2_weight(sim_out[..., rows, :] @ z_in.transpose(-1, -2), tau)
        pair = weight * (x_out[..., rows, :] @ y_in.transpose(-1, -2))
        out[..., rows, :] = torch.where(union, pair, 0) @ z_in
    return out


def weighted_cumulation(
    codes_out: torch.Tensor, sim_out: torch.Tensor, x_out: torch.Tensor, codes_in: torch.Tensor,
    y_in: torch.Tensor, z_in: torch.Tensor, bits: torch.Tensor, num_buckets: int, estimator: str,
    slots: int = 0, seed: int = 0,
) -> torch.Tensor:
    """The q/k gradient estimator: dq = weighted_cumulation(q_codes, q, g, k_codes, v, k, ...) and
    dk = weighted_cumulation(k_codes, k, v, q_codes, g, q, ...).

    "v1": (tau / 2) mean_r sum_b S^r_ab (x_a . y_b) z_b (sim_out, slots and seed unused);
    "v2": sum_{b in U_a} w(sim_a . z_b) (x_a . y_b) z_b, U_a the union of collisions over rounds,
    cut to one survivor per slot (slot_survivors) when 0 < slots < n_in.
    """
    if estimator == "v2":
        return _union_weighted_cumulation(codes_out, sim_out, x_out, codes_in, y_in, z_in, bits,
                                          slots, seed)
    if estimator != "v1":
        raise ValueError(f"kernels.lsh: estimator must be 'v1' or 'v2', got {estimator!r}")
    rounds = codes_out.shape[0]
    half_tau = (bits.to(z_in.dtype) / 2 / rounds)[:, None, None, None]  # (batch, 1, 1, 1)
    return half_tau * sum(
        _weighted_bucket_cumulation(codes_out[r], x_out, codes_in[r], y_in, z_in, num_buckets)
        for r in range(rounds))


def lsh_gradients(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_codes: torch.Tensor,
    k_codes: torch.Tensor, bits: torch.Tensor, num_buckets: int, estimator: str, slots: int,
    seed: int, needs: tuple[bool, bool, bool], *, cumulate=cumulation,
    weighted=weighted_cumulation,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dq, dk, dv) of lsh_cumulation for the output gradient grad, each only where `needs` says:
    dv is exact, dq and dk the estimator's. Every backend runs this with its own `cumulate` and
    `weighted` (the functions of this module's names), so the roles are written once."""
    grad_q = grad_k = grad_v = None
    if needs[0]:
        grad_q = weighted(q_codes, q, grad, k_codes, v, k, bits, num_buckets, estimator, slots,
                          seed)
    if needs[1]:
        grad_k = weighted(k_codes, k, v, q_codes, grad, q, bits, num_buckets, estimator, slots,
                          seed)
    if needs[2]:
        grad_v = cumulate(k_codes, q_codes, grad, num_buckets)
    return grad_q, grad_k, grad_v


def save_for_gradients(ctx, inputs, output) -> None:
    """setup_context of a backend's lsh_cumulation op (torch.library.register_autograd), whose
    inputs are (q, k, v, q_codes, k_codes, bits, estimator, slots, seed)."""
    q, k, v, q_codes, k_codes, bits, estimator, slots, seed = inputs
    ctx.save_for_backward(q, k, v, q_codes, k_codes, bits)
    ctx.estimator, ctx.slots, ctx.seed = estimator, slots, seed


def gradients(ctx, grad: torch.Tensor, *, cumulate, weighted) -> tuple:
    """That op's backward: lsh_gradients on the backend's own cumulations (num_buckets 0: the
    compiled backends keep no bucket table); no gradient for the codes and settings."""
    grads = lsh_gradients(grad, *ctx.saved_tensors, 0, ctx.estimator, ctx.slots, ctx.seed,
                          ctx.needs_input_grad[:3], cumulate=cumulate, weighted=weighted)
    return *grads, *[None] * 6


class LSHCumulation(torch.autograd.Function):
    """Forward cumulation(q_codes, k_codes, v); backward lsh_gradients."""

    @staticmethod
    def forward(ctx, q, k, v, q_codes, k_codes, bits, num_buckets, estimator, slots, seed):
        ctx.save_for_backward(q, k, v, q_codes, k_codes, bits)
        ctx.num_buckets, ctx.estimator, ctx.slots, ctx.seed = num_buckets, estimator, slots, seed
        return cumulation(q_codes, k_codes, v, num_buckets)

    @staticmethod
    def backward(ctx, grad):
        grads = lsh_gradients(grad, *ctx.saved_tensors, ctx.num_buckets, ctx.estimator,
                              ctx.slots, ctx.seed, ctx.needs_input_grad[:3])
        return *grads, *[None] * 7


def lsh_cumulation(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_codes: torch.Tensor,
    k_codes: torch.Tensor, bits: torch.Tensor, num_buckets: int, estimator: str = "v2",
    slots: int = 0, seed: int = 0,
) -> torch.Tensor:
    """mean_r sum_j S^r_ij v_j: (batch, heads, n_q, d), differentiable in q, k (estimator) and v.

    q, k: (batch, heads, n, d) unit rows; v: (batch, heads, n_k, d); q_codes, k_codes: (rounds,
    batch, heads, n) in [0, num_buckets); bits: (batch,) each example's tau; slots, seed: v2's
    workspace (0: the complete union) and the seed of its survivor draw.
    """
    return LSHCumulation.apply(q, k, v, q_codes, k_codes, bits, num_buckets, estimator, slots,
                               seed)
