"""The measured effect of each YOSO protocol option (the DEVIATIONS.md rows), and its time.

    python tools/measure_yoso.py [--seq 512] [--long 2048] [--timing 4096] [--repeats 3]
                                 [--timing-only]

Each figure compares the published default with the alternative on locality-structured inputs
(attention_zoo.structured, 2 x 4 heads x 32 unless said), fp64, the same module seed:
  - backward: ||dq||, ||dk|| of v1 over those of v2 (mean over 8 draws; one output gradient);
  - backward_slots: at --long keys, the relative change ||dq_1024 - dq_all|| / ||dq_all|| for the
    same hash draw, and the norm ratio;
  - hash: the collision rate of the Hadamard hash over (1 - arccos(q.k) / pi)^tau at a few q.k
    (tau 12, head_dim 64, 64 pairs x 20,000 rounds), and the output's error against the exact
    expected output normalize(B v) for each hash (mean over 8 draws);
  - redraw: how far two eval calls differ, ||out_1 - out_2|| / ||out_1||;
  - the published kernel's 32-entry interpolation tables for the v2 weight against the exact
    weight (ours), max and median relative error over q.k in [-1, 1] at tau 10, 11, 12.
--timing n: forward+backward of yoso (cpp, default and backward_slots=null) against softmax
(SDPA) at the MRA paper's setting (batch 1, 12 heads x 64, fp32), alternating in one process,
median of --repeats after a warm-up; the ratio is what to quote on a loaded machine. Then each
C++ op of that forward+backward on the same inputs (the forward and dv cumulations, the v2 dq and
dk cumulations at the published 1,024 slots), fastest of --repeats. --timing-only skips the
effects.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import kernels
from attention_zoo import build_attention
from attention_zoo.structured import padded_qkv, structured_qkv
from attention_zoo.yoso import hadamard_planes
from kernels.lsh import simhash_codes

HEADS, DIM = 4, 32


def make(seq: int, seed: int = 0, **options):
    return build_attention("yoso", num_heads=HEADS, head_dim=DIM, max_seq_len=seq, seed=seed,
                           **options).double()


def grads(attn, q, k, v, mask, weight):
    q, k, v = (x.clone().requires_grad_(True) for x in (q, k, v))
    out = attn(q, k, v, mask)
    return out.detach(), torch.autograd.grad((out * weight).sum(), (q, k, v))


def inputs(seq: int, lengths: list[int]):
    q, k, v, mask = padded_qkv(lengths, HEADS, seq, DIM, structured=True, seed=1)
    q, k, v = q.double(), k.double(), v.double()
    weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(2), dtype=q.dtype)
    return q, k, v, mask, weight


def backward_estimators(seq: int, draws: int = 8) -> str:
    q, k, v, mask, weight = inputs(seq, [seq, seq * 3 // 4])
    norms = {}
    for estimator in ("v2", "v1"):
        attn = make(seq, backward=estimator).train()
        per = [grads(attn, q, k, v, mask, weight)[1] for _ in range(draws)]
        norms[estimator] = [statistics.mean(g[i].norm().item() for g in per) for i in range(2)]
    ratio = [a / b for a, b in zip(norms["v1"], norms["v2"], strict=True)]
    return f"backward v1/v2 at n={seq}: ||dq|| {ratio[0]:.2f}, ||dk|| {ratio[1]:.2f}"


def workspace(seq: int) -> str:
    q, k, v, mask, weight = inputs(seq, [seq, seq * 3 // 4])
    results = {}
    for slots in (1024, None):
        attn = make(seq, backward_slots=slots).train()
        results[slots] = grads(attn, q, k, v, mask, weight)[1]
    lines = []
    for i, name in ((0, "dq"), (1, "dk")):
        capped, full = results[1024][i], results[None][i]
        change = ((capped - full).norm() / full.norm()).item()
        lines.append(f"{name} change {change:.3f}, norm ratio {capped.norm() / full.norm():.3f}")
    return f"backward_slots 1024 vs null at n={seq}: " + "; ".join(lines)


def hash_collisions(cosines=(0.95, 0.8, 0.6, 0.3), tau: int = 12, d: int = 64, pairs: int = 64,
                    rounds: int = 20000) -> str:
    gen = torch.Generator().manual_seed(3)
    planes = hadamard_planes(gen, 1, rounds, d, tau).double()
    parts = []
    for cos in cosines:
        q = F.normalize(torch.randn(pairs, d, generator=gen, dtype=torch.float64), dim=-1)
        ortho = torch.randn(pairs, d, generator=gen, dtype=torch.float64)
        ortho = F.normalize(ortho - (ortho * q).sum(-1, keepdim=True) * q, dim=-1)
        k = cos * q + math.sqrt(1 - cos**2) * ortho
        same = simhash_codes(q[None, None], planes) == simhash_codes(k[None, None], planes)
        expected = (1 - math.acos(cos) / math.pi) ** tau
        parts.append(f"q.k {cos}: {same.double().mean().item() / expected:.3f}")
    return "hadamard collision rate / (1 - arccos/pi)^tau: " + ", ".join(parts)


def hash_error(seq: int, draws: int = 8) -> str:
    q, k, v, mask, _ = inputs(seq, [seq, seq])
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    tau = make(seq).example_bits(mask)[0].item()
    exact = F.normalize((1 - torch.arccos((qn @ kn.transpose(-1, -2)).clamp(-1, 1)) / math.pi)
                        ** tau @ v, dim=-1)
    parts = []
    for family in ("hadamard", "gaussian"):
        attn = make(seq, hash=family).eval()
        errors = [((attn(q, k, v, mask) - exact).norm() / exact.norm()).item()
                  for _ in range(draws)]
        parts.append(f"{family} {statistics.mean(errors):.3f}")
    return f"output error vs normalize(B v) at n={seq}, tau {tau}: " + ", ".join(parts)


def eval_noise(seq: int) -> str:
    q, k, v, mask, _ = inputs(seq, [seq, seq * 3 // 4])
    parts = []
    for redraw in ("every_forward", "training_steps"):
        attn = make(seq, redraw=redraw).eval()
        a, b = attn(q, k, v, mask), attn(q, k, v, mask)
        parts.append(f"{redraw} {((a - b).norm() / a.norm()).item():.3f}")
    return f"two eval calls differ by (n={seq}): " + ", ".join(parts)


def published_weight(sim: torch.Tensor, tau: int) -> torch.Tensor:
    """The v2 weight as the published CUDA kernel evaluates it: arccos, 1 / sqrt(1 - x^2 + 1e-6)
    and the power from 32-entry tables with linear interpolation, each clipped at 10."""
    grid = torch.arange(32, dtype=torch.float64) / 31
    acos_table = torch.arccos(2 * grid - 1) / math.pi
    inv_sqrt_table = (1 / torch.sqrt(grid + 1e-6)).clamp_max(10)
    pow_table = ((grid + 1e-6) ** (tau - 1)).clamp_max(10)

    def interpolate(table, position):
        low = position.floor().long().clamp(0, 30)
        frac = position - low
        return (1 - frac) * table[low] + frac * table[low + 1]

    x = 0.99 * sim
    inv_sqrt = interpolate(inv_sqrt_table, (1 - x * x) * 31)
    scaled_acos = 1 - interpolate(acos_table, (1 + x) * 31 / 2)
    return tau * interpolate(pow_table, scaled_acos * 31) / math.pi * inv_sqrt


def weight_tables() -> str:
    from kernels.lsh.reference import v2_weight

    sim = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    parts = []
    for tau in (10, 11, 12):
        exact = v2_weight(sim, torch.tensor(float(tau), dtype=torch.float64))
        rel = ((published_weight(sim, tau) - exact).abs() / exact).nan_to_num()
        rel = rel[sim > 0]  # where the weight matters (it is below 1e-3 of its peak for q.k < 0)
        parts.append(f"tau {tau}: max {rel.max():.2f}, median {rel.median():.3f}")
    return "published weight tables vs exact, relative error for q.k > 0: " + ", ".join(parts)


def timing(seq: int, repeats: int) -> str:
    heads, d = 12, 64
    q, k, v = structured_qkv(1, heads, seq, d, seed=1)
    mask = torch.ones(1, seq, dtype=torch.bool)
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    # no attention dropout: the published 0.1 would time the mask, off SDPA's fused kernel
    runs = {"softmax (SDPA)": build_attention("softmax", num_heads=heads, head_dim=d,
                                              max_seq_len=seq, dropout=0.0)}
    for slots in (1024, None):
        runs[f"yoso cpp, backward_slots={slots}"] = build_attention(
            "yoso", num_heads=heads, head_dim=d, max_seq_len=seq, seed=0, backend="cpp",
            backward_slots=slots)
    times = {name: [] for name in runs}
    for rep in range(repeats + 1):  # the first round warms up
        for name, attn in runs.items():
            x = [t.clone().requires_grad_(True) for t in (q, k, v)]
            start = time.perf_counter()
            (attn.train()(*x, mask) * g).sum().backward()
            if rep:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["softmax (SDPA)"])
    return "\n".join(f"  {name}: {statistics.median(t) * 1e3:,.0f} ms = "
                     f"{statistics.median(t) / base:.2f}x SDPA" for name, t in times.items())


def kernel_ops(seq: int, repeats: int) -> str:
    """ms of each lra_lsh op of yoso's forward+backward at the timing setting."""
    kernels.resolve("lsh", "cpp", "cpu")  # built and registered once per process
    heads, d = 12, 64
    attn = build_attention("yoso", num_heads=heads, head_dim=d, max_seq_len=seq, seed=0)
    q, k, v = structured_qkv(1, heads, seq, d, seed=1)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    planes = attn.draw_planes(0)
    qc, kc = simhash_codes(q, planes), simhash_codes(k, planes)
    bits, ops = attn.example_bits(torch.ones(1, seq, dtype=torch.bool)), torch.ops.lra_lsh
    calls = {
        "forward cumulation": lambda: ops.cumulation(qc, kc, v),
        "dv cumulation": lambda: ops.cumulation(kc, qc, g),
        "dq, v2 (1,024 slots)": lambda: ops.weighted_cumulation(qc, q, g, kc, v, k, bits, "v2",
                                                                1024, 7),
        "dk, v2 (1,024 slots)": lambda: ops.weighted_cumulation(kc, k, v, qc, g, q, bits, "v2",
                                                                1024, 7),
    }
    lines = []
    for name, call in calls.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        lines.append(f"  {name}: {min(times) * 1e3:,.0f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=512, help="length for the effects")
    parser.add_argument("--long", type=int, default=2048, help="length for backward_slots")
    parser.add_argument("--timing", type=int, default=0, help="time at this length (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timing-only", action="store_true", help="skip the effects")
    args = parser.parse_args()
    if not args.timing_only:
        for line in (backward_estimators(args.seq), workspace(args.long), hash_collisions(),
                     hash_error(args.seq), eval_noise(args.seq), weight_tables()):
            print(line, flush=True)
    if args.timing:
        print(f"fwd+bwd at n={args.timing}, batch 1, 12 x 64, fp32:", flush=True)
        print(timing(args.timing, args.repeats), flush=True)
        print(f"its C++ ops (one call each, fastest of {args.repeats}):", flush=True)
        print(kernel_ops(args.timing, args.repeats), flush=True)


if __name__ == "__main__":
    main()
