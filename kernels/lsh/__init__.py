"""YOSO's hashing and bucket cumulation: one entry point over the backends "cpp" and "reference".

    out = lsh_cumulation(q, k, v, q_codes, k_codes, bits, num_buckets, estimator="v2", slots=0,
                         seed=0)

q, k: (batch, heads, n, d) unit rows; v: (batch, heads, n_k, d); q_codes, k_codes: (rounds,
batch, heads, n) int64 bucket codes (SimHash, `simhash_codes`); bits: (batch,) each example's
number of hash bits tau. S^r_ij = [q_codes[r, i] == k_codes[r, j]] marks a collision in round r
(m rounds). The forward is out_i = mean_r sum_j S^r_ij v_j, an unbiased estimate of
sum_j B_ij v_j with B_ij = B(q_i . k_j), B(x) = (1 - arccos(x) / pi)^tau, the collision
probability of one round (Gaussian hyperplanes).

Backward, g = d loss / d out:
  dv_j = mean_r sum_i S^r_ij g_i, the exact gradient of the sampled forward, in both estimators.
  "v2" (the published one, YOSO's v2 CUDA kernel, which the MRA paper's LRA comparison ran):
      dq_i = sum_{j in U_i} w(q_i . k_j) (g_i . v_j) k_j,   U_i = {j : S^r_ij = 1 for some r},
      w(x) = dB/dy at y = 0.99 x, clipped: tau (1 - arccos(y) / pi)^(tau - 1) c(y) / pi,
      c(y) = min(10, 1 / sqrt(1 - y^2)),
    dk_j the same with the roles of (q, g) and (k, v) swapped. Each colliding pair counts once,
    however many rounds it collided in, and nothing is divided by m: it is the gradient of the
    expected forward, sum_j B'(q_i . k_j) (g_i . v_j) k_j, with B' taken at 0.99 q.k (and no
    chain factor 0.99) and the sum restricted to the sampled support U_i; not an unbiased
    estimate of that gradient. Its expectation over hash draws is
      E[dq_i] = sum_j (1 - (1 - B_ij)^m) w(q_i . k_j) (g_i . v_j) k_j.
    0.99 keeps y off +-1, where 1 / sqrt(1 - y^2) diverges (a query and its own key); for unit
    q, k the clip at 10 never binds, since 1 / sqrt(1 - 0.99^2) = 7.09. The published kernel
    evaluates arccos, the power and 1 / sqrt(1 - y^2 + 1e-6) from 32-entry linear-interpolation
    tables; here they are exact (no 1e-6), but for the C++ backend's fp32 arccos, a polynomial
    within 2e-8 of it (Abramowitz and Stegun 4.4.46).
  v2's workspace, `slots` (the published kernel's 1024, `V2_SLOTS`; 0: none): past `slots`
    inputs, U_i is cut to one survivor per slot: key j goes to slot j mod slots, and among the
    collision events (j, r) of a slot one survives, drawn uniformly, so key j is kept with
    probability (its colliding rounds) / (the slot's colliding (key, round) events); the
    survivors keep their weight (nothing is rescaled), so past 1024 keys the published gradient
    sums at most 1024 keys per query. The published kernel draws with a per-thread LCG under
    atomic adds (a reservoir that never keeps a slot's first event); here the draw is a hash of
    (seed, head, i, j, r) (reference.slot_survivors), identical on every backend, so the same
    seed gives the same gradient. dk uses slots over queries in the same way.
  "v1" (the YOSO paper's shortcut; HuggingFace's lsh_backward):
      dq_i = (tau / 2) mean_r sum_j S^r_ij (g_i . v_j) k_j,   dk_j likewise;
    an unbiased estimate of sum_j (tau / 2) B_ij (g_i . v_j) k_j: dB/dx replaced by (tau / 2) B.

Backends (kernels.backend): "cpp" (cpu.py, lsh.cpp: OpenMP over batch * heads and rows, keys
sorted by code per round, colliding pairs walked, O(collisions + kept pairs * d)), "triton" on
CUDA (gpu.py: dense tiles of collision counts, flash-style, fp32 arithmetic; extra `triton`;
checked on the CPU through Triton's interpreter, not yet run on a GPU), then "reference"
(reference.py, any device).
"""

from __future__ import annotations

import torch

from ..backend import BackendError, register, resolve
from . import reference
from .reference import V2_SLOTS, simhash_codes

__all__ = ["ESTIMATORS", "V2_SLOTS", "lsh_cumulation", "simhash_codes"]

ESTIMATORS = ("v2", "v1")


def _load_cpp():
    from . import cpu  # noqa: PLC0415 (imports torch.utils.cpp_extension only when asked)

    return cpu.load()


def _load_triton():
    try:
        from . import gpu  # noqa: PLC0415 (imports triton only when asked)
    except ImportError as err:
        raise BackendError(f"the lsh triton backend needs Triton ({err}); fix: pip install "
                           "'lra-zoo[triton]' (a CUDA build of torch brings its own)") from err
    return gpu


register("lsh", "cpp", ("cpu",), _load_cpp)
register("lsh", "triton", ("cuda",), _load_triton)
register("lsh", "reference", ("cpu", "cuda"), lambda: reference)


def lsh_cumulation(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_codes: torch.Tensor,
    k_codes: torch.Tensor, bits: torch.Tensor, num_buckets: int, estimator: str = "v2",
    slots: int = 0, seed: int = 0, backend: str = "auto",
) -> tuple[torch.Tensor, str]:
    """(out, name of the backend that ran): out = mean_r sum_j S^r_ij v_j, (batch, heads, n_q, d),
    differentiable in q, k (the estimator above) and v. num_buckets: codes lie in
    [0, num_buckets). slots, seed: v2's workspace (0: the complete union) and its draw."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"kernels.lsh: estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if slots < 0:
        raise ValueError(f"kernels.lsh: slots must be >= 0 (0: no cap), got {slots}")
    name, module = resolve("lsh", backend, q.device)
    return module.lsh_cumulation(q, k, v, q_codes, k_codes, bits, num_buckets, estimator, slots,
                                 seed), name
