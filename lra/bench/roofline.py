"""Roofline of the fused block-sparse kernel: its GFLOP/s beside a dense matmul's, one process."""

from __future__ import annotations

import torch

import kernels

from .measure import timer

BLOCK_PER_ROW = 8  # the roofline's budget: MRA's LRA setting
COLUMNS = ["kernel", "backend", "seq_len", "pass", "ms", "gflops", "fraction_of_dense", "error"]


def roofline(seq: int, device: str, heads: int, head_dim: int, repeats: int) -> list[dict]:
    """GFLOP/s of the block-sparse kernel (forward, backward) at BLOCK_PER_ROW pairs per block
    row, for every backend on the device, and of a dense fp32 matmul, in one process.

    Work per pair of b x b blocks and head_dim d: forward 2 matmuls (S = Q K^T, P V), backward
    5 (S, dP = dO V^T, dQ, dK, dV), each 2 b^2 d flops; exp and bookkeeping are not counted.
    """
    from kernels.block_sparse import csr_from_pairs

    block, d = 32, head_dim
    nb = seq // block
    pairs = min(BLOCK_PER_ROW * nb, nb * nb)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, seq, d, generator=gen).to(device) for _ in range(3))
    key_real = torch.ones(1, seq, dtype=torch.bool, device=device)
    flat = torch.stack([torch.randperm(nb * nb, generator=gen)[:pairs] for _ in range(heads)])
    flat = flat[None].to(device)
    csr = csr_from_pairs(flat // nb, flat % nb, torch.ones_like(flat, dtype=torch.bool), nb)
    grad = torch.randn(1, heads, seq, d, generator=gen).to(device)
    size = 2048
    a, b = (torch.randn(size, size, generator=gen).to(device) for _ in range(2))

    def timed(fn) -> float:
        """Best of the repeats after a warm-up, in seconds: the rate the hardware allows."""
        return min(timer(fn, max(repeats, 3), device)) / 1000

    dense = 2 * size**3 / timed(lambda: a @ b) / 1e9
    rows = [{"kernel": "torch.matmul", "backend": "-", "seq_len": seq, "pass": "dense",
             "ms": "", "gflops": dense, "fraction_of_dense": 1.0}]
    unit = 2 * block * block * d * pairs * heads
    for backend in kernels.available_backends("block_sparse", device):
        _, impl = kernels.resolve("block_sparse", backend, device)
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]

        def forward(impl=impl, leaves=leaves):
            return impl.attention(*leaves, key_real, *csr, block_size=block, scale=d ** -0.5)

        def backward(forward=forward, leaves=leaves):
            out, _ = forward()
            torch.autograd.grad(out, leaves, grad)

        fwd = timed(lambda forward=forward: [t.detach() for t in forward()])
        fwd_bwd = timed(backward)
        for which, flops, seconds in (("forward", 2 * unit, fwd),
                                      ("forward+backward", 7 * unit, fwd_bwd)):
            rate = flops / seconds / 1e9
            rows.append({"kernel": "block_sparse", "backend": backend, "seq_len": seq,
                         "pass": which, "ms": 1000 * seconds, "gflops": rate,
                         "fraction_of_dense": rate / dense})
    return rows
