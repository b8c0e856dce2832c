"""Efficiency: time and memory of every (attention, backend) over lengths and batch sizes, and
the length at which each overtakes exact attention (`softmax`, torch's SDPA).

Each series (attention, backend) runs in a fresh process when the profile isolates (`series`
prints one JSON line per cell, so a process killed mid-series still reports the cells it
finished); after an OOM at one length, or a cell over half the profile's time limit
(`cell_limit_s`, `--cell-limit`), the longer lengths of that batch size are skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from time import perf_counter

import torch

import kernels
from attention_zoo import attention_class, build_attention, make_options
from attention_zoo.structured import structured_qkv

from .measure import failure_status, measure, unmeasured
from .profiles import describe

COLUMNS = ["attention", "backend", "options", "device", "dtype", "batch", "heads", "seq_len",
           "head_dim", "fwd_ms", "fwd_bwd_ms", "peak_memory_mb", "status"]
REFERENCE = "softmax"


def backends(name: str, device: str, which: str) -> list[str]:
    """The kernel backends to measure: every one that loads ("all") or auto's pick ("auto");
    ["-"] for a pure-PyTorch attention."""
    family = attention_class(name).kernel_family
    if not family:
        return ["-"]
    found = kernels.available_backends(family, device)
    return found if which == "all" else found[:1]


def timed_options(name: str) -> dict:
    """Attention dropout (a training-time protocol of softmax and Longformer) is off: the study
    times each method's own work, and dropout would also move SDPA off its fused kernel."""
    return {"dropout": 0.0} if hasattr(make_options(name), "dropout") else {}


def which_cell(name: str, backend: str, device: str, batch: int, heads: int, seq: int,
               head_dim: int) -> dict:
    """The columns of efficiency.csv that say which cell a row is; its figures follow."""
    return {"attention": name, "backend": backend, "options": describe(name, timed_options(name)),
            "device": device, "dtype": "float32", "batch": batch, "heads": heads,
            "seq_len": seq, "head_dim": head_dim}


def cell(name: str, backend: str, batch: int, heads: int, seq: int, head_dim: int,
         device: str, repeats: int, limit_s: float | None = None) -> dict:
    """One row of efficiency.csv. Each of its two timers stops repeating past a quarter of the
    cell limit limit_s, so that the timed calls take about half of it at most."""
    row = which_cell(name, backend, device, batch, heads, seq, head_dim)
    torch.manual_seed(0)
    options = {**timed_options(name), **({} if backend == "-" else {"backend": backend})}
    try:
        attn = build_attention(name, num_heads=heads, head_dim=head_dim, max_seq_len=seq,
                               **options).to(device)
    except Exception as err:  # noqa: BLE001 - recorded as the cell's status
        return unmeasured(row, failure_status(err))
    q, k, v = (x.to(device) for x in structured_qkv(batch, heads, seq, head_dim))
    if attn.needs_shared_qk:
        k = q
    mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
    budget_s = None if limit_s is None else limit_s / 4
    return {**row, **measure(attn, q, k, v, mask, repeats, budget_s)}


def series(name: str, backend: str, lengths, batches, heads: int, head_dim: int, device: str,
           repeats: int, limit_s: float | None = None) -> Iterator[dict]:
    """Every cell of one (attention, backend), shortest length first per batch size. After an
    OOM, or after a cell that took over half of limit_s seconds (the next, at least twice as
    long, would pass the limit), the longer lengths of that batch size are skipped; the status
    says why."""
    for batch in batches:
        stop = None  # why the longer lengths are skipped
        for seq in lengths:
            if stop is not None:
                yield unmeasured(which_cell(name, backend, device, batch, heads, seq, head_dim),
                                 f"skipped: {stop}")
                continue
            begin = perf_counter()
            row = cell(name, backend, batch, heads, seq, head_dim, device, repeats, limit_s)
            took = perf_counter() - begin
            if row["status"] == "oom":
                stop = f"oom at n={seq}"
            elif limit_s is not None and 2 * took > limit_s:
                # No method's cost falls with length: the next cell would take at least 2x.
                stop = f"n={seq} took {took:.0f} s; longer would pass the {limit_s:g} s cell limit"
            yield row


def series_in_worker(name: str, backend: str, args: list[str], planned: list[dict],
                     ) -> list[dict]:
    """`series` in a fresh `python -m lra.bench --worker efficiency ...` process. Cells the
    process did not report (it crashed or was killed) get status "crashed: <why>"."""
    cmd = [sys.executable, "-m", "lra.bench", *args, "--worker", "efficiency", name, backend]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if len(rows) < len(planned):
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        why = tail[0] if proc.returncode >= 0 else f"killed by signal {-proc.returncode}"
        rows += [unmeasured(p, f"crashed: {why}") for p in planned[len(rows):]]
    return rows


def crossover(rows: list[dict], metric: str) -> dict[tuple, str]:
    """(attention, backend, batch) -> the shortest measured length from which on it beats
    `softmax` in `metric` at every longer measured length ("none up to N" when it never does).
    A length where softmax failed (OOM) and the method did not counts as a win."""
    ok = {(r["attention"], r["backend"], r["batch"], r["seq_len"]): r[metric]
          for r in rows if r["status"] == "ok"}
    result = {}
    for key in sorted({(r["attention"], r["backend"], r["batch"]) for r in rows}):
        lengths = sorted({r["seq_len"] for r in rows if (r["attention"], r["backend"],
                                                        r["batch"]) == key})
        wins = []
        for seq in lengths:
            ours, ref = ok.get((*key, seq)), ok.get((REFERENCE, "-", key[2], seq))
            wins.append(ours is not None and (ref is None or ours < ref))
        first = next((i for i in range(len(wins)) if all(wins[i:])), None)
        result[key] = f"none up to {lengths[-1]}" if first is None else str(lengths[first])
    return result
