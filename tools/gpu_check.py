"""Every GPU path in one call, for a session that is lent a CUDA device (no test needs one).

    python tools/gpu_check.py [--out results/bench/gpu] [--lengths 4096 8192 16384]

1. Correctness on CUDA, each GPU backend against its reference backend on the same device,
   forward and the gradients of q, k, v, fp32, random inputs with padding: block_sparse `flex`
   (MRA's exact blocks) and lsh `triton` (YOSO, v2 with and without the 1,024-slot cap, v1).
   Relative error, max |ours - reference| / max |reference|; the bar is 1e-5 (bf16: 1e-2).
2. The training loop on CUDA: the AMP differences of DEVIATIONS.md's "AMP on CUDA" row (fp16
   with a GradScaler and bf16 against fp32, logits and gradients of the small model at init,
   tools/protocol_effects.py's measure under CUDA autocast), then one `trainer=smoke` run on
   mini ListOps per kernel-backed attention (mra2, yoso) under the default fp16 AMP, which must
   finish with a finite loss.
3. The paper setting on the GPU (`python -m lra.bench --device cuda --profile paper`) for
   softmax, softmax_naive and the kernel-backed attentions, every backend, with the roofline,
   written to --out.
Prints one line per check and exits non-zero if a check fails; the bench's own README.md in
--out holds the timings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch
import torch.nn.functional as F
from protocol_effects import amp_differences  # tools/, this script's folder

import kernels
from kernels.block_sparse import csr_from_pairs
from kernels.lsh import simhash_codes

DEVICE = "cuda"


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def fwd_bwd(fn, leaves, grad) -> list[torch.Tensor]:
    """[out, *grads of leaves] of fn(*leaves) for the output gradient grad."""
    leaves = [x.clone().requires_grad_(True) for x in leaves]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach(), *(x.grad for x in leaves)]


def block_sparse_problem(seq=1000, d=64, block=32, per_row=8, heads=4, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    nb = -(-seq // block)
    q, k, v = (torch.randn(2, heads, nb * block, d, generator=gen, dtype=dtype) for _ in range(3))
    key_real = torch.arange(nb * block)[None, :] < torch.tensor([[seq], [seq * 2 // 3]])
    pairs = min(per_row * nb, nb * nb)
    flat = torch.stack([torch.stack([torch.randperm(nb * nb, generator=gen)[:pairs]
                                     for _ in range(heads)]) for _ in range(2)])
    csr = csr_from_pairs(flat // nb, flat % nb, torch.ones_like(flat, dtype=torch.bool), nb)
    return [x.to(DEVICE) for x in (q, k, v)], [x.to(DEVICE) for x in (key_real, *csr)], block


def check_block_sparse(dtype) -> float:
    (q, k, v), (key_real, offsets, cols), block = block_sparse_problem(dtype=dtype)
    grad = torch.randn_like(q)
    results = []
    for backend in ("flex", "reference"):
        _, impl = kernels.resolve("block_sparse", backend, DEVICE)

        def attend(q, k, v, impl=impl):
            return impl.attention(q, k, v, key_real, offsets, cols, block_size=block,
                                  scale=q.shape[-1] ** -0.5)[0]

        leaves = (q, k, v) if backend == "flex" else (q.float(), k.float(), v.float())
        results.append(fwd_bwd(attend, leaves, grad if backend == "flex" else grad.float()))
    return max(relative(a, b) for a, b in zip(*results, strict=True))


def check_lsh(estimator: str, slots: int, dtype, n: int = 1500) -> float:
    gen = torch.Generator().manual_seed(1)
    batch, heads, d, tau, rounds = 2, 4, 64, 10, 8
    q, k, v, g = (torch.randn(batch, heads, n, d, generator=gen) for _ in range(4))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    planes = torch.randn(heads, rounds, d, tau, generator=gen)
    q_codes, k_codes = simhash_codes(q, planes), simhash_codes(k, planes)
    k_codes[:, 1, :, n * 2 // 3:] = 2**tau  # the second example's padded keys: a trash bucket
    v[1, :, n * 2 // 3:] = 0
    bits = torch.full((batch,), tau)
    q, k, v, g, q_codes, k_codes, bits = (x.to(DEVICE) for x in (q, k, v, g, q_codes, k_codes,
                                                                  bits))
    results = []
    for backend in ("triton", "reference"):
        _, impl = kernels.resolve("lsh", backend, DEVICE)
        leaves = (q, k, v) if backend == "reference" else (q.to(dtype), k.to(dtype), v.to(dtype))

        def attend(q, k, v, impl=impl):
            return impl.lsh_cumulation(q, k, v, q_codes, k_codes, bits, 2**tau + 1, estimator,
                                       slots, 7)

        results.append(fwd_bwd(attend, leaves, g.to(leaves[0].dtype)))
    return max(relative(a, b) for a, b in zip(*results, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench/gpu")
    parser.add_argument("--lengths", nargs="+", default=["4096", "8192", "16384"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check")
        return 1
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    failed = False
    checks = [(f"block_sparse flex {dtype}", lambda dtype=dtype: check_block_sparse(dtype), bar)
              for dtype, bar in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2))]
    checks += [(f"lsh triton {est} slots={slots} {dtype}",
                lambda est=est, slots=slots, dtype=dtype: check_lsh(est, slots, dtype), bar)
               for est, slots in (("v2", 1024), ("v2", 0), ("v1", 0))
               for dtype, bar in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2))]
    for name, check, bar in checks:
        try:
            err = check()
            ok = err < bar
            print(f"{'ok  ' if ok else 'FAIL'} {name}: relative error {err:.2e} (bar {bar:g})",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - every check reports, one failure stops none
            ok = False
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
        failed |= not ok
    for name, (logits, grad) in amp_differences(device=DEVICE).items():
        print(f"amp on cuda, {name}: relative difference from fp32 of logits {logits:.1e}, "
              f"gradient {grad:.1e}", flush=True)
    for attention in ("mra2", "yoso"):
        train = [sys.executable, "-m", "lra.train", "task=listops", f"attention={attention}",
                 "data=mini", "trainer=smoke", "trainer.device=cuda", "tag=gpu-check",
                 f"runs_dir={args.out}/runs"]
        print("train:", " ".join(train[1:]), flush=True)
        failed |= subprocess.run(train, check=False).returncode != 0
    bench = [sys.executable, "-m", "lra.bench", "--device", DEVICE, "--profile", "paper",
             "--attentions", "softmax", "softmax_naive", "mra2", "mra2_s", "yoso", "yoso_conv",
             "--backends", "all", "--parts", "efficiency", "roofline", "--lengths",
             *args.lengths, "--out", args.out]
    print("bench:", " ".join(bench[1:]), flush=True)
    failed |= subprocess.run(bench, check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
