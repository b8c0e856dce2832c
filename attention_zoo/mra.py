"""MRA-2 and MRA-2-s: multi-resolution approximation of softmax attention (Zeng et al., ICML 2022).

The attention matrix exp(q k^T / sqrt(d)) is approximated at two resolutions over blocks of b
tokens (nb = n / b blocks):
  - low resolution: one coefficient per (query block, key block) pair, the exp of the logit of
    the block means, exp(q_hat . k_hat / sqrt(d)), standing for each of the key block's real tokens;
  - high resolution: the exact b x b logits of the pairs with the largest low-resolution logits
    (plus priors), chosen per (batch, head) over the whole nb x nb grid (the budget, below).
MRA-2 uses the low-resolution coefficient wherever no exact block was chosen; MRA-2-s ("sparse")
uses only the exact blocks, so a query block with no chosen pair outputs zero. Each query row is
normalised over everything it sees: out = (hi + lo) / (rowsum_hi + rowsum_lo), never building the
n x n matrix. The exact blocks run in `kernels.block_sparse` (a fused C++ kernel on CPU, with a
PyTorch reference), the block means and the low-resolution part here.

Budget (option `budget_from`), per (batch, head):
  - "max_seq_len" (default, the published protocol): `block_per_row * ceil(max_seq_len / b)`
    pairs, a constant of the model, capped at the example's real pairs real_blocks^2. A short
    example gets proportionally more exact blocks (at max_seq_len 2048, bpr 8, every example of
    at most 22 real blocks, 704 tokens, is exact);
  - "real_length": `block_per_row * real_blocks`, capped the same way, so each example gets
    block_per_row pairs per real block row whatever the model's max_seq_len.
Both are padding-invariant: neither reads how far the batch was padded.

Compared with the published code this takes any length (padding to a multiple of b internally),
caps the budget at the real pairs (the published top-k fails past them), uses the exact per-query
max, takes any head_dim, selects exactly the budget with ties broken by lowest flat index
`row * nb + col`, and runs on CPU.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import ClassVar

import torch

import kernels
from kernels.block_sparse import csr_from_pairs

from .blocks import block_means
from .masking import neg_inf, pad_all_to_multiple
from .registry import (
    Attention,
    AttentionError,
    Backend,
    Choice,
    register_attention,
    require_choice,
    require_ints,
)


class BudgetFrom(Choice):
    """What the exact-block budget is sized from (see the module docstring)."""

    max_seq_len = enum.auto()
    real_length = enum.auto()


@dataclasses.dataclass
class MraOptions:
    """Options shared by MRA-2 and MRA-2-s; the registered name fixes the approximation mode.

    block_size: tokens per block (b).
    block_per_row: exact-block budget per block row; `block_per_row * nb` pairs (at most the
        example's real pairs) are chosen per (batch, head), nb counted as `budget_from` says.
    budget_from: "max_seq_len" (the published protocol): nb = ceil(max_seq_len / block_size),
        one budget for every example; "real_length": nb = the example's blocks holding a real
        token.
    initial_prior_first_n_blocks: the first n block rows and columns are chosen before any
        other pair (global tokens).
    initial_prior_diagonal_n_blocks: a band of n blocks around the diagonal, |row - col| <= n // 2
        as in the published code, is chosen before other pairs.
    input_shape: optional [H, W] grid (H * W = sequence length). Tokens are reordered so that each
        block is a spatial patch (4 x 8 for b = 32; the most square factorisation of b that
        tiles the grid), and reordered back after attention.
    backend: the kernel of the exact blocks (`kernels.block_sparse`): "auto" (the fastest that
        loads: C++ on CPU), "cpp" or "reference"; a named backend that cannot load raises.
    """

    block_size: int = 32
    block_per_row: int = 8
    initial_prior_first_n_blocks: int = 0
    initial_prior_diagonal_n_blocks: int = 0
    input_shape: list[int] | None = None
    backend: Backend = Backend.auto
    budget_from: BudgetFrom = BudgetFrom.max_seq_len

    def __post_init__(self) -> None:
        require_ints("mra", self, block_size=1, block_per_row=1, initial_prior_first_n_blocks=0,
                     initial_prior_diagonal_n_blocks=0)
        require_choice("mra", self, backend=Backend, budget_from=BudgetFrom)
        if self.input_shape is not None:
            grid = list(self.input_shape)
            if len(grid) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in grid
            ):
                raise AttentionError(
                    f"mra: input_shape must be [H, W] with two positive ints, "
                    f"got {self.input_shape!r}"
                )
            patch_shape(grid[0], grid[1], self.block_size)


def patch_shape(height: int, width: int, block_size: int) -> tuple[int, int]:
    """The (rows, cols) patch of block_size tokens that tiles a height x width grid.

    Of the factorisations rows * cols = block_size that divide the grid, the most square wins,
    with rows <= cols on a tie (4 x 8 for 32 tokens, as the published image setting).
    """
    tilings = [(r, block_size // r) for r in range(1, block_size + 1)
               if block_size % r == 0 and height % r == 0 and width % (block_size // r) == 0]
    if not tilings:
        raise AttentionError(
            f"mra: no rows x cols patch of block_size={block_size} tokens tiles the "
            f"input_shape {height} x {width} grid; pick a block_size whose factors divide the grid"
        )
    return min(tilings, key=lambda rc: (abs(rc[0] - rc[1]), rc[0]))


def grid_order(height: int, width: int, block_size: int, device: torch.device) -> torch.Tensor:
    """Permutation (H * W,) from row-major grid order to patch order.

    Position p of the reordered sequence holds grid token order[p]; patches follow each other in
    row-major order, and tokens inside a patch are row-major too.
    """
    rows, cols = patch_shape(height, width, block_size)
    order = torch.arange(height * width, device=device)
    return order.view(height // rows, rows, width // cols, cols).permute(0, 2, 1, 3).flatten()


def prior_tiers(nb: int, first_n: int, diagonal_n: int, device: torch.device) -> torch.Tensor:
    """(nb, nb) int: how many priors each block pair belongs to (0, 1 or 2).

    The published code adds a large constant (5e3) per prior to the logits before top-k; ranking
    by (tier, logit) is the same order without the risk that a logit gap beats the constant.
    """
    idx = torch.arange(nb, device=device)
    tiers = torch.zeros(nb, nb, dtype=torch.long, device=device)
    if diagonal_n > 0:
        tiers += ((idx[:, None] - idx[None, :]).abs() <= diagonal_n // 2).long()
    if first_n > 0:
        first = idx < first_n
        tiers += (first[:, None] | first[None, :]).long()
    return tiers


@torch.no_grad()
def select_blocks(
    low_logits: torch.Tensor,
    valid: torch.Tensor,
    num_selected: int,
    first_n: int = 0,
    diagonal_n: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose exactly `num_selected` (row block, col block) pairs per (batch, head).

    low_logits: (batch, heads, nb, nb) low-resolution logits; valid: bool, broadcastable to it,
    False where the query or key block has no real token.
    Pairs rank by: valid before invalid; then more priors first; then the logit minus its row's
    maximum (so each row's best pair ties at 0); then lowest flat index row * nb + col. The ranking
    is a total order, so exactly num_selected distinct pairs come out, deterministically.
    Returns rows, cols: (batch, heads, num_selected) int64.
    """
    nb = low_logits.shape[-1]
    valid = valid.expand_as(low_logits)
    floor = neg_inf(low_logits.dtype)
    logits = low_logits.masked_fill(~valid, floor)
    score = torch.where(valid, logits - logits.amax(dim=-1, keepdim=True), floor)
    tiers = torch.where(valid, prior_tiers(nb, first_n, diagonal_n, low_logits.device), -1)
    # Lexicographic order by two stable sorts: the minor key first, then the major key.
    by_score = torch.sort(score.flatten(-2), dim=-1, descending=True, stable=True).indices
    by_tier = torch.sort(tiers.flatten(-2).gather(-1, by_score), dim=-1, descending=True,
                         stable=True).indices
    flat = by_score.gather(-1, by_tier[..., :num_selected])
    return flat // nb, flat % nb


def pair_budget(
    has_token: torch.Tensor, block_per_row: int, budget_blocks: int | None
) -> tuple[torch.Tensor, int]:
    """Exact pairs per example, and how many to select for the batch.

    has_token: (batch, nb) bool, the blocks holding a real token. The budget is
    `block_per_row * budget_blocks` (a model constant) or, when budget_blocks is None,
    `block_per_row * real_blocks`; either way at most real_blocks^2, the example's real pairs.
    Returns budget (batch,) int64 and num_selected >= every budget, at most nb^2.
    """
    nb = has_token.shape[-1]
    real_blocks = has_token.sum(dim=-1)  # (batch,)
    sized_from = real_blocks if budget_blocks is None else torch.full_like(real_blocks,
                                                                           budget_blocks)
    budget = torch.minimum(block_per_row * sized_from, real_blocks * real_blocks)
    return budget, min(block_per_row * (nb if budget_blocks is None else budget_blocks), nb * nb)


def mra_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    block_size: int,
    block_per_row: int,
    approx_mode: str,
    first_n: int = 0,
    diagonal_n: int = 0,
    budget_blocks: int | None = None,
    impl=kernels.block_sparse.reference,
) -> torch.Tensor:
    """MRA-2 (approx_mode="full") or MRA-2-s ("sparse") attention.

    q, k, v: (batch, heads, seq, d) with seq a multiple of block_size; mask: (batch, seq) bool.
    budget_blocks: the block count the budget is sized from, `block_per_row * budget_blocks`
        pairs (a constant of the model, the published protocol); None sizes it from each
        example's blocks holding a real token. Either way capped at the example's real pairs.
    impl: a `kernels.block_sparse` backend (the module `kernels.resolve` returns).
    Returns (batch, heads, seq, d); rows with nothing to attend to (padding, or in sparse mode a
    query block with no chosen pair) are zero.
    """
    batch, heads, seq, d = q.shape
    b = block_size
    nb = seq // b
    scale = 1.0 / math.sqrt(d)
    floor = neg_inf(q.dtype)

    # Low resolution: block means over real tokens. q_hat, k_hat: (batch, heads, nb, d).
    q_hat, counts = block_means(q, mask, b)  # counts: (batch, nb)
    k_hat, _ = block_means(k, mask, b)
    low_logits = q_hat @ k_hat.transpose(-1, -2) * scale  # (batch, heads, nb, nb)
    has_token = counts > 0
    valid = (has_token[:, :, None] & has_token[:, None, :])[:, None]  # (batch, 1, nb, nb)

    # The budget never depends on how far the batch was padded: block_per_row per block of the
    # model's length (a constant) or of the example's real blocks, at most all its real pairs.
    # Selection runs for the batch's largest possible budget K; an example keeps the first
    # `budget` of its ranked pairs (real pairs rank first), so its output ignores the rest of
    # the batch.
    budget, num_selected = pair_budget(has_token, block_per_row, budget_blocks)
    rows, cols = select_blocks(low_logits, valid, num_selected, first_n, diagonal_n)
    kept = torch.arange(num_selected, device=q.device) < budget[:, None, None]  # (batch, 1, K)

    # High resolution: one online softmax per query row over its chosen blocks' real keys
    # (kernels.block_sparse; the (K, b, b) logits are never stored by the fused backends).
    # out_hi: (batch, heads, seq, d) normalised over those keys; lse_hi: (batch, heads, seq).
    row_offsets, col_index = csr_from_pairs(rows, cols, kept, nb)
    out_hi, lse_hi = impl.attention(q, k, v, mask, row_offsets, col_index, block_size=b,
                                    scale=scale)
    if approx_mode == "sparse":
        return out_hi
    if approx_mode != "full":
        raise AttentionError(f"mra: approx_mode must be 'full' or 'sparse', got {approx_mode!r}")

    # Low resolution for the pairs not chosen: chosen pairs are replaced, not added to.
    chosen = torch.zeros(batch, heads, nb * nb, dtype=torch.bool, device=q.device)
    chosen = chosen.scatter(-1, rows * nb + cols, kept.expand_as(rows)).view(batch, heads, nb, nb)
    keep = valid & ~chosen
    low_logits = low_logits.masked_fill(~keep, floor)
    lo_max = low_logits.amax(dim=-1, keepdim=True).detach()  # (batch, heads, nb, 1)
    # Each coefficient stands for every real token of its key block, hence the count.
    lo_weights = torch.exp(low_logits - lo_max) * (keep * counts[:, None, None, :])
    v_hat, _ = block_means(v, mask, b)
    lo_numerator = lo_weights @ v_hat  # (batch, heads, nb, d)
    lo_total = lo_weights.sum(dim=-1, keepdim=True)  # (batch, heads, nb, 1)

    # Merge at a common reference, log-sum-exp style: the exact part's row sum is exp(lse_hi)
    # (zero, at lse -inf, for a row with no chosen real key).
    lse_hi = lse_hi.view(batch, heads, nb, b)
    top = torch.maximum(lse_hi.detach(), lo_max)  # (batch, heads, nb, b)
    w_hi, w_lo = torch.exp(lse_hi - top), torch.exp(lo_max - top)
    numerator = out_hi.view(batch, heads, nb, b, d) * w_hi[..., None] \
        + lo_numerator[:, :, :, None, :] * w_lo[..., None]
    normaliser = w_hi + lo_total * w_lo
    out = numerator / torch.where(normaliser > 0, normaliser, 1)[..., None]
    return out.flatten(-3, -2)


class MraAttention(Attention):
    """Shared forward of MRA-2 and MRA-2-s; subclasses fix `approx_mode`.

    Deterministic: block choice depends only on the inputs (no random draws, ties go to the
    lowest flat block index), the same in train and eval; on CUDA the reference backend's
    summation order may vary in the last bits (`kernels.block_sparse.layout.scatter_blocks`).
    The math runs in fp32 (fp64 inputs stay fp64), outside autocast; the output is cast back to
    the input dtype. Block choice carries no gradient; the exact blocks' gradients come from
    the kernel backend (recomputed, flash style, in the fused ones), the rest from autograd.
    """

    approx_mode: ClassVar[str]

    kernel_family = "block_sparse"

    def _attend(self, q, k, v, mask):
        opts = self.options
        seq = q.shape[2]
        order = None
        if opts.input_shape is not None:
            height, width = opts.input_shape
            if height * width != seq:
                raise AttentionError(
                    f"{self.name}: input_shape {height} x {width} = {height * width} tokens "
                    f"does not match the sequence length {seq}"
                )
            order = grid_order(height, width, opts.block_size, q.device)
            q, k, v = (x[:, :, order] for x in (q, k, v))
            mask = mask[:, order]
        # Pad to a block multiple; the new positions are masked padding.
        (q, k, v), padded = pad_all_to_multiple((q, k, v), mask, opts.block_size)
        self.backend_in_use, impl = kernels.resolve("block_sparse", opts.backend, q.device)
        out = mra_attention(
            q, k, v, padded,
            block_size=opts.block_size,
            block_per_row=opts.block_per_row,
            approx_mode=self.approx_mode,
            first_n=opts.initial_prior_first_n_blocks,
            diagonal_n=opts.initial_prior_diagonal_n_blocks,
            budget_blocks=(-(-self.max_seq_len // opts.block_size)
                           if opts.budget_from == "max_seq_len" else None),
            impl=impl,
        )[:, :, :seq]
        if order is not None:
            out = out[:, :, torch.argsort(order)]
        return out


@register_attention("mra2", MraOptions)
class Mra2Attention(MraAttention):
    """MRA-2: exact blocks where chosen, low-resolution block coefficients everywhere else."""

    approx_mode = "full"


@register_attention("mra2_s", MraOptions)
class Mra2SparseAttention(MraAttention):
    """MRA-2-s: exact chosen blocks only; a query block with no chosen pair outputs zero."""

    approx_mode = "sparse"
