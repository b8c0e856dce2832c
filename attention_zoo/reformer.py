"""Reformer: LSH attention with shared queries and keys (Kitaev et al., ICLR 2020).

Queries and keys come from one projection; keys are the unit-norm queries, k_j = q_j / |q_j|,
and the logits are q_i . k_j, with no further 1/sqrt(d): this is trax's and the HuggingFace port's
convention (the port the MRA comparison ran). Both write the key as an RMS normalisation followed
by a division by sqrt(d), x / sqrt(mean(x^2)) / sqrt(d) = x / |x|, so the two steps together
give exactly a unit key. (lucidrains' reformer_pytorch differs: unit keys and then dim^-0.5.)
Each of num_hashes rounds:
  1. hashes every token with a random rotation R (d, B/2): bucket = argmax([x R; -x R]), so
     tokens at a small angle tend to share a bucket;
  2. sorts the tokens by (bucket, position) and cuts the order into chunks of chunk_size;
  3. lets each query attend to the keys of its chunk and of the previous chunk, except itself:
     the self logit is a very negative constant (SELF_LOGIT), so a token attends to itself only
     when it has no other target.
Rounds combine by the log-sum-exp of their normalisers, as in the paper: the output is each
round's softmax output weighted by that round's share of the total normaliser. A key found by
both rounds counts in both (the paper's default, without its duplicate-count correction).
Cost O(num_hashes * n * 2 * chunk_size).

Protocol options, defaults as in the HuggingFace port the MRA comparison ran:
  - redraw_every 1: new rotations on every training-mode forward (HF's `hash_seed=None`),
    seeded by (seed, call number) through draws.DrawCounter; None keeps draw 0 for good;
  - buckets_from "max_seq_len": one bucket count for the model, from its max_seq_len (HF takes
    it from the padded length, which is max_len when batches pad to it); "real_length": from
    each example's real length.
The port's first chunk of round r looks back into the last chunk of round r-1 (wrap-around);
here the first chunk of every round has no previous chunk (DEVIATIONS.md).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import ClassVar

import torch
import torch.nn.functional as F

from .draws import DrawCounter, follow_draws, module_seed
from .masking import neg_inf, pad_all_to_multiple
from .registry import (
    Attention,
    AttentionError,
    Choice,
    register_attention,
    require_choice,
    require_ints,
)

# The logit of a token for itself: far below any real logit (|q . k| <= |q| with unit keys),
# far above the padding logit `neg_inf`, so self wins only over padding (as in the published code).
SELF_LOGIT = -1e5


class BucketsFrom(Choice):
    max_seq_len = enum.auto()  # published: one count for the model
    real_length = enum.auto()  # each example's own count


@dataclasses.dataclass
class ReformerOptions:
    """num_hashes: hash rounds (2 in the MRA comparison).
    chunk_size: tokens per chunk of the sorted order (64).
    num_buckets: buckets per round, even; None picks the largest power of two
        <= 2 * length / chunk_size (at least 2), the published default, with the length that
        `buckets_from` names.
    buckets_from: "max_seq_len" (published: one count for the model) or "real_length" (each
        example's own count); used when num_buckets is None.
    redraw_every: 1 draws new rotations on every training-mode forward (published); N every N
        calls; None draws them once. Eval never redraws: it uses the latest draw.
    seed: seed of the rotations; None draws one from torch's global RNG at construction.
    """

    num_hashes: int = 2
    chunk_size: int = 64
    num_buckets: int | None = None
    buckets_from: BucketsFrom = BucketsFrom.max_seq_len
    redraw_every: int | None = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        require_ints("reformer", self, nullable=("num_buckets", "redraw_every", "seed"),
                     num_hashes=1, chunk_size=1, num_buckets=2, redraw_every=1, seed=0)
        require_choice("reformer", self, buckets_from=BucketsFrom)
        if self.num_buckets is not None and self.num_buckets % 2:
            raise AttentionError(
                f"reformer: num_buckets must be even (argmax over [xR; -xR]), "
                f"got {self.num_buckets}")


def auto_buckets(lengths: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Largest power of two <= 2 * length / chunk_size, at least 2: (batch,) int64."""
    target = (2 * lengths // chunk_size).clamp_min(2)
    return 2 ** torch.floor(torch.log2(target.double())).long()


def sort_and_chunk(x: torch.Tensor, order: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """x (batch, heads, seq, f) in the order of each round: (batch, heads, rounds, nc, chunk, f).

    order: (batch, heads, rounds, seq), a permutation of the positions per round.
    """
    rounds = order.shape[2]
    x = x[:, :, None].expand(-1, -1, rounds, -1, -1)
    sorted_x = x.gather(3, order[..., None].expand(-1, -1, -1, -1, x.shape[-1]))
    return sorted_x.unflatten(3, (-1, chunk_size))


def with_previous_chunk(x: torch.Tensor) -> torch.Tensor:
    """(.., nc, chunk, f) -> (.., nc, 2 * chunk, f): the previous chunk (zeros for the first)
    followed by the chunk itself. No wrap-around, so one chunk never sees itself twice."""
    previous = F.pad(x, (0, 0, 0, 0, 1, 0))[..., :-1, :, :]
    return torch.cat([previous, x], dim=-2)


@register_attention("reformer", ReformerOptions)
class ReformerAttention(Attention):
    """LSH attention; needs q == k (the encoder passes one shared projection).

    Padding: padded tokens hash to an extra bucket after all real ones, so they sort to the end
    and never take a chunk slot from a real token, and they are masked as keys; the bucket count
    comes from max_seq_len or the example's real length, never from the batch's padding.
    Randomness: the rotations (heads, num_hashes, d, B/2) are buffer `rotations`, draw 0 at
    construction, refilled with draw t = (calls - 1) // redraw_every of the seeded sequence as
    training calls are counted (the count is in the state_dict, so a resumed run continues the
    sequence); eval uses the latest draw and is deterministic.
    Exact limit: when one chunk covers the sequence, every query sees every key, and the output is
    exact softmax over q_i . k_j with the self logit rule.
    """

    needs_shared_qk: ClassVar[bool] = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        opts = self.options
        self.max_buckets = opts.num_buckets or int(
            auto_buckets(torch.tensor(self.max_seq_len), opts.chunk_size))
        self.draws = DrawCounter(module_seed(opts.seed), opts.redraw_every)
        self.register_buffer("rotations", self.draw_rotations(self.draws.generator(0)))

    def draw_rotations(self, gen: torch.Generator) -> torch.Tensor:
        """(heads, num_hashes, d, max_buckets / 2) standard Gaussian."""
        return torch.randn(self.num_heads, self.options.num_hashes, self.head_dim,
                           self.max_buckets // 2, generator=gen)

    def hash(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Buckets (batch, heads, rounds, seq) of unit keys (batch, heads, seq, d); padded tokens
        get bucket max_buckets, after every real bucket."""
        if self.options.num_buckets is None and self.options.buckets_from == "real_length":
            buckets = auto_buckets(mask.sum(dim=-1), self.options.chunk_size)
        else:
            buckets = torch.full(mask.shape[:1], self.max_buckets, device=mask.device)
        # rotated: (batch, heads, rounds, seq, max_buckets / 2); columns past an example's
        # bucket count / 2 are excluded, so it hashes into exactly its own number of buckets.
        rotated = keys[:, :, None] @ self.rotations.to(keys.dtype)
        unused = torch.arange(self.max_buckets // 2, device=keys.device) >= buckets[:, None] // 2
        rotated = rotated.masked_fill(unused[:, None, None, None, :], neg_inf(keys.dtype))
        negated = (-rotated).masked_fill(unused[:, None, None, None, :], neg_inf(keys.dtype))
        bucket = torch.cat([rotated, negated], dim=-1).argmax(dim=-1)
        return bucket.masked_fill(~mask[:, None, None, :], self.max_buckets)

    def _attend(self, q, k, v, mask):
        # k is q (shared projection); keys are its unit-norm version.
        chunk = self.options.chunk_size
        seq, d = q.shape[2], q.shape[3]
        (q, keys, v), mask = pad_all_to_multiple((q, F.normalize(q, dim=-1), v), mask, chunk)
        n = q.shape[2]

        follow_draws(self.rotations, self.draws, self.draw_rotations)
        with torch.no_grad():
            bucket = self.hash(keys, mask)  # (batch, heads, rounds, n)
            positions = torch.arange(n, device=q.device)
            order = (bucket * n + positions).argsort(dim=-1)  # by (bucket, position)
        # Sorted chunks: (batch, heads, rounds, nc, chunk, f).
        q_c = sort_and_chunk(q, order, chunk)
        k_c = with_previous_chunk(sort_and_chunk(keys, order, chunk))
        v_c = with_previous_chunk(sort_and_chunk(v, order, chunk))
        pos = order.unflatten(-1, (-1, chunk))  # (batch, heads, rounds, nc, chunk)
        # Zero-padded previous chunk of chunk 0: position -1, which matches no query.
        key_pos = with_previous_chunk((pos + 1)[..., None])[..., 0] - 1
        real = mask[:, None, None, None, :].expand(*pos.shape[:-1], -1)
        key_real = real.gather(-1, key_pos.clamp_min(0)) & (key_pos >= 0)

        logits = q_c @ k_c.transpose(-1, -2)  # (.., nc, chunk, 2 * chunk)
        is_self = pos[..., :, None] == key_pos[..., None, :]
        logits = logits.masked_fill(is_self, SELF_LOGIT)
        logits = logits.masked_fill(~key_real[..., None, :], neg_inf(logits.dtype))
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (.., nc, chunk, 1)
        out = torch.exp(logits - lse) @ v_c  # (.., nc, chunk, d)

        # Back to position order, then weight each round by its share of the normaliser.
        unsort = order.argsort(dim=-1)[..., None]
        out = out.flatten(3, 4).gather(3, unsort.expand(-1, -1, -1, -1, d))
        lse = lse.flatten(3, 4).gather(3, unsort)  # (batch, heads, rounds, n, 1)
        out = (torch.softmax(lse, dim=2) * out).sum(dim=2)
        return out[:, :, :seq]
