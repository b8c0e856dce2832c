"""BigBird: block-sparse attention with window, global and random blocks (Zaheer et al., 2020).

The sequence is cut into blocks of b tokens (padded internally to a multiple of b). Each query
block sees, with one softmax per query row over the union:
  - window blocks: itself and (window_blocks - 1) / 2 neighbours on each side;
  - global blocks: the first block and the last block (both also see everything, see below);
  - num_random random blocks, drawn among the example's other blocks that hold a real token.
The first and last query blocks are global: they attend to every real key.
Cost O(n * b * (window_blocks + 2 + num_random)) plus O(2 b n) for the global rows.

Protocol: the random blocks are redrawn on every training-mode forward by default, as in the
MRA comparison's harness (HuggingFace's block-sparse attention with `seed=None`); `redraw_every:
null` fixes them at construction. Kept as ours (the published choice leaks padding): the last
global block is the example's last real block, and random blocks come from its real blocks.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .blocks import from_blocks, gather_blocks, to_blocks
from .draws import DrawCounter, follow_draws, module_seed
from .masking import key_mask, masked_softmax, pad_all_to_multiple
from .registry import Attention, AttentionError, register_attention, require_ints


@dataclasses.dataclass
class BigBirdOptions:
    """block_size: b tokens per block (32 in the MRA comparison).
    num_random: random key blocks per query block (2).
    window_blocks: sliding blocks per query block, odd, centred on itself (3).
    redraw_every: 1 draws new random blocks on every training-mode forward (published); N every
        N calls; None draws them once. Eval never redraws: it uses the latest draw.
    seed: seed of the random-block draws; None draws one from torch's global RNG at construction.
    """

    block_size: int = 32
    num_random: int = 2
    window_blocks: int = 3
    redraw_every: int | None = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        require_ints("bigbird", self, nullable=("redraw_every", "seed"), block_size=1,
                     num_random=0, window_blocks=1, redraw_every=1, seed=0)
        if self.window_blocks % 2 == 0:
            raise AttentionError(
                f"bigbird: window_blocks must be odd (centred on the query block), "
                f"got {self.window_blocks}")


@register_attention("bigbird", BigBirdOptions)
class BigBirdAttention(Attention):
    """BigBird block-sparse attention (the ITC variant: global blocks from the sequence itself).

    "Last block" is per example: the last block holding a real token of that example, not the
    last block of the padded input (which for a short example is pure padding and would waste the
    global slot). Window and global blocks that coincide are counted once.

    Random blocks: each head has a random priority for every (query block, key block) pair up
    to max_seq_len (buffer `priorities`). A query block's random blocks are the num_random
    highest-priority key blocks among its candidates: blocks of the same example that hold a
    real token and are neither window nor global blocks. Ranking iid priorities within the
    candidates draws a uniform random subset of them, from real blocks only and over the whole
    length (not only the first 1024 tokens); fewer candidates than num_random leaves the missing
    slots empty. An example's blocks depend only on its own mask and the draw, never on its
    batch or its padding. The priorities are draw 0 at construction and are refilled with draw
    t = (calls - 1) // redraw_every of the seeded sequence as training calls are counted (the
    count is in the state_dict, so a resumed run continues the sequence); eval uses the latest
    draw and is deterministic.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.max_blocks = -(-self.max_seq_len // self.options.block_size)
        self.draws = DrawCounter(module_seed(self.options.seed), self.options.redraw_every)
        self.register_buffer("priorities", self.draw_priorities(self.draws.generator(0)))

    def draw_priorities(self, gen: torch.Generator) -> torch.Tensor:
        """(heads, max_blocks, max_blocks) uniform in [0, 1)."""
        return torch.rand(self.num_heads, self.max_blocks, self.max_blocks, generator=gen)

    def key_blocks(
        self, real_blocks: torch.Tensor, global_blocks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The key blocks each query block sees, and which of those slots are used.

        real_blocks: (batch, nb) bool, blocks holding a real token;
        global_blocks: (batch, 2) the first block (0) and the last real block of each example.
        Returns index (batch, heads, nb, K) int64 and used (batch, heads, nb, K) bool, with
        K = window_blocks + 2 + num_random; an unused slot points at block 0 and is masked.
        """
        opts = self.options
        batch, nb = real_blocks.shape
        device = real_blocks.device
        blocks = torch.arange(nb, device=device)
        half = opts.window_blocks // 2

        window = blocks[:, None] + torch.arange(-half, half + 1, device=device)  # (nb, W)
        window_used = (window >= 0) & (window < nb)
        last = global_blocks[:, 1]
        glob = global_blocks[:, None, :].expand(-1, nb, -1)  # (batch, nb, 2)
        # A global block inside the window is already seen; the last block may be the first.
        glob_used = (glob - blocks[:, None]).abs() > half  # (batch, nb, 2)
        glob_used[..., 1] &= last[:, None] != 0

        # Random candidates: real key blocks outside the window and not global.
        offset = (blocks[None, :] - blocks[:, None]).abs()  # (nb, nb) |key block - query block|
        candidate = (real_blocks[:, None, :] & (offset > half)
                     & (blocks != 0) & (blocks[None, None, :] != last[:, None, None]))
        # score: (batch, heads, nb, nb), -1 for non-candidates (priorities are in [0, 1))
        score = torch.where(candidate[:, None], self.priorities[:, :nb, :nb], -1.0)
        score, rand = score.topk(min(opts.num_random, nb), dim=-1)

        heads = self.num_heads
        index = torch.cat([window.expand(batch, heads, nb, -1).clamp(0, nb - 1),
                           glob[:, None].expand(-1, heads, -1, -1), rand], dim=-1)
        used = torch.cat([window_used.expand(batch, heads, nb, -1),
                          glob_used[:, None].expand(-1, heads, -1, -1), score >= 0], dim=-1)
        return index, used

    def _attend(self, q, k, v, mask):
        follow_draws(self.priorities, self.draws, self.draw_priorities)
        seq, d = q.shape[2], q.shape[3]
        b = self.options.block_size
        scale = 1.0 / math.sqrt(d)
        (q, k, v), padded = pad_all_to_multiple((q, k, v), mask, b)
        batch, heads, n = q.shape[:3]
        nb = n // b
        mask_blocks = to_blocks(padded, b, dim=-1)  # (batch, nb, b)
        real_blocks = mask_blocks.any(dim=-1)
        block_id = torch.arange(nb, device=q.device)
        last = (real_blocks * block_id).amax(dim=-1)  # (batch,) last real block (0 if none)
        global_blocks = torch.stack([torch.zeros_like(last), last], dim=-1)  # (batch, 2)
        index, used = self.key_blocks(real_blocks, global_blocks)
        num_slots = index.shape[-1]

        # Gather each query block's K key blocks: (batch, heads, nb, K * b, d).
        flat = index.flatten(-2)  # (batch, heads, nb * K)
        keys = gather_blocks(to_blocks(k, b), flat).view(batch, heads, nb, num_slots * b, d)
        values = gather_blocks(to_blocks(v, b), flat).view(batch, heads, nb, num_slots * b, d)
        key_real = gather_blocks(mask_blocks[:, None], flat).view(batch, heads, nb, num_slots, b)
        allowed = (key_real & used[..., None]).flatten(-2)[..., None, :]  # (.., nb, 1, K * b)
        q_blocks = to_blocks(q, b)  # (batch, heads, nb, b, d)
        logits = q_blocks @ keys.transpose(-1, -2) * scale  # (batch, heads, nb, b, K * b)
        out = masked_softmax(logits, allowed) @ values  # (batch, heads, nb, b, d)

        # The first and last (real) query blocks are global: they see every real key.
        global_rows = global_blocks[:, None].expand(-1, heads, -1)  # (batch, heads, 2)
        global_q = gather_blocks(q_blocks, global_rows).flatten(-3, -2)  # (batch, heads, 2b, d)
        global_logits = global_q @ k.transpose(-1, -2) * scale
        global_out = (masked_softmax(global_logits, key_mask(padded)) @ v).unflatten(-2, (2, b))
        block_id = block_id[:, None, None]  # (nb, 1, 1) against out (batch, heads, nb, b, d)
        out = torch.where(block_id == 0, global_out[:, :, :1], out)
        out = torch.where(block_id == last[:, None, None, None, None], global_out[:, :, 1:], out)
        return from_blocks(out)[:, :, :seq]
