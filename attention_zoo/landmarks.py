"""Landmark segments built per example over its real tokens (Nystromformer and SOFT).

Padding must never shape a landmark: a segment mean over a window that holds padding is diluted
by the zeros (or moved by whatever sits there). So segments are laid over each example's real
tokens only, in order: real token of rank r (0-based among the real tokens of an example of L real
tokens) belongs to segment floor(r * m / L). Every segment then holds floor(L/m) or ceil(L/m) real
tokens, n need not be divisible by m, and when L < m each real token is a segment of its own and the
remaining m - L segments are empty (marked invalid, to be masked by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .masking import masked_rows
from .registry import require_ints


@dataclass
class LandmarkOptions:
    """Options shared by the landmark methods, and Nystromformer's options as they stand (6
    pseudo-inverse steps, the paper's); SOFT overrides the steps."""

    num_landmarks: int = 64
    pinv_iterations: int = 6

    def __post_init__(self) -> None:
        require_ints(type(self).__name__, self, num_landmarks=1, pinv_iterations=0)


def real_token_rank(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of each real token among its example's real tokens, and the real-token counts.

    mask: (batch, seq) bool -> rank (batch, seq) long (meaningless at padding), lengths (batch, 1).
    """
    rank = torch.cumsum(mask.long(), dim=1) - 1
    return rank, mask.sum(dim=1, keepdim=True)


def segment_means(
    x: torch.Tensor, mask: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked segment means: x (batch, heads, seq, dim) -> (batch, heads, m, dim), valid (batch, m).

    The means are one matmul with a (batch, m, seq) averaging matrix, which is deterministic on
    every device (unlike an atomic scatter-add) and costs as much as one landmark kernel.
    """
    rank, lengths = real_token_rank(mask)
    segment = rank * num_segments // lengths.clamp_min(1)  # (batch, seq)
    ids = torch.arange(num_segments, device=x.device)
    # member[b, j, i]: real token i of example b is in segment j.
    member = (segment[:, None, :] == ids[None, :, None]) & mask[:, None, :]
    counts = member.sum(dim=-1)  # (batch, m)
    weights = member.to(x.dtype) / counts.clamp_min(1)[..., None].to(x.dtype)
    # Padded rows get weight 0, but 0 * inf is NaN: zero them rather than trust their content.
    return weights[:, None] @ masked_rows(x, mask), counts > 0


def real_tokens_in_windows(
    x: torch.Tensor, mask: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's real tokens moved to the front, for strided-conv landmarks (SOFT).

    x: (batch, heads, seq, dim) -> (batch, heads, w * window, dim) with w = ceil(seq / window), and
    valid: (batch, w), True for windows holding at least one real token. Windows are laid over the
    real tokens in order (so padding anywhere never splits them), and the tail of the last real
    window, which would straddle padding, repeats the last real token ("replicate" padding): every
    value the conv sees is a real token, never a zero or padding content.
    """
    batch, _, seq, dim = x.shape
    num_windows = -(-seq // window)
    _, lengths = real_token_rank(mask)
    # Real positions first, in order (a stable sort of the padding flags).
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    slot = torch.arange(num_windows * window, device=x.device)
    slot = torch.minimum(slot[None, :], (lengths - 1).clamp_min(0))
    source = torch.gather(order, 1, slot)  # (batch, w * window)
    index = source[:, None, :, None].expand(batch, x.shape[1], -1, dim)
    valid = torch.arange(num_windows, device=x.device)[None, :] * window < lengths
    return torch.gather(x, 2, index), valid
