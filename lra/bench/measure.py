"""Time and peak tensor memory of one attention call, and failures as statuses.

Time: one warm-up call (libraries, thread pools, kernel builds), then `repeats` timed calls, or
fewer once the timed calls sum past `budget_s` (at least one: a call that takes seconds needs no
five-fold median, and the slow oracles' long cells are what made the default study pass 20
minutes); on CUDA each is timed by a pair of CUDA events (the GPU's own clock, no host sync
inside the work), on CPU by the wall clock. The rows report the median; `timer` returns every
repeat so that a check can also use the minimum, which a loaded machine inflates least.
Memory: the peak growth of live tensor bytes over the inputs during one forward+backward
(`lra.memory.PeakMemory`: torch.cuda.max_memory_allocated on CUDA; on CPU every storage an op
allocates, counted at the dispatcher until freed). A separate, untimed pass: counting slows ops.
Status: "ok"; "oom" when the allocator gives up; "unsupported: ..." when the method refuses the
input (an AttentionError, e.g. a length over its limit); "error: ..." for anything else. A
failed cell never stops the study.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from time import perf_counter

import torch

from attention_zoo import AttentionError

from ..memory import PeakMemory

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def timer(fn: Callable[[], object], repeats: int, device: str, *, warm_up: bool = True,
          budget_s: float | None = None) -> list[float]:
    """Milliseconds of each of `repeats` calls of fn (after one warm-up call unless fn is warm),
    stopping early once the calls sum past budget_s seconds (None: never)."""
    if warm_up:
        fn()
    times: list[float] = []
    while len(times) < repeats and (budget_s is None or sum(times) < 1000 * budget_s):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = perf_counter()
            fn()
            times.append(1000 * (perf_counter() - begin))
    return times


def failure_status(err: BaseException) -> str:
    """The status of a failed cell: oom, unsupported: <why>, or error: <type: message>."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, torch.OutOfMemoryError) or "not enough memory" in message \
            or "out of memory" in message.lower():
        return "oom"
    if isinstance(err, AttentionError):
        return f"unsupported: {message}"
    return f"error: {type(err).__name__}: {message}"


def unmeasured(row: dict, status: str) -> dict:
    """`row` without figures (the cell failed, was skipped or its process died), saying why."""
    return {**row, "fwd_ms": "", "fwd_bwd_ms": "", "peak_memory_mb": "", "status": status}


def measure(attend: Attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor, repeats: int, budget_s: float | None = None) -> dict:
    """fwd_ms (no autograd), fwd_bwd_ms and peak_memory_mb of `attend(q, k, v, mask)`, and a
    status. q, k, v: (batch, heads, seq, head_dim) on the device; leaves get gradients.
    budget_s: each timer's budget (see `timer`)."""
    device = q.device.type
    try:
        leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
        if k is q:  # a shared-qk method: one leaf for both, as the encoder feeds it
            leaves[1] = leaves[0]
        grad = torch.randn_like(q)

        def forward():
            with torch.no_grad():
                attend(*leaves, mask)

        def forward_backward():
            attend(*leaves, mask).backward(grad)
            for leaf in leaves:
                leaf.grad = None

        fwd = timer(forward, repeats, device, budget_s=budget_s)
        forward_backward()  # the backward's warm-up, before its memory is counted
        with PeakMemory(q.device) as memory:
            forward_backward()
        peak = memory.peak_mb()
        fwd_bwd = timer(forward_backward, repeats, device, warm_up=False, budget_s=budget_s)
    except Exception as err:  # noqa: BLE001 - every failure becomes the cell's status
        if device == "cuda":
            torch.cuda.empty_cache()
        return unmeasured({}, failure_status(err))
    return {"fwd_ms": statistics.median(fwd), "fwd_bwd_ms": statistics.median(fwd_bwd),
            "peak_memory_mb": peak, "status": "ok"}
