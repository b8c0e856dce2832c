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

A second table (BUG_ROWS) takes the published rules we do not follow (padding leaks, a batch-wide
scale, Reformer's look-back), re-implemented densely below on the module's
own draws and weights, and gives ours / published for RULE_METRICS: error, padding invariance,
batch independence and the landmark pseudo-inverse's residual; its "check" column is the dense
rule with our choices against the module itself, so the re-implementation is known faithful.

    python tools/measure_deviations.py            # both tables, a few minutes on CPU
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
from attention_zoo.landmarks import real_tokens_in_windows, segment_means  # noqa: E402
from attention_zoo.masking import masked_rows  # noqa: E402
from attention_zoo.soft import gaussian_kernel  # noqa: E402
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
    ("scatterbrain", "window_shape", "half_open", "symmetric", "error", 512, {}),
    ("softmax", "dropout", 0.1, 0.0, "train", 512, {}),
    ("softmax", "dropout", 0.2, 0.1, "train", 512, {}),  # the original LRA's Image vs ours
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


# Published rules that our code does not follow (a padding leak, a batch coupling, a different
# look-back), re-implemented densely here from the reference notes, on our module's own
# random draws and weights, so that only the rule differs. Each takes `published`: False gives
# our rule, which BUG_ROWS checks against the module itself before any figure is trusted.

def dense_softmax(logits, weights, v):
    """sum_j weights_ij exp(logits_ij) v_j / sum_j weights_ij exp(logits_ij), stably; also the
    log normaliser. weights (.., n, n) >= 0 counts each key (0 = not seen)."""
    logits = torch.where(weights > 0, logits, -math.inf)
    lse = torch.logsumexp(logits + weights.clamp_min(1e-30).log(), dim=-1, keepdim=True)
    probs = torch.where(weights > 0, weights * torch.exp(logits - lse), 0)
    return probs @ v, lse


def reformer_rule(attn, q, k, v, mask, published):
    """LSH attention from the module's rotations, densely: query i of round r sees, with their
    multiplicity, the keys of its chunk and of the previous chunk in the order of all rounds laid
    end to end. Published (HuggingFace): chunk 0 of round r looks back into the last chunk of
    round r - 1 (round 0 into the last round's); ours: it has no previous chunk."""
    chunk, n = attn.options.chunk_size, q.shape[2]
    keys = torch.nn.functional.normalize(q, dim=-1)
    bucket = attn.hash(keys, mask)  # (batch, heads, rounds, n)
    rounds, nc = bucket.shape[2], n // chunk
    order = (bucket * n + torch.arange(n)).argsort(dim=-1)
    # chunk_id: each token's chunk in every round, numbered across the rounds laid end to end.
    chunk_id = order.argsort(dim=-1) // chunk + torch.arange(rounds)[:, None] * nc
    member = torch.nn.functional.one_hot(chunk_id, rounds * nc).sum(dim=2).float()  # (.., n, R nc)
    previous = chunk_id - 1
    if published:
        previous = previous % (rounds * nc)
    first = chunk_id % nc == 0
    seen = member.transpose(-1, -2).gather(2, chunk_id.flatten(2)[..., None].expand(-1, -1, -1, n))
    before = member.transpose(-1, -2).gather(
        2, previous.clamp_min(0).flatten(2)[..., None].expand(-1, -1, -1, n))
    if not published:
        before = torch.where(first.flatten(2)[..., None], 0, before)
    weights = (seen + before).unflatten(2, (rounds, n)) * mask[:, None, None, None, :]
    logits = (q @ keys.transpose(-1, -2))[:, :, None]  # (batch, heads, 1, n, n)
    logits = torch.where(torch.eye(n, dtype=torch.bool), -1e5, logits)  # the self logit rule
    out, lse = dense_softmax(logits, weights, v[:, :, None])
    return (torch.softmax(lse, dim=2) * out).sum(dim=2)


def bigbird_rule(attn, q, k, v, mask, published):
    """BigBird's block pattern as a dense mask, from the module's random-block priorities.
    Published: the last global block is the last block of the padded input, and random blocks
    are drawn among all blocks; ours: the example's last real block, random blocks among real
    blocks."""
    b, n = attn.options.block_size, q.shape[2]
    nb, half = n // b, attn.options.window_blocks // 2
    blocks = torch.arange(nb)
    real_blocks = mask.unflatten(-1, (nb, b)).any(dim=-1)  # (batch, nb)
    last = torch.full((len(mask),), nb - 1) if published else (real_blocks * blocks).amax(dim=-1)
    outside = (blocks[None, :] - blocks[:, None]).abs() > half  # (nb, nb) not in the window
    is_global = (blocks == 0) | (blocks == last[:, None])  # (batch, nb)
    candidate = outside & ~is_global[:, None, :]
    if not published:
        candidate = candidate & real_blocks[:, None, :]
    score = torch.where(candidate[:, None], attn.priorities[:, :nb, :nb], -1.0)
    top, rand = score.topk(attn.options.num_random, dim=-1)  # (batch, heads, nb, r)
    seen = ~outside | is_global[:, None, None, :] | is_global[:, None, :, None]
    seen = seen | torch.zeros_like(score, dtype=torch.bool).scatter(-1, rand, top >= 0)
    allowed = seen.repeat_interleave(b, -2).repeat_interleave(b, -1) & mask[:, None, None, :]
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return dense_softmax(logits, allowed.float(), v)[0]


def hyperpower_init(a, batch_wide):
    """Z0 = A^T / (max column sum * max row sum): per matrix (ours) or with both maxima over the
    whole batch (published: one scale for every example and head)."""
    dims = (-4, -3, -2, -1) if batch_wide else (-2, -1)
    norm_1 = a.abs().sum(dim=-2, keepdim=True).amax(dim=dims, keepdim=True)
    norm_inf = a.abs().sum(dim=-1, keepdim=True).amax(dim=dims, keepdim=True)
    return a.transpose(-1, -2) / (norm_1 * norm_inf)


def nystrom_rule(attn, q, k, v, mask, published, inverse=False):
    """Nystromformer densely. Published: landmarks are means of n / m consecutive positions of
    the padded input (padded rows count as zeros, all-padding segments become landmarks, no
    landmark is masked) and the pseudo-inverse's initial scale is a max over the batch; ours:
    segments over real tokens (landmarks.segment_means) and a per-matrix scale. inverse: return
    the landmark kernel and its iterated pseudo-inverse instead."""
    m, d = attn.options.num_landmarks, q.shape[-1]
    if published:
        q_land, k_land = (x.unflatten(2, (m, -1)).mean(dim=3) for x in (q, k))
        valid = torch.ones(len(mask), m, dtype=torch.bool)
    else:
        (q_land, valid), (k_land, _) = segment_means(q, mask, m), segment_means(k, mask, m)
    cols, scale = valid[:, None, None, :].float(), d**-0.5
    kernel_1 = dense_softmax(q @ k_land.transpose(-1, -2) * scale, cols, torch.eye(m))[0]
    kernel_2 = dense_softmax(q_land @ k_land.transpose(-1, -2) * scale, cols, torch.eye(m))[0]
    kernel_3 = dense_softmax(q_land @ k.transpose(-1, -2) * scale,
                             (mask[:, None, None, :] & valid[:, None, :, None]).float(), v)[0]
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    a = torch.where(pair, kernel_2, torch.eye(m))
    z, eye = hyperpower_init(a, batch_wide=published), torch.eye(m)
    for _ in range(attn.options.pinv_iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return (a, z) if inverse else kernel_1 @ (z @ kernel_3)


def soft_inverse(a, iterations, published):
    """SOFT's Newton-Schulz pseudo-inverse Z <- 2Z - ZAZ of a (batch, heads, m, m). Published
    start: alpha A with alpha = 2 / (max row sum)^2 over the batch, halved (at most 10 times)
    until max_col ||I - A alpha A||_1 <= 1.01; ours: Z0 = A / ||A||_1^2 per matrix."""
    if published:
        eye = torch.eye(a.shape[-1])
        alpha = 2 / a.sum(dim=-1).amax() ** 2
        for _ in range(10):
            if (eye - a @ (alpha * a)).abs().sum(dim=-2).amax() <= 1.01:
                break
            alpha = alpha / 2
        z = alpha * a
    else:
        z = hyperpower_init(a, batch_wide=False)
    for _ in range(iterations):
        z = 2 * z - z @ a @ z
    return z


def soft_rule(attn, q, k, v, mask, published):
    """SOFT densely, on the module's conv and LayerNorm. Published: the strided conv runs over
    the zero-padded q (windows of padding become landmarks, none is masked), and the inverse
    starts as soft_inverse says; ours: real-token windows (landmarks.real_tokens_in_windows)."""
    batch, heads, n, d = q.shape
    q = masked_rows(q * d**-0.25, mask)
    if published:
        windows, valid = q, torch.ones(batch, n // attn.stride, dtype=torch.bool)
    else:
        windows, valid = real_tokens_in_windows(q, mask, attn.stride)
    conv_in = windows.reshape(batch * heads, -1, d).transpose(1, 2)
    land = attn.landmark_conv(conv_in).transpose(1, 2).reshape(batch, heads, -1, d)
    land = torch.nn.functional.gelu(attn.landmark_norm(land))
    k_ql = torch.where(valid[:, None, None, :], gaussian_kernel(q, land), 0)
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    a = torch.where(pair, gaussian_kernel(land, land), torch.eye(land.shape[2]))
    z = soft_inverse(a, attn.options.pinv_iterations, published)
    return k_ql @ (z @ (k_ql.transpose(-1, -2) @ masked_rows(v, mask)))


def soft_exact(q, mask, v):
    """What SOFT approximates: K(q', q') v over real keys, q' = d^-1/4 q (no normalisation)."""
    q = q * q.shape[-1] ** -0.25
    return gaussian_kernel(q, q) * mask[:, None, None, :] @ masked_rows(v, mask)


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


# (attention, the published rule densely, what it does, max_seq_len): each row measured with
# our rule and the published one on the module's draws (RULE_METRICS).
BUG_ROWS = [
    ("reformer", reformer_rule, "look-back wraps over the rounds", 1024),
    ("bigbird", bigbird_rule, "last global and random blocks from the padded input", 1024),
    ("nystrom", nystrom_rule, "landmarks over the padded input, batch-wide pinv scale", 1024),
    ("soft", soft_rule, "conv landmarks over zero-padded q, batch-wide searched init", 1024),
]
# check     ||dense rule (ours) - module|| / ||module||: the dense re-implementation is faithful;
# error     against exact attention (SOFT: against K(q, q) v, what it approximates), LENGTHS;
# padding   change of an example's real rows (LEAK_REAL real tokens) when it is padded to
#           PADDED[1] instead of PADDED[0], over the norm of its exact output: 0 for a
#           padding-invariant rule;
# batch     change of the second example's rows when the first is replaced by another draw,
#           over the norm of its exact output: 0 for a rule whose examples are independent;
# inverse   ||A Z A - A|| / ||A|| (the first Penrose condition) of a landmark kernel A and its
#           iterated pseudo-inverse Z, LENGTHS: Nystromformer's kernel_2; for SOFT, whose
#           landmark kernel at initialisation is near the identity (random conv landmarks lie
#           far apart), the Gaussian kernel of 64 real-token segment means of q d^-1/4, which
#           stand for landmarks that sit among the tokens.
RULE_METRICS = ("check", "error", "padding", "batch", "inverse")
LEAK_REAL, PADDED = 448, (448, 1024)  # alone, then padded: 448 is a multiple of every block


def change(a, b, target, mask) -> float:
    """||a - b|| / ||target|| over the real rows of mask."""
    return float(masked_rows(a - b, mask).norm() / masked_rows(target, mask).norm())


def measure_rule(name, rule, max_seq_len, kind, seed) -> dict[str, tuple[float, float]]:
    """RULE_METRICS of our rule (the module; "check": the dense rule) and the published one."""
    torch.manual_seed(seed)
    attn = build_attention(name, num_heads=HEADS, head_dim=HEAD_DIM,
                           max_seq_len=max_seq_len).eval()

    def target_of(q, k, v, mask):
        return soft_exact(q, mask, v) if name == "soft" else exact(attn, q, k, v, mask)

    def both(q, k, v, mask):
        """Our module's and the published rule's outputs, on padded rows zeroed as the module
        does (the harnesses zero them too)."""
        q, k, v = (masked_rows(x, mask) for x in (q, k, v))
        k = q if attn.needs_shared_qk else k
        return attn(q, k, v, mask), rule(attn, q, k, v, mask, published=True)

    with torch.no_grad():
        q, k, v, mask = inputs(kind, seed)
        ours, published = both(q, k, v, mask)
        dense = rule(attn, *(masked_rows(x, mask) for x in (q, q if attn.needs_shared_qk else k,
                                                           v)), mask, published=False)
        target = target_of(q, k, v, mask)
        figures = {"check": (relative_error(dense, ours, mask), math.nan),
                   "error": (relative_error(ours, target, mask),
                             relative_error(published, target, mask))}

        long = padded_qkv((LEAK_REAL,), HEADS, PADDED[1], HEAD_DIM,
                          structured=kind == "structured", seed=seed)
        short = [x[..., :PADDED[0], :] for x in long[:3]] + [long[3][:, :PADDED[0]]]
        real = long[3][:, :PADDED[0]]
        figures["padding"] = tuple(change(a[..., :PADDED[0], :], b, target_of(*short), real)
                                   for a, b in zip(both(*long), both(*short), strict=True))

        other = padded_qkv(LENGTHS, HEADS, SEQ, HEAD_DIM, structured=kind == "structured",
                           seed=seed + 1000)
        swapped = [torch.cat([o[:1], x[1:]]) for o, x in zip(other, (q, k, v, mask),
                                                              strict=True)]
        second = torch.zeros_like(mask)
        second[1] = mask[1]
        figures["batch"] = tuple(change(a, b, target, second)
                                 for a, b in zip(both(*swapped), (ours, published), strict=True))
        if name == "nystrom":
            pairs = [nystrom_rule(attn, *(masked_rows(x, mask) for x in (q, k, v)), mask, p,
                                  inverse=True) for p in (False, True)]
        elif name == "soft":
            land, _ = segment_means(q * HEAD_DIM**-0.25, mask, 64)
            a = gaussian_kernel(land, land)
            pairs = [(a, soft_inverse(a, attn.options.pinv_iterations, p)) for p in (False, True)]
        else:
            return figures
        figures["inverse"] = tuple(float((a @ z @ a - a).norm() / a.norm()) for a, z in pairs)
    return figures


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
    torch.set_flush_denormal(True)  # exp of far-apart points: denormals slow the CPU 10x
    rows = [r for r in ROWS if not args.attentions or r[0] in args.attentions]
    if not rows and not any(r[0] in args.attentions for r in BUG_ROWS):
        parser.error(f"no row for {' '.join(args.attentions)}; rows exist for "
                     f"{', '.join(sorted({r[0] for r in ROWS + BUG_ROWS}))}")

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

    bug_rows = [r for r in BUG_ROWS if not args.attentions or r[0] in args.attentions]
    if bug_rows:
        print(f"\nPublished rules we do not follow, densely on the module's draws (ours / "
              f"published; mean of {args.seeds} seed(s)); padding: {LEAK_REAL} real tokens alone "
              f"vs padded to {PADDED[1]}; check: dense rule (ours) vs the module\n")
        print("| attention | published rule | max_seq_len | inputs | check | "
              + " | ".join(RULE_METRICS[1:]) + " |")
        print("|---|---|---|---|---|" + "---|" * (len(RULE_METRICS) - 1))
    for name, rule, what, max_seq_len in bug_rows:
        for kind in ("structured", "gaussian"):
            runs = [measure_rule(name, rule, max_seq_len, kind, s) for s in range(args.seeds)]
            cells = []
            for metric in RULE_METRICS:
                if metric not in runs[0]:
                    cells.append("-")
                    continue
                ours, published = (sum(r[metric][i] for r in runs) / len(runs) for i in (0, 1))
                cells.append(f"{ours:.1e}" if metric == "check"
                             else f"{ours:.3f} / {published:.3f}")
            print(f"| {name} | {what} | {max_seq_len} | {kind} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
