"""Iterative pseudo-inverse of small landmark matrices, and the float32 rule it needs.

Nystromformer and SOFT both invert an (m x m) landmark kernel with a matmul-only iteration of the
hyperpower family

    Z <- Z p(A Z),   Z0 = A^T / (||A||_1 ||A||_inf),

which converges to the Moore-Penrose pseudo-inverse of A from this start (Ben-Israel & Cohen 1966):
the start gives ||A Z0|| <= 1 since sigma_max(A)^2 <= ||A||_1 ||A||_inf. The polynomial p picks the
member:
    "newton_schulz":  p(X) = 2I - X                                  (SOFT; second order)
    "razavi":         p(X) = (13I - 15X + 7X^2 - X^3) / 4             (Nystromformer; third order,
                      written in the paper as Z <- 1/4 Z(13I - AZ(15I - AZ(7I - AZ))))
With R = I - AZ the Razavi update is Z(I + R + R^2 + R^3/4), so each step shrinks the residual
R -> R^3 (roughly); Newton-Schulz squares it.

The norms are taken per matrix, i.e. per (batch, head): a maximum over the whole batch (as one
published harness does) couples examples. No `.item()` host sync: a fixed number of iterations.
"""

from __future__ import annotations

import torch

# Coefficients c_0..c_k of p(X) = sum_i c_i X^i.
UPDATES: dict[str, tuple[float, ...]] = {
    "newton_schulz": (2.0, -1.0),
    "razavi": (13 / 4, -15 / 4, 7 / 4, -1 / 4),
}


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs: the precision the landmark and hash math needs."""
    return torch.promote_types(dtype, torch.float32)


def newton_pinv(a: torch.Tensor, iterations: int, update: str) -> torch.Tensor:
    """Pseudo-inverse of a: (..., m, m) by `iterations` hyperpower steps of `update` (a key of
    UPDATES; no default, so each method states its own), in >= float32."""
    coeffs = UPDATES[update]
    dtype = math_dtype(a.dtype)
    with torch.autocast(a.device.type, enabled=False):
        a = a.to(dtype)
        # Per-matrix scale: ||A||_1 = max column sum, ||A||_inf = max row sum.
        norm_1 = a.abs().sum(dim=-2).amax(dim=-1)
        norm_inf = a.abs().sum(dim=-1).amax(dim=-1)
        scale = (norm_1 * norm_inf).clamp_min(torch.finfo(dtype).tiny)
        z = a.transpose(-1, -2) / scale[..., None, None]
        eye = torch.eye(a.shape[-1], dtype=dtype, device=a.device)
        for _ in range(iterations):
            x = a @ z
            # Horner: p(X) = c_0 I + X (c_1 I + X (c_2 I + ...)).
            poly = coeffs[-1] * eye
            for c in reversed(coeffs[:-1]):
                poly = c * eye + x @ poly
            z = z @ poly
        return z


def masked_pinv(
    a: torch.Tensor, valid: torch.Tensor, iterations: int, update: str
) -> torch.Tensor:
    """Pseudo-inverse of the valid landmark block of a: (batch, heads, m, m); valid: (batch, m).

    Rows and columns of invalid (empty) landmarks are replaced by the identity. The matrix is then
    block diagonal [A_valid, I]; the iteration keeps that structure exactly (its off-diagonal blocks
    stay exact zeros), and for row-stochastic or unit-diagonal kernels the identity block leaves
    both norms of the initial scale unchanged, so the valid block iterates exactly as if alone.
    """
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return newton_pinv(torch.where(pair, a, eye), iterations, update)
