"""Local (sliding-window) attention and the small pieces the sparse and low-rank zoo modules share.

Band layout. A query at position i sees the keys j with -half_window <= j - i <= ahead (ahead
= half_window by default: |i - j| <= half_window, a window of 2 * half_window + 1 tokens). The
sequence is cut into blocks of `block = half_window` tokens (or the whole sequence when it is
shorter), and each query block is paired with its previous, own and next key blocks. Those
3 * block keys hold the whole band of every query in the block, so the band costs
O(n * 3 * block) and never builds the n x n matrix:

    scores   (batch, heads, nb, block, 3 * block)   from Band.scores(a, b)
    allowed  (batch, 1,     nb, block, 3 * block)   in the band, inside the input, real key

Used by Longformer (window plus global tokens) and Scatterbrain (exact window plus low rank).
"""

from __future__ import annotations

import torch

from .blocks import neighbour_blocks
from .masking import pad_to_multiple, row_mask

# Each query block sees the keys of its previous, own and next block.
PREV_OWN_NEXT = (-1, 0, 1)


class Band:
    """The band -half_window <= j - i <= ahead (default half_window) over one padded input;
    built once per forward.

    mask: (batch, seq) bool, True = a key that may be attended. Inputs are padded internally to a
    multiple of `block`: pad q, k, v with `pad` and cut outputs back with `unpad`.
    """

    def __init__(self, mask: torch.Tensor, half_window: int, ahead: int | None = None):
        ahead = half_window if ahead is None else ahead
        assert ahead <= half_window  # the next key block must hold the band ahead
        self.mask = mask
        self.seq = mask.shape[1]
        self.block = max(1, min(half_window, self.seq))
        offsets = torch.arange(3 * self.block, device=mask.device) - self.block
        rows = torch.arange(self.block, device=mask.device)
        # distance[i, j] = key position - query position, the same in every block.
        distance = offsets[None, :] - rows[:, None]
        in_band = (distance >= -half_window) & (distance <= ahead)  # (block, 3 * block)
        # The key mask as a one-feature tensor (batch, 1, seq, 1), padded and blocked like keys:
        # padding and neighbour blocks beyond the input come back as 0 = not a real key.
        key_real = self.key_blocks(self.pad(row_mask(mask).to(torch.uint8)))[..., 0].bool()
        # allowed: (batch, 1, nb, block, 3 * block)
        self.allowed = in_band & key_real[..., None, :]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, heads, seq, f) -> (batch, heads, padded seq, f), zeros after the input."""
        return pad_to_multiple(x, self.mask, self.block)[0]

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : self.seq]

    def query_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, heads, padded seq, f) -> (batch, heads, nb, block, f)."""
        return x.unflatten(-2, (x.shape[-2] // self.block, self.block))

    def key_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, heads, padded seq, f) -> (batch, heads, nb, 3 * block, f): the keys each query
        block sees (zeros beyond the input)."""
        return neighbour_blocks(self.query_blocks(x), PREV_OWN_NEXT, dim=-3)

    def scores(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a . b over the band: a, b (batch, heads, padded seq, f) -> (batch, heads, nb, block,
        3 * block). Entries outside `allowed` are meaningless; callers mask them."""
        return self.query_blocks(a) @ self.key_blocks(b).transpose(-1, -2)

    def apply(self, weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Band weights (batch, heads, nb, block, 3 * block) times v (batch, heads, padded seq, d)
        -> (batch, heads, padded seq, d). Weights outside `allowed` must already be zero."""
        return (weights @ self.key_blocks(v)).flatten(-3, -2)

