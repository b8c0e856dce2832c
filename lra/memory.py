"""Peak memory of a stretch of work, on CUDA or on the CPU.

CUDA: torch's own allocator statistics (`max_memory_allocated` since a reset).
CPU: the process's resident set. Linux lets a process reset its high-water mark (VmHWM) by
writing 5 to /proc/self/clear_refs, so the peak of one stretch is VmHWM at its end minus VmRSS at
its start. Freed tensors only leave the resident set if the C allocator returns them to the
system: glibc does for allocations above MALLOC_MMAP_THRESHOLD_, which the benchmark workers fix at
64 KiB (by default the threshold grows after the first large free and memory is kept).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {key}")


class PeakMemory:
    """`start()` then `peak_mb()`: the peak growth over the memory in use at start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_growth"
        self.base = 0.0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current resident set
            except OSError as err:
                # Then VmHWM is the process's lifetime peak, which may predate start().
                log.warning("cannot reset the peak resident set (%s); CPU peak memory is the "
                            "process's lifetime peak minus the resident set at start", err)
                self.kind = "cpu_lifetime_peak_rss_growth"
            self.base = _status_mb("VmRSS")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = _status_mb("VmHWM")
        return max(0.0, peak - self.base)
