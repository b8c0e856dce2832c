"""The GPU backend: torch's own `flex_attention` with a data-dependent BlockMask.

Our CSR pairs become flex's per-(batch, head) key-block lists (`BlockMask.from_kv_blocks`), the
key padding a `mask_mod`, and `return_aux=AuxRequest(lse=True)` gives the log-sum-exp that MRA
merges its low resolution through. torch compiles and differentiates it, so there is no kernel
of ours to maintain. Its backward runs only on CUDA, hence the backend is registered for CUDA
alone; its forward also runs (slowly, eagerly) on the CPU, which the tests use to hold it to the
reference.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention

from .reference import slot_rows

_compiled = torch.compile(flex_attention, dynamic=False)


def load():
    if not torch.cuda.is_available():
        from ..backend import BackendError  # noqa: PLC0415

        raise BackendError("flex needs CUDA; fix: run on a GPU or use backend=cpp/reference")
    return _Backend(compiled=True)


def kv_block_lists(row_offsets: torch.Tensor, col_index: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR -> flex's layout: kv_num_blocks (batch, heads, nb) and kv_indices
    (batch, heads, nb, nb), row r's key blocks first in its row and the rest unused; and the
    (batch, heads, nb, nb) bool table of selected pairs.

    The block lists only let flex skip blocks; what a score may see is the mask_mod's answer
    alone (flex's eager path evaluates nothing else), so the table goes into the mask_mod too.
    """
    nb = row_offsets.shape[-1] - 1
    lead = row_offsets.shape[:-1]
    rows, used = slot_rows(row_offsets, col_index.shape[-1])
    within = torch.arange(col_index.shape[-1], device=col_index.device) - row_offsets.gather(
        -1, rows)
    spare = nb * nb  # unused slots write to one extra column, cut off below
    slots = torch.where(used, rows * nb + within, spare)
    indices = torch.zeros(*lead, spare + 1, dtype=torch.int32, device=col_index.device)
    indices = indices.scatter(-1, slots, col_index.to(torch.int32))[..., :spare]
    pairs = torch.where(used, rows * nb + col_index, spare)
    selected = torch.zeros(*lead, spare + 1, dtype=torch.bool, device=col_index.device)
    selected = selected.scatter(-1, pairs, True)[..., :spare]
    counts = (row_offsets[..., 1:] - row_offsets[..., :-1]).to(torch.int32)
    return counts, indices.view(*lead, nb, nb), selected.view(*lead, nb, nb)


class _Backend:
    def __init__(self, compiled: bool):
        self.flex = _compiled if compiled else flex_attention

    def attention(self, q, k, v, key_real, row_offsets, col_index, *, block_size: int,
                  scale: float):
        seq = q.shape[2]
        counts, indices, selected = kv_block_lists(row_offsets, col_index)

        def allowed(b, h, q_idx, kv_idx):
            return key_real[b, kv_idx] & selected[b, h, q_idx // block_size, kv_idx // block_size]

        mask = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=block_size,
                                        mask_mod=allowed, seq_lengths=(seq, seq))
        out, aux = self.flex(q, k, v, block_mask=mask, scale=scale,
                             return_aux=AuxRequest(lse=True))
        # A row with no real key: flex leaves out = 0 and lse = -inf, as the reference does.
        return out, aux.lse
