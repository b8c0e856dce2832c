"""Block-sparse exact attention: MRA's high-resolution part as one fused op.

    name, impl = kernels.resolve("block_sparse", "auto", q.device)
    out, lse = impl.attention(q, k, v, key_real, row_offsets, col_index,
                              block_size=32, scale=d ** -0.5)

Shapes and semantics: `reference.py` (the oracle). Pairs come in CSR order (`csr_from_pairs`).
Backends, in the order "auto" tries them: "cpp" (CPU, C++/OpenMP), "flex" (CUDA, torch's
flex_attention, compiled by torch), "reference" (anywhere).
"""

from __future__ import annotations

import importlib

from ..backend import register
from . import reference
from .layout import csr_from_pairs, from_blocks, gather_blocks, scatter_blocks, to_blocks

register("block_sparse", "cpp", ("cpu",), lambda: importlib.import_module(".cpu", __name__).load())
register("block_sparse", "flex", ("cuda",),
         lambda: importlib.import_module(".flex", __name__).load())
register("block_sparse", "reference", ("cpu", "cuda"), lambda: reference)

__all__ = ["csr_from_pairs", "from_blocks", "gather_blocks", "reference", "scatter_blocks",
           "to_blocks"]
