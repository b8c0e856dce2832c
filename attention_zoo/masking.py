"""Mask helpers shared by every attention.

Convention: `mask` is (batch, seq) bool with True for real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def key_mask(mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) -> (batch, 1, 1, seq): broadcasts over heads and query rows of logits."""
    return mask[:, None, None, :]


def suffix_mask(lengths: Sequence[int] | torch.Tensor, seq: int) -> torch.Tensor:
    """(batch, seq) bool: example b's first lengths[b] tokens are real, the rest padding."""
    return torch.arange(seq)[None, :] < torch.as_tensor(lengths)[:, None]


def row_mask(mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) -> (batch, 1, seq, 1): broadcasts over heads and features of q, k or v."""
    return mask[:, None, :, None]


def masked_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded rows of x: (batch, heads, seq, dim) or (batch, seq, dim), whatever they
    hold. The one way padded rows are zeroed, in the zoo and in the encoder.

    A select, not a product: 0 * inf and 0 * NaN are NaN, and a NaN in a padded row would then
    reach every output it is summed into (and its gradient).
    """
    return torch.where(row_mask(mask) if x.dim() == 4 else mask[..., None], x, 0)


def pad_to_multiple(
    x: torch.Tensor, mask: torch.Tensor, multiple: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad x (batch, heads, seq, dim) and mask (batch, seq) along seq to a multiple of `multiple`.

    The new positions are padding (mask False), so methods that need a block, chunk or window
    multiple can take any length. Callers slice the output back to the input length.
    """
    seq = x.shape[2]
    extra = (-seq) % multiple
    if extra == 0:
        return x, mask
    x = torch.nn.functional.pad(x, (0, 0, 0, extra))
    mask = torch.nn.functional.pad(mask, (0, extra), value=False)
    return x, mask


def pad_all_to_multiple(
    tensors: Sequence[torch.Tensor], mask: torch.Tensor, multiple: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`pad_to_multiple` for several tensors (batch, heads, seq, f) that share one mask.

    Returns the padded tensors and the padded mask. `mask` may be any (batch, seq) tensor: its new
    positions hold False (0 for a float count of real tokens).
    """
    padded = [pad_to_multiple(x, mask, multiple) for x in tensors]
    return [x for x, _ in padded], padded[0][1]


def neg_inf(dtype: torch.dtype) -> float:
    """A large negative logit that stays finite in `dtype` (exp underflows to exactly 0)."""
    return torch.finfo(dtype).min / 2


def masked_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, restricted to `allowed` (bool, broadcastable to logits).

    A row with no allowed entry (an example with no real token) gets all-zero weights, not NaN.
    """
    weights = torch.softmax(logits.masked_fill(~allowed, neg_inf(logits.dtype)), dim=-1)
    return torch.where(allowed, weights, 0)
