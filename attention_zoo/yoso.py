"""YOSO (Zeng et al., ICML 2021): attention as LSH Bernoulli sampling, in pure PyTorch.

q and k are L2-normalised. Each of `num_hash` rounds draws tau random hyperplanes (SimHash); a
vector's tau sign bits form its code, and keys with the same code share one of 2^tau buckets. The
round's estimate for a query is the sum of v over the keys in its bucket, one scatter-add into
2^tau buckets per (batch, head, round) and one gather. The output is the L2-normalised mean over
rounds. A key collides with a query in a round with probability (1 - arccos(q.k) / pi)^tau, so the
mean over rounds estimates B v with B_ij = (1 - arccos(q_i.k_j) / pi)^tau (unnormalised: this is
YOSO's own kernel, not an estimate of softmax attention). Padded keys are routed to an extra trash
bucket that no query reads, so they never land in a real bucket.

Short examples. The paper's per-task tau is ceil(log2(max length)): about one bucket per token.
With that tau an example much shorter than the maximum has far more buckets than keys, so most
queries meet no key in any round and output exactly zero (a length-1 input almost always does,
and gets no gradient at all). Each example therefore keeps at most ceil(log2 L) + tau_slack bits
(L = its real length; tau_slack = 2 by default, i.e. at most 4-8 buckets per key), which leaves
examples within 4x of the task's maximum length at the paper's tau. Its kernel exponent is then
that example's tau. `tau_slack: null` restores the paper's fixed tau.

Backward (LSHCumulation), following the paper's LSH backward (YOSO v1):
  - dv_j = mean_r sum_i S^r_ij g_i, the exact gradient of the sampled path (S^r_ij = 1 when q_i
    and k_j collide in round r), by the same bucket scheme with queries and keys swapped;
  - dq_i = (tau / 2) mean_r sum_j S^r_ij (g_i . v_j) k_j and dk_j the same with q_i for k_j: the
    gradient of the expected kernel B with its derivative dB/d(q.k) replaced by (tau / 2) B,
    which the forward's collisions estimate without bias. The true derivative is B times
    tau / (pi sin t (1 - t / pi)) (t = arccos q.k): at least 0.57 tau (near t = 1.35) and
    unbounded as q.k -> +-1, e.g. for a query and its own key, so its sampled version would be
    unbounded too; the surrogate keeps the sign and the order of magnitude and stays bounded.
    The products (g_i . v_j) k_j are bucketed as v_j k_j^T per value channel, in channel chunks
    that bound the table size.
So q, k and v all get finite gradients, nonzero wherever some query-key pair collided.

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

from .conv_branch import ConvOptions, WithConvBranch
from .masking import row_mask
from .random_features import generator, module_seed
from .registry import Attention, AttentionError, register_attention, require_ints

# Most table entries (fp32 values) one chunk of the weighted backward may allocate (256 MiB).
TABLE_BUDGET = 2**26


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
    """out[..., i, :] = sum_j [codes_out[..., i] == codes_in[..., j]] values[..., j, :].

    codes_out: (batch, heads, n_out), codes_in: (batch, heads, n_in) in [0, num_buckets);
    values: (batch, heads, n_in, e) -> (batch, heads, n_out, e). One scatter-add into a
    (batch * heads * num_buckets, e) table, one gather.
    """
    batch, heads, n_in, e = values.shape
    offset = torch.arange(batch * heads, device=values.device).view(batch, heads, 1) * num_buckets
    table = values.new_zeros(batch * heads * num_buckets, e)
    table.index_add_(0, (codes_in + offset).flatten(), values.reshape(-1, e))
    return table[(codes_out + offset).flatten()].view(batch, heads, -1, e)


def weighted_bucket_cumulation(
    codes_out: torch.Tensor, x_out: torch.Tensor, codes_in: torch.Tensor, y_in: torch.Tensor,
    z_in: torch.Tensor, num_buckets: int,
) -> torch.Tensor:
    """out_a = sum_b [code_a == code_b] (x_a . y_b) z_b, with x, y: (batch, heads, n, e) and
    z: (batch, heads, n_in, d): buckets hold sum_b y_b[w] z_b per channel w, chunked over w."""
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


class LSHCumulation(torch.autograd.Function):
    """mean over rounds of the bucket sums of v; backward as in the module docstring.

    q, k: (batch, heads, seq, d) normalised; v: (batch, heads, seq, d) with padded rows zero;
    q_codes, k_codes: (rounds, batch, heads, seq) in [0, buckets - 1), padded keys in the trash
    bucket buckets - 1; bits: (batch,) each example's tau.
    """

    @staticmethod
    def forward(ctx, q, k, v, q_codes, k_codes, bits, buckets):
        rounds = q_codes.shape[0]
        out = sum(bucket_cumulation(q_codes[r], k_codes[r], v, buckets) for r in range(rounds))
        ctx.save_for_backward(q, k, v, q_codes, k_codes, bits)
        ctx.buckets = buckets
        return out / rounds

    @staticmethod
    def backward(ctx, grad):
        q, k, v, q_codes, k_codes, bits = ctx.saved_tensors
        buckets = ctx.buckets
        rounds = q_codes.shape[0]
        grad_q = grad_k = grad_v = None
        if ctx.needs_input_grad[2]:
            grad_v = sum(bucket_cumulation(k_codes[r], q_codes[r], grad, buckets)
                         for r in range(rounds)) / rounds
        # dB/d(q.k) ~ (tau / 2) B with each example's tau, averaged over rounds.
        surrogate = (bits / 2 / rounds).to(grad.dtype)[:, None, None, None]
        if ctx.needs_input_grad[0]:
            grad_q = surrogate * sum(
                weighted_bucket_cumulation(q_codes[r], grad, k_codes[r], v, k, buckets)
                for r in range(rounds))
        if ctx.needs_input_grad[1]:
            grad_k = surrogate * sum(
                weighted_bucket_cumulation(k_codes[r], v, q_codes[r], grad, q, buckets)
                for r in range(rounds))
        return grad_q, grad_k, grad_v, None, None, None, None


@dataclass
class YosoOptions:
    num_hash: int = 16
    tau: int = 12  # per task: 11 ListOps, 12 Text and Retrieval, 10 Image and Pathfinder
    # Per example, tau <= ceil(log2(real length)) + tau_slack; None = the paper's fixed tau.
    tau_slack: int | None = 2
    seed: int | None = None  # None: drawn from the global RNG at construction

    def validate(self) -> None:
        require_ints("yoso", self, nullable=("tau_slack", "seed"), num_hash=1, tau=1,
                     tau_slack=0, seed=0)
        if self.tau > 24:
            raise AttentionError(f"yoso: tau must be <= 24 (2^tau buckets), got {self.tau}")


@register_attention("yoso", YosoOptions)
class YosoAttention(Attention):
    """YOSO LSH Bernoulli-sampling attention (see the module docstring for backward and RNG)."""

    approximates_softmax = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = module_seed(self.options.seed)
        self.training_calls = 0
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
        out = LSHCumulation.apply(q, k, v, q_codes, k_codes, bits, 2**tau + 1)
        return F.normalize(out, dim=-1)


@dataclass
class YosoConvOptions(ConvOptions, YosoOptions):
    pass


@register_attention("yoso_conv", YosoConvOptions)
class YosoConvAttention(WithConvBranch, YosoAttention):
    """YOSO plus the depthwise conv branch over masked v (conv_branch.py), added after YOSO's
    output normalisation; kernel 33."""
