"""kernels: fused implementations of the attention zoo's hot paths.

Laid out like flash-linear-attention's `fla/ops/<method>/`: each op family is a folder holding
`reference.py` (plain PyTorch, obviously right, fp64-capable: the oracle) and its fast paths beside
it, and the tests hold every fast path to the reference.

    kernels/block_sparse/   MRA's exact blocks: online softmax over selected (row, col) blocks
    kernels/lsh/            YOSO's hashing and bucket cumulation

Backends are chosen by name (`kernels.backend.resolve`): "reference", "cpp" (C++/OpenMP, compiled
just in time with ninja into the torch extensions cache), and GPU paths where a device has them.
"auto" takes the fastest that loads for the device and falls back to the reference with one
logged warning that names the reason and the fix; a backend asked for by name that cannot load
raises. This package imports nothing from the rest of the project.
"""

# Importing a family registers its backends, so that `resolve` knows every family.
from . import block_sparse, lsh  # noqa: F401
from .backend import BackendError, available_backends, resolve

__all__ = ["BackendError", "available_backends", "resolve"]
