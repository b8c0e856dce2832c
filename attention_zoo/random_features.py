"""FAVOR+ positive random features (Choromanski et al., ICLR 2021), and the zoo's seeded randomness.

For x' = d^-1/4 x and m rows w_i of W (orthogonal Gaussian, see below),

    phi(x)_i = m^-1/2 exp(w_i . x' - |x'|^2 / 2),
    E_W[phi(q) . phi(k)] = exp(q' . k') = exp(q . k / sqrt(d)),

so phi(q) . phi(k) estimates the softmax kernel without bias, and every term is positive (the
estimate of a row sum never goes negative). The d^-1/4 scale goes on q and on k once each, so the
logit carries 1/sqrt(d) exactly once (one published harness scaled twice, giving q . k / d).

Stability: phi is computed as exp(u - offset) with a detached offset. Queries take their own row
maximum (it cancels between numerator and denominator); keys share one offset per (batch, head),
the maximum over *real* keys only, because a per-key offset would reweight the keys and padded
junk must not move the scale. Padded keys get phi = 0 exactly: zeroing k or v is not enough,
since phi(0) != 0 would still count the padded key in the denominator.

Randomness: W comes from `draws.generator(seed, draw)` (see draws.py), so the same seed gives
the same output and a resumed run redraws what an uninterrupted one would have.
"""

from __future__ import annotations

import torch
from torch import nn

from .draws import DrawCounter, follow_draws, generator
from .masking import neg_inf


def orthogonal_gaussian(rows: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """(rows, dim): stacked blocks of `dim` exactly orthogonal directions, each row scaled by the
    norm of an independent Gaussian vector, so every row is marginally N(0, I) but rows within a
    block are orthogonal (the "+" of FAVOR+: lower variance than iid rows)."""
    num_blocks = -(-rows // dim)
    gauss = torch.randn(num_blocks, dim, dim, generator=gen, dtype=torch.float64)
    ortho, r = torch.linalg.qr(gauss)
    # The sign fix makes the orthogonal matrix Haar-distributed, not biased by QR's convention.
    ortho = ortho * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    directions = ortho.transpose(-1, -2).reshape(num_blocks * dim, dim)[:rows]
    norms = torch.randn(rows, dim, generator=gen, dtype=torch.float64).norm(dim=-1, keepdim=True)
    return (directions * norms).float()


class RandomFeatures(nn.Module):
    """The FAVOR+ feature map with its projection W (rows, head_dim) and redraw policy.

    hyperbolic False: m = num_features rows, phi(x)_i = m^-1/2 exp(w_i . x' - |x'|^2 / 2).
    hyperbolic True (the "cosh" map of the Performer paper, used by Scatterbrain's code):
    r = num_features // 2 rows and 2r features, the pairs exp(+-w_i . x' - |x'|^2 / 2) scaled by
    (2r)^-1/2. Each pair averages an antithetic couple (w, -w), which lowers the variance, and
    the estimate of exp(q' . k') stays unbiased.

    redraw_every None: W is drawn once at construction and kept (train and eval alike).
    redraw_every N: training-mode calls 1..N use draw 0, calls N+1..2N draw 1, and so on; eval
    calls never redraw and use the current W (the schedule is a `DrawCounter`). W is a buffer and
    the call count is extra state, so a checkpoint restores both. Under nn.DataParallel the
    replicas' counts are discarded each step (a known PyTorch limitation), so use DDP with redraws.
    """

    def __init__(self, head_dim: int, num_features: int, seed: int, redraw_every: int | None,
                 hyperbolic: bool = False):
        super().__init__()
        self.hyperbolic = hyperbolic
        rows = max(1, num_features // 2) if hyperbolic else num_features
        self.num_features = 2 * rows if hyperbolic else rows
        self.draws = DrawCounter(seed, redraw_every)
        self.register_buffer("projection", orthogonal_gaussian(rows, head_dim,
                                                               generator(seed, 0)))

    def _log_features(self, x: torch.Tensor) -> torch.Tensor:
        """u = W x' - |x'|^2 / 2 with x' = d^-1/4 x ([W x'; -W x'] when hyperbolic):
        (batch, heads, seq, d) -> (.., seq, m)."""
        x = x * x.shape[-1] ** -0.25
        proj = x @ self.projection.to(x.dtype).T
        if self.hyperbolic:
            proj = torch.cat([proj, -proj], dim=-1)
        return proj - 0.5 * (x * x).sum(dim=-1, keepdim=True)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of q and k: (batch, heads, seq, m) each, and their log offsets.

        phi_q . phi_k estimates exp(q . k / sqrt(d) - q_offset - k_offset), with
        q_offset (batch, heads, seq, 1) and k_offset (batch, heads, 1, 1); both detached.
        phi_k is exactly zero at padded keys (mask: (batch, seq) bool, True = real).
        """
        follow_draws(self.projection, self.draws,
                     lambda gen: orthogonal_gaussian(*self.projection.shape, gen))
        scale = self.num_features ** -0.5
        u_q = self._log_features(q)
        q_offset = u_q.amax(dim=-1, keepdim=True).detach()
        phi_q = torch.exp(u_q - q_offset) * scale

        u_k = self._log_features(k)
        real = mask[:, None, :, None]
        floor = neg_inf(u_k.dtype)
        # The max over real keys only: padded junk must not set the scale. An example with no
        # real key gets the floor; its exponents are all masked below, so nothing overflows.
        k_offset = u_k.masked_fill(~real, floor).amax(dim=(-2, -1), keepdim=True).detach()
        phi_k = torch.exp((u_k - k_offset).masked_fill(~real, floor)) * scale
        return phi_q, q_offset, phi_k, k_offset

