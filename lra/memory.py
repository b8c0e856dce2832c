"""Peak tensor memory of a stretch of work, on CUDA or on the CPU, comparable between runs.

The figure is the peak growth of live tensor memory over what was live at `start()`:

CUDA: torch's own allocator statistics (`max_memory_allocated` since a reset, minus
    `memory_allocated` at the reset): bytes of live tensors, not the allocator's cache.
CPU:  torch keeps no CPU allocator statistics, so the same count is taken at the dispatcher: while
    measuring, every op's newly allocated output storage is added to a live-byte count and taken
    off again when that storage is freed (a weak-reference finalizer on it). Views and in-place
    results share a storage of their inputs and are not new. The count is of tensor bytes only,
    the same whatever the process ran before: the resident set (the earlier measure) kept what
    earlier jobs had freed, so two runs of one configuration in a multirun differed twofold.
    Counting costs Python work on every op, so measured stretches should not also be timed.

`start()` begins a measurement, `stop()` ends it (a no-op on CUDA), `peak_mb()` reads the peak so
far; `with PeakMemory(device) as memory:` does start and stop.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _storages(tree) -> dict[int, torch.UntypedStorage]:
    """The CPU storages of the dense tensors in a pytree of op arguments or results, by address."""
    return {t.untyped_storage()._cdata: t.untyped_storage() for t in tree_leaves(tree)
            if isinstance(t, torch.Tensor) and t.device.type == "cpu"
            and t.layout == torch.strided}


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of CPU storages allocated by ops while active, until each is freed."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = _storages((args, kwargs))
        for key, storage in _storages(out).items():  # by address: one entry per storage
            if key in inputs:  # a view or an in-place result: no new memory
                continue
            nbytes = storage.nbytes()
            self.live += nbytes
            # Storages keep their Python object while alive, so this fires when the memory goes.
            weakref.finalize(storage, self._freed, nbytes)
        self.peak = max(self.peak, self.live)
        return out


class PeakMemory:
    """`start()`, the work, then `peak_mb()`: the peak growth of live tensor memory over start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_live_tensor_bytes"
        self.base = 0.0
        self.counter: LiveTensorBytes | None = None
        self._peak = 0.0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
            return
        self.stop()
        self.counter = LiveTensorBytes()
        self.counter.__enter__()

    def stop(self) -> None:
        """End a CPU measurement (the peak stays readable); nothing to do on CUDA."""
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self._peak = self.counter.peak / 2**20
            self.counter = None

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return max(0.0, torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base)
        return self.counter.peak / 2**20 if self.counter is not None else self._peak

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
