"""YOSO (Zeng et al., ICML 2021): attention as LSH Bernoulli sampling.

q and k are L2-normalised. Each of `num_hash` rounds draws tau random hyperplanes (SimHash); a
vector's tau sign bits form its code, and keys with the same code share one of 2^tau buckets. The
round's estimate for a query is the sum of v over the keys in its bucket (kernels.lsh). The
output is the L2-normalised mean over rounds. With Gaussian hyperplanes a key collides with a
query in a round with probability (1 - arccos(q.k) / pi)^tau, so the mean over rounds estimates
B v with B_ij = (1 - arccos(q_i.k_j) / pi)^tau (unnormalised: this is YOSO's own kernel, not an
estimate of softmax attention); the published Hadamard hash (below) comes close to it.

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
    `backward_slots` (default 1024, the published kernel's workspace): past 1024 keys, each
    query keeps one colliding key per slot (key j in slot j mod 1024, drawn among the slot's
    collisions), so at most 1024 keys per query count (and likewise queries per key for dk);
    null keeps every colliding pair.
  - "v1": the YOSO paper's shortcut, (tau / 2) times the sampled collisions averaged over rounds,
    an unbiased estimate of the gradient of B with dB/d(q.k) replaced by (tau / 2) B.
So q, k and v all get finite gradients, nonzero wherever some query-key pair collided.

Hashing (option `hash`). "hadamard" (default, the published fast hash): a head's vectors,
zero-padded to p = 2^ceil(log2 head_dim), map to H D3 H D2 H D1 x (H the p x p Sylvester
Hadamard matrix, D_i random sign diagonals); each transform's p signs give p // tau codes of tau
consecutive bits, and each group of p // tau rounds has its own transform. The planes are the
rows of one orthogonal matrix, so they are not independent Gaussians and the collision rate is
not exactly (1 - arccos(q.k) / pi)^tau: it runs lower by 1% at q.k = 0.95, 6% at 0.8, 14% at
0.6 and 25% at 0.3 (tau 12, head_dim 64; tools/measure_yoso.py). It changes the distribution,
not only the speed (on the CPU the planes are a matrix and the hash is one matmul either way).
Needs tau <= p. "gaussian": tau independent Gaussian hyperplanes per round, whose collision rate is
exactly (1 - arccos(q.k) / pi)^tau.

Redraws (option `redraw`), addressed by draw number through attention_zoo.draws.DrawCounter:
  - "every_forward" (default, as published): every call, eval included, hashes with a fresh
    draw, so eval output is random too (a rerun with the same seed repeats it);
  - "training_steps": each training call draws afresh; eval calls keep the last draw.
Call t uses draw t - 1 of the module's seed (the option `seed`, else one draw from the global
RNG at construction); the count is in the state_dict, so a run resumed from a checkpoint draws
what the uninterrupted run would have. The published code draws per (example, head); here one
draw per (head, round) is shared by the batch, so an example's output never depends on its
position in the batch or on the rest of it (each example's output has the same distribution).
The v2 workspace's survivor draw is seeded from the same draw. On CUDA the bucket sums use
atomic adds, so their last bits may vary between runs.

Padding: padded keys go to the trash bucket 2^tau that no query reads and padded queries to
2^tau + 1, which no key holds, so neither ever takes a slot of the v2 workspace.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.lsh import ESTIMATORS, V2_SLOTS, lsh_cumulation, simhash_codes

from .conv_branch import ConvOptions, WithConvBranch
from .draws import DrawCounter, module_seed, stable_seed
from .registry import (
    Attention,
    AttentionError,
    Backend,
    Choice,
    register_attention,
    require_choice,
    require_ints,
)


class Hash(Choice):
    hadamard = enum.auto()  # published: H D3 H D2 H D1
    gaussian = enum.auto()  # independent hyperplanes


class Redraw(Choice):
    every_forward = enum.auto()  # published, eval included
    training_steps = enum.auto()  # eval keeps the last training draw


Estimator = Choice("Estimator", ESTIMATORS)  # the q/k gradient (kernels.lsh)


def sylvester(p: int) -> torch.Tensor:
    """The p x p Hadamard matrix of Sylvester's construction (p a power of 2), float64."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)])
    return h


def padded_dim(head_dim: int) -> int:
    """The Hadamard transform's width: head_dim rounded up to a power of 2."""
    return 1 << (head_dim - 1).bit_length()


def hadamard_planes(gen: torch.Generator, heads: int, rounds: int, head_dim: int, tau: int
                    ) -> torch.Tensor:
    """(heads, rounds, head_dim, tau) planes of the randomised Hadamard hash: sign(x @ planes)
    are the signs of H D3 H D2 H D1 x (x zero-padded to p), round j * (p // tau) + c taking
    outputs c * tau .. c * tau + tau - 1 of transform j. Entries are integers, exact in fp32."""
    p = padded_dim(head_dim)
    per = p // tau  # codes per transform
    parts = -(-rounds // per)
    signs = torch.randint(0, 2, (heads, parts, 3, p, 1), generator=gen).double() * 2 - 1
    h = sylvester(p)
    # Row-vector form: x^T D1 H D2 H D3 H = (H D3 H D2 H D1 x)^T, H symmetric. (heads, parts, p, p)
    m = (signs[:, :, 0] * h) @ (signs[:, :, 1] * h) @ (signs[:, :, 2] * h)
    codes = m[..., :head_dim, :per * tau].unflatten(-1, (per, tau))  # (heads, parts, d, per, tau)
    return codes.transpose(2, 3).flatten(1, 2)[:, :rounds].float()


def gaussian_planes(gen: torch.Generator, heads: int, rounds: int, head_dim: int, tau: int
                    ) -> torch.Tensor:
    """(heads, rounds, head_dim, tau) independent standard Gaussian hyperplanes."""
    return torch.randn(heads, rounds, head_dim, tau, generator=gen)


@dataclass
class YosoOptions:
    num_hash: int = 16
    tau: int = 12  # per task: 11 ListOps, 12 Text and Retrieval, 10 Image and Pathfinder
    # Per example, tau <= ceil(log2(real length)) + tau_slack; None = the paper's fixed tau.
    tau_slack: int | None = 2
    seed: int | None = None  # None: drawn from the global RNG at construction
    hash: Hash = Hash.hadamard  # the hyperplanes
    redraw: Redraw = Redraw.every_forward
    backward: Estimator = Estimator.v2  # "v2" published, "v1" the paper's (tau / 2) B
    # v2: at most this many keys per query (the published workspace); None: every colliding key
    backward_slots: int | None = V2_SLOTS
    backend: Backend = Backend.auto  # kernels.lsh backend: auto, cpp, triton (CUDA) or reference

    def __post_init__(self) -> None:
        require_ints("yoso", self, nullable=("tau_slack", "seed", "backward_slots"), num_hash=1,
                     tau=1, tau_slack=0, seed=0, backward_slots=1)
        if self.tau > 24:
            raise AttentionError(f"yoso: tau must be <= 24 (2^tau buckets), got {self.tau}")
        require_choice("yoso", self, backward=Estimator, hash=Hash, redraw=Redraw,
                       backend=Backend)


@register_attention("yoso", YosoOptions)
class YosoAttention(Attention):
    """YOSO LSH Bernoulli-sampling attention (see the module docstring for hashing, redraws and
    the backward)."""

    approximates_softmax = False
    kernel_family = "lsh"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        opts = self.options
        if opts.hash == "hadamard" and opts.tau > padded_dim(self.head_dim):
            raise AttentionError(
                f"yoso: hash 'hadamard' takes tau bits from one transform of width "
                f"{padded_dim(self.head_dim)} (head_dim {self.head_dim} rounded up to a power of "
                f"2), got tau={opts.tau}; use hash=gaussian or tau <= {padded_dim(self.head_dim)}")
        self.draws = DrawCounter(module_seed(opts.seed), every=1,
                                 count_eval=opts.redraw == "every_forward")
        self.backend_in_use: str | None = None  # the kernels.lsh backend of the last forward

    def draw_planes(self, draw: int) -> torch.Tensor:
        """(heads, rounds, head_dim, tau) hyperplanes of draw number `draw`."""
        opts = self.options
        family = hadamard_planes if opts.hash == "hadamard" else gaussian_planes
        return family(self.draws.generator(draw), self.num_heads, opts.num_hash, self.head_dim,
                      opts.tau)

    def example_bits(self, mask: torch.Tensor) -> torch.Tensor:
        """(batch,) hash bits per example: tau, capped at ceil(log2 L) + tau_slack."""
        opts = self.options
        bits = torch.full(mask.shape[:1], opts.tau, device=mask.device)
        if opts.tau_slack is None:
            return bits
        lengths = mask.sum(dim=1).clamp_min(1).double()
        return torch.minimum(bits, torch.ceil(torch.log2(lengths)).long() + opts.tau_slack)

    def _attend(self, q, k, v, mask):
        opts = self.options
        tau = opts.tau
        draw = self.draws.next()
        # planes: (heads, rounds, d, tau)
        planes = self.draw_planes(draw).to(device=q.device, dtype=q.dtype)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        bits = self.example_bits(mask)  # (batch,)
        # Keep each example's low `bits` bits; padded keys and queries go to trash buckets.
        low = ((1 << bits) - 1)[:, None, None]  # (batch, 1, 1), broadcasts over heads and seq
        pad = ~mask[:, None, :]  # (batch, 1, seq)
        # q_codes, k_codes: (rounds, batch, heads, seq) in [0, 2^tau + 1]
        q_codes = (simhash_codes(q, planes) & low).masked_fill(pad, 2**tau + 1)
        k_codes = (simhash_codes(k, planes) & low).masked_fill(pad, 2**tau)
        out, self.backend_in_use = lsh_cumulation(
            q, k, v, q_codes, k_codes, bits, 2**tau + 2, opts.backward, opts.backward_slots or 0,
            stable_seed(self.draws.seed, draw), opts.backend)
        return F.normalize(out, dim=-1)


@dataclass
class YosoConvOptions(ConvOptions, YosoOptions):
    pass


@register_attention("yoso_conv", YosoConvOptions)
class YosoConvAttention(WithConvBranch, YosoAttention):
    """YOSO plus the depthwise conv branch over masked v (conv_branch.py), added after YOSO's
    output normalisation; kernel 33."""
