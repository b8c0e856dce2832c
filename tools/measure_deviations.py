"""Measure what each attention protocol option changes (DEVIATIONS.md, section Attentions).

For every row of ROWS, builds the attention with the option at its default (the published
protocol) and at its alternative, and measures one figure for each, on structured inputs
(attention_zoo/structured.py, peaked and local) and on Gaussian inputs, n = 512 with 384 real
tokens in the second example (as in the reference notes), heads 2 x head_dim 32, mean over seeds:

  error   relative Frobenius error of the output against exact softmax over the real rows
          (eval mode: the first draw of a redrawn method);
  train   the same in training mode (attention dropout on);
  change  relative change of the output between two consecutive training calls (0 when the
          random draws stay fixed);
  params  parameters of a 2-layer encoder's attention modules (tied ones counted once).

A row whose option is None compares ours with a published bug, emulated through our module by
the HARNESS entry its alternative column names.

    python tools/measure_deviations.py            # the markdown table, about a minute on CPU
    python tools/measure_deviations.py --seeds 5 --attentions mra2 mra2_s
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention_zoo import build_attention  # noqa: E402
from attention_zoo.structured import padded_qkv, relative_error  # noqa: E402
from lra.model import AttentionSpec, Encoder, ModelConfig  # noqa: E402

SEQ, LENGTHS, HEADS, HEAD_DIM = 512, (512, 384), 2, 32

# (attention, option, default = published, alternative, metric, max_seq_len, fixed options)
ROWS = [
    ("mra2", "budget_from", "max_seq_len", "real_length", "error", 512, {}),
    ("mra2_s", "budget_from", "max_seq_len", "real_length", "error", 512, {}),
    ("reformer", "buckets_from", "max_seq_len", "real_length", "error", 4096, {}),
    ("reformer", "redraw_every", 1, None, "change", 512, {}),
    ("bigbird", "redraw_every", 1, None, "change", 512, {}),
    ("linformer", "init", "gaussian", "pooling", "error", 512, {}),
    ("linformer", "share_across_layers", True, False, "params", 512, {}),
    ("scatterbrain", "num_features", None, 256, "error", 512, {"feature_map": "hyperbolic"}),
    ("scatterbrain", "feature_map", "hyperbolic", "positive", "error", 512,
     {"num_features": 256}),
    ("softmax", "dropout", 0.1, 0.0, "train", 512, {}),
    ("longformer", "dropout", 0.1, 0.0, "train", 512, {}),
    ("performer", None, "ours", "harness performer", "error", 512, {}),
    ("performer", None, "ours", "padded keys counted", "error", 512, {}),
]


def padded_keys_counted(attn, q, k, v, mask):
    """Padded keys kept as zero vectors (the harness zeroes k and v there): their features
    phi(0) != 0 stay in the denominator, so they dilute every real row."""
    real = mask[:, None, :, None]
    return attn(q, torch.where(real, k, 0), torch.where(real, v, 0), torch.ones_like(mask))


def harness_performer(attn, q, k, v, mask):
    """The harness's Performer through ours: padded keys counted, and q and k scaled by d^-1/4
    once more (it estimates softmax(q.k / d)). Its eps 1e-4 per feature is left out."""
    scale = q.shape[-1] ** -0.25
    return padded_keys_counted(attn, q * scale, k * scale, v, mask)


# A published bug, as a call of our module: the alternative of a row whose option is None.
HARNESS = {"harness performer": harness_performer, "padded keys counted": padded_keys_counted}


def inputs(kind: str, seed: int):
    """q, k, v (2, HEADS, SEQ, HEAD_DIM) and the mask of LENGTHS."""
    return padded_qkv(LENGTHS, HEADS, SEQ, HEAD_DIM, structured=kind == "structured", seed=seed)


def exact(attn, q, k, v, mask):
    """Exact softmax over what the method estimates: Reformer shares q and k and uses unit keys
    with logits q . k_j (no 1/sqrt(d)), so its keys are q / |q| * sqrt(d) here."""
    if attn.needs_shared_qk:
        k = torch.nn.functional.normalize(q, dim=-1) * math.sqrt(q.shape[-1])
    oracle = build_attention("softmax_naive", num_heads=HEADS, head_dim=HEAD_DIM,
                             max_seq_len=SEQ).eval()
    return oracle(q, k, v, mask)


def run(attn, q, k, v, mask, harness: str | None = None):
    if harness:
        return HARNESS[harness](attn, q, k, v, mask)
    return attn(q, q, v, mask) if attn.needs_shared_qk else attn(q, k, v, mask)


def measure(name, options, metric, max_seq_len, kind, seed, harness=None) -> float:
    torch.manual_seed(seed)  # Linformer's E and every `seed: null` come from here
    if metric == "params":
        encoder = Encoder(ModelConfig(head_dim=HEAD_DIM), AttentionSpec(name, options),
                          vocab_size=10, max_len=max_seq_len)
        unique = {id(p): p for b in encoder.blocks for p in b.attn.attn.parameters()}
        return float(sum(p.numel() for p in unique.values()))
    attn = build_attention(name, num_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=max_seq_len,
                           **options)
    q, k, v, mask = inputs(kind, seed)
    with torch.no_grad():
        if metric == "change":
            attn.train()
            first, second = run(attn, q, k, v, mask), run(attn, q, k, v, mask)
            return relative_error(second, first, mask)
        attn.train(metric == "train")
        return relative_error(run(attn, q, k, v, mask, harness), exact(attn, q, k, v, mask),
                              mask)


def fmt(value: float, metric: str) -> str:
    return f"{value:,.0f}" if metric == "params" else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/measure_deviations.py",
        description="Measure each attention protocol option at its default (published) and its "
                    "alternative; prints a markdown table (DEVIATIONS.md cites it).")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds per figure (inputs and random draws); default 3")
    parser.add_argument("--attentions", nargs="+", metavar="NAME",
                        help="only the rows of these attentions (default: every row)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    rows = [r for r in ROWS if not args.attentions or r[0] in args.attentions]
    if not rows:
        parser.error(f"no row for {' '.join(args.attentions)}; rows exist for "
                     f"{', '.join(sorted({r[0] for r in ROWS}))}")

    print(f"n = {SEQ}, real lengths {LENGTHS}, {HEADS} heads x {HEAD_DIM}, mean of "
          f"{args.seeds} seed(s)\n")
    print("| attention | option | default | alternative | metric | max_seq_len "
          "| structured: default / alt | Gaussian: default / alt |")
    print("|---|---|---|---|---|---|---|---|")
    for name, option, default, alternative, metric, max_seq_len, fixed in rows:
        cells = []
        for kind in ("structured", "gaussian"):
            pair = []
            for value in (default, alternative):
                options = fixed if option is None else {**fixed, option: value}
                runs = [measure(name, options, metric, max_seq_len, kind, s,
                                harness=value if option is None and value in HARNESS else None)
                        for s in range(args.seeds)]
                pair.append(fmt(sum(runs) / len(runs), metric))
            cells.append(" / ".join(pair))
            if metric == "params":  # no inputs involved: one figure
                cells.append("(same)")
                break
        print(f"| {name} | {option or '(bug kept)'} | {default} | {alternative} | {metric} "
              f"| {max_seq_len} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
