"""YOSO (Zeng et al., ICML 2021): attention as LSH Bernoulli sampling.

q and k are L2-normalised. Each of `num_hash` rounds draws tau random hyperplanes (SimHash); a
vector's tau sign bits form its code, and keys with the same code share one of 2^tau buckets. The
round's estimate for a query is the sum of v over the keys in its bucket (kernels.lsh). The
output is the L2-normalised mean over rounds. A key collides with a query in a round with
probability (1 - arccos(q.k) / pi)^tau, so the mean over rounds estimates B v with
B_ij = (1 - arccos(q_i.k_j) / pi)^tau (unnormalised: this is YOSO's own kernel, not an estimate
of softmax attention). Padded keys are routed to an extra trash bucket that no query reads, so
they never land in a real bucket.

Short examples. The paper's per-task tau is ceil(log2(max length)): about one bucket per token.
With that tau an example much shorter than the maximum has far more buckets than keys, so most
queries meet no key in any round and output exactly zero (a length-1 input almost always does,
and gets no gradient at all). Each example therefore keeps at most ceil(log2 L) + tau_slack bits
(L = its real length; tau_slack = 2 by default, i.e. at most 4-8 buckets per key), which leaves
examples within 4x of the task's maximum length at the paper's tau. Its kernel exponent is then
that example's tau. `tau_slack: null` restores the paper's fixed tau.

Backward (option `backward`; kernels/lsh/__init__.py has the exact formulas). dv is the exact
gradient of the sampled forward. dq and dk need an estimator, since the sampled collisions have
no derivative:
  - "v2" (default): the published one, YOSO's v2 CUDA kernel, which the MRA paper's LRA
    comparison ran, so our numbers compare with the paper's. Each query-key pair that collided
    in at least one round contributes once, weighted by dB/d(q.k) of the expected kernel B
    (at 0.99 q.k, which keeps the derivative finite for a query and its own key).
  - "v1": the YOSO paper's shortcut, (tau / 2) times the sampled collisions averaged over rounds,
    an unbiased estimate of the gradient of B with dB/d(q.k) replaced by (tau / 2) B.
So q, k and v all get finite gradients, nonzero wherever some query-key pair collided.

Kernels (option `backend`): kernels.lsh runs the cumulation and its backward in C++/OpenMP
("cpp", the default on CPU through "auto") or in PyTorch ("reference", any device); both give the
same result for the same hash draws. `backend_in_use` names the one the last forward ran.

Randomness, addressed by draw number as in random_features.py. The module's seed is the option
`seed`, else one draw from the global RNG at construction. Training: call t (t = 1, 2, ...) draws
fresh hyperplanes from `generator(seed, t)` (a fresh sample per step, as the paper). Eval: the
fixed hyperplanes of draw 0 (a persistent buffer), so eval output is deterministic. The seed and
the training-call count are extra state, so a run resumed from a checkpoint draws what the
uninterrupted run would have. One set of hyperplanes per (head, round) is shared by the batch, so
an example's output never depends on the rest of its batch. On CUDA the bucket sums use atomic
adds, so their last bits may vary between runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.lsh import ESTIMATORS, lsh_cumulation, simhash_codes

from .conv_branch import ConvOptions, WithConvBranch
from .draws import generator, module_seed
from .masking import row_mask
from .registry import (
    Attention,
    AttentionError,
    check_backend,
    register_attention,
    require_ints,
)


@dataclass
class YosoOptions:
    num_hash: int = 16
    tau: int = 12  # per task: 11 ListOps, 12 Text and Retrieval, 10 Image and Pathfinder
    # Per example, tau <= ceil(log2(real length)) + tau_slack; None = the paper's fixed tau.
    tau_slack: int | None = 2
    seed: int | None = None  # None: drawn from the global RNG at construction
    backward: str = "v2"  # q/k gradient estimator: "v2" published, "v1" the paper's (tau / 2) B
    backend: str = "auto"  # kernels.lsh backend: auto, cpp or reference

    def validate(self) -> None:
        require_ints("yoso", self, nullable=("tau_slack", "seed"), num_hash=1, tau=1,
                     tau_slack=0, seed=0)
        if self.tau > 24:
            raise AttentionError(f"yoso: tau must be <= 24 (2^tau buckets), got {self.tau}")
        if self.backward not in ESTIMATORS:
            raise AttentionError(f"yoso: backward must be one of {', '.join(ESTIMATORS)}, got "
                                 f"{self.backward!r}")
        check_backend("yoso", self.backend)


@register_attention("yoso", YosoOptions)
class YosoAttention(Attention):
    """YOSO LSH Bernoulli-sampling attention (see the module docstring for backward and RNG)."""

    approximates_softmax = False
    kernel_family = "lsh"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = module_seed(self.options.seed)
        self.training_calls = 0
        self.backend_in_use: str | None = None  # the kernels.lsh backend of the last forward
        self.register_buffer("eval_planes", self.draw_planes(0))

    def get_extra_state(self):
        return {"seed": self.seed, "training_calls": self.training_calls}

    def set_extra_state(self, state):
        self.seed, self.training_calls = state["seed"], state["training_calls"]

    def draw_planes(self, draw: int) -> torch.Tensor:
        """(heads, rounds, head_dim, tau) Gaussian hyperplanes of draw number `draw`."""
        opts = self.options
        return torch.randn(self.num_heads, opts.num_hash, self.head_dim, opts.tau,
                           generator=generator(self.seed, draw))

    def example_bits(self, mask: torch.Tensor) -> torch.Tensor:
        """(batch,) hash bits per example: tau, capped at ceil(log2 L) + tau_slack."""
        opts = self.options
        bits = torch.full(mask.shape[:1], opts.tau, device=mask.device)
        if opts.tau_slack is None:
            return bits
        lengths = mask.sum(dim=1).clamp_min(1).double()
        return torch.minimum(bits, torch.ceil(torch.log2(lengths)).long() + opts.tau_slack)

    full_precision = True

    def _attend(self, q, k, v, mask):
        tau = self.options.tau
        if self.training:
            self.training_calls += 1
            planes = self.draw_planes(self.training_calls)
        else:
            planes = self.eval_planes
        planes = planes.to(device=q.device, dtype=q.dtype)  # (heads, rounds, d, tau)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        bits = self.example_bits(mask)  # (batch,)
        # Keep each example's low `bits` bits; padded keys go to the trash bucket 2^tau.
        low = ((1 << bits) - 1)[:, None, None]  # (batch, 1, 1), broadcasts over heads and seq
        # q_codes, k_codes: (rounds, batch, heads, seq) in [0, 2^tau]
        q_codes = simhash_codes(q, planes) & low
        k_codes = (simhash_codes(k, planes) & low).masked_fill(~mask[:, None, :], 2**tau)
        v = torch.where(row_mask(mask), v, 0)
        out, self.backend_in_use = lsh_cumulation(q, k, v, q_codes, k_codes, bits, 2**tau + 1,
                                                  self.options.backward, self.options.backend)
        return F.normalize(out, dim=-1)


@dataclass
class YosoConvOptions(ConvOptions, YosoOptions):
    pass


@register_attention("yoso_conv", YosoConvOptions)
class YosoConvAttention(WithConvBranch, YosoAttention):
    """YOSO plus the depthwise conv branch over masked v (conv_branch.py), added after YOSO's
    output normalisation; kernel 33."""
