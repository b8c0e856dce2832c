"""The measured effects behind DEVIATIONS.md's "Training loop" and "Data" rows, one table:

    python tools/protocol_effects.py [--data-root data/mini]

- schedule: over each task's protocol (conf/task/*.yaml), the mean lr and mean beta1 of torch's
  OneCycleLR as the harness called it (our default) against the linear schedule (the option);
- pooling: the pooled output's scale under mean_over_max_len against the mean over real tokens,
  which is each example's real length / task.max_len (conf/task/listops.yaml: 2048, whatever
  the data was padded to), averaged over the train split of the ListOps in the data root given
  (the mini suite by default);
- gradient clipping: the gradient norm of the small ListOps model at initialisation on 10 batches
  of that ListOps, against the 1.0 that `trainer.grad_clip=1.0` clips at;
- grayscale: the fraction of colours whose TensorFlow grayscale differs from the rounded one, over
  all 2^24 colours (CIFAR-10 itself is not measured: it is not on a fresh machine);
- zero-token mask: the fraction of Pathfinder-32 pixels (our generator, 200 images) that are 0,
  which `data.mask_zero_tokens_as_padding=true` masks as padding;
- dev and test evaluation: the spread of the harness's estimates around the whole split's
  accuracy, simulated exactly for any model of accuracy 0.5 (the largest spread) on each task's
  real split sizes (HARNESS_EVAL): dev, `num_eval_steps` batches read on from an endless stream of
  reshuffled passes; test, one shuffled pass with the last partial batch dropped;
- optimiser step: flax's Adam with weight decay (the original LRA's), written out here, against
  torch.optim.AdamW on the same gradients, 1,000 steps in float64;
- Pathfinder warmup: our cosine schedule against the original LRA's `constant * linear_warmup *
  cosine_decay` (lra_benchmarks/utils/train_utils.py; warmup 160,000 // 512 = 312, cycle 62,400);
- AMP on the CPU: a freshly initialised small model (ListOps shapes, random tokens) under CPU
  autocast in fp16 with a GradScaler and in bf16, against fp32: logits and gradients. The CUDA
  kernels themselves are not measured here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep import image  # noqa: E402
from data_prep import pathfinder as pf  # noqa: E402
from data_prep.cache import load_split, read_manifest  # noqa: E402
from lra.config import TaskConfig  # noqa: E402
from lra.model import AttentionSpec, Classifier, ModelConfig  # noqa: E402
from lra.schedules import build as build_scheduler  # noqa: E402
from lra.schedules import lr_factor  # noqa: E402

TASKS = ("listops", "text", "retrieval", "image", "pathfinder")
# task: (dev size, num_eval_steps, test size, batch): the harness's config (old_code/LRA/models/*/
# config.json) for steps and batch, the LRA splits for the sizes (Pathfinder: 200K at 80/10/10).
HARNESS_EVAL = {"listops": (2000, 62, 2000, 32), "text": (25000, 781, 25000, 32),
                "retrieval": (18090, 565, 17437, 32), "image": (5000, 20, 10000, 256),
                "pathfinder": (20000, 312, 20000, 256)}


def task_config(task: str):
    """conf/task/<task>.yaml over TaskConfig's defaults (the files name only what differs)."""
    return OmegaConf.merge(OmegaConf.structured(TaskConfig),
                           OmegaConf.load(ROOT / "conf" / "task" / f"{task}.yaml"))


def schedule(name: str, warmup: int, total: int, lr: float = 1e-4) -> np.ndarray:
    """(total, 2): the lr and beta1 each step uses."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=lr, betas=(0.9, 0.999))
    sched = build_scheduler(opt, name, warmup, total)
    seen = []
    for _ in range(total):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
        opt.step()
        sched.step()
    return np.array(seen)


def eval_spread(size: int, window: int, stream: bool, draws: int = 500,
                accuracy: float = 0.5) -> np.ndarray:
    """Estimates minus the whole split's accuracy, over `draws` evaluations of `window` examples
    of a split of `size` whose first accuracy * size examples are right. stream: evaluations read
    on from one endless stream of reshuffled passes (the harness's dev); else each is a fresh
    shuffled pass cut at `window` (its test, drop_last)."""
    rng = np.random.default_rng(0)
    correct = np.arange(size) < round(accuracy * size)
    passes = -(-draws * window // size) + 1 if stream else 0
    if stream:
        flags = np.concatenate([correct[rng.permutation(size)] for _ in range(passes)])
        seen = flags[: draws * window].reshape(draws, window)
    else:
        seen = np.stack([correct[rng.permutation(size)[:window]] for _ in range(draws)])
    return seen.mean(axis=1) - correct.mean()


def flax_adam(grads: list[torch.Tensor], param: torch.Tensor, lr: float, betas, eps: float,
              weight_decay: float) -> torch.Tensor:
    """flax.optim.Adam's update with weight decay, as the original LRA trained: bias-corrected
    moments, param -= lr * (m / (sqrt(v) + eps) + weight_decay * param)."""
    m, v = torch.zeros_like(param), torch.zeros_like(param)
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        param = param - lr * (m_hat / (v_hat.sqrt() + eps) + weight_decay * param)
    return param


def optimiser_difference(steps: int = 1000) -> float:
    """max |flax - torch AdamW| / max |param| after `steps` (text's lr_original settings)."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(1000, dtype=torch.float64, generator=gen)
    grads = [torch.randn(1000, dtype=torch.float64, generator=gen) for _ in range(steps)]
    lr, betas, eps, decay = 1e-3, (0.9, 0.98), 1e-9, 0.1
    param = torch.nn.Parameter(start.clone())
    opt = torch.optim.AdamW([param], lr=lr, betas=betas, eps=eps, weight_decay=decay)
    for g in grads:
        param.grad = g
        opt.step()
    ours = param.detach()
    return float((flax_adam(grads, start, lr, betas, eps, decay) - ours).abs().max()
                 / ours.abs().max())


def original_cosine(step: int, warmup: int, cycle: int) -> float:
    """The original LRA's `constant * linear_warmup * cosine_decay` factor at 0-based `step`."""
    progress = max(0.0, (step - warmup) / cycle)
    return min(1.0, step / warmup) * max(0.0, 0.5 * (1 + np.cos(np.pi * (progress % 1.0))))


def amp_differences(batch: int = 4, seq: int = 512, device: str = "cpu"
                    ) -> dict[str, tuple[float, float]]:
    """(logits, gradient) relative differences against fp32, eval mode, one random batch, under
    the autocast of `device` (tools/gpu_check.py measures CUDA's)."""
    torch.manual_seed(0)
    tokens = torch.randint(2, 17, (batch, seq)).to(device)
    mask = (torch.arange(seq) < torch.randint(seq // 4, seq + 1, (batch, 1))).to(device)
    labels = torch.randint(0, 10, (batch,)).to(device)
    state = None
    seen = {}
    for name, dtype, fp32_attention in (("fp32", None, True), ("fp16", torch.float16, True),
                                        ("fp16, attention fp16", torch.float16, False),
                                        ("bf16", torch.bfloat16, True),
                                        ("bf16, attention bf16", torch.bfloat16, False)):
        model = Classifier(ModelConfig(attention_fp32=fp32_attention), AttentionSpec("softmax"),
                           vocab_size=17, max_len=2048, num_classes=10).to(device).eval()
        state = state or model.state_dict()
        model.load_state_dict(state)
        scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(tokens, mask).float()
        scaler.scale(torch.nn.functional.cross_entropy(logits, labels)).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()]) / scaler.get_scale()
        seen[name] = (logits.detach(), grad)
    exact_logits, exact_grad = seen.pop("fp32")
    return {name: (float((lg - exact_logits).norm() / exact_logits.norm()),
                   float((g - exact_grad).norm() / exact_grad.norm()))
            for name, (lg, g) in seen.items()}


def grad_norms(tokens: np.ndarray, lengths: np.ndarray, labels: np.ndarray, batches: int = 10,
               batch: int = 32) -> np.ndarray:
    """The gradient norm (what trainer.grad_clip=1.0 clips) of the small ListOps model at its
    initialisation, training mode, on `batches` random batches of the split given."""
    torch.manual_seed(0)
    model = Classifier(ModelConfig(), AttentionSpec("softmax"), vocab_size=17, max_len=2048,
                       num_classes=10).train()
    order = np.random.default_rng(0).permutation(len(labels))
    norms = []
    for i in range(batches):
        rows = order[i * batch:(i + 1) * batch]
        seq = int(lengths[rows].max())
        x = torch.from_numpy(tokens[rows, :seq].astype(np.int64))
        mask = torch.arange(seq) < torch.from_numpy(lengths[rows].astype(np.int64))[:, None]
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(x, mask), torch.from_numpy(labels[rows].astype(np.int64)))
        loss.backward()
        norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
    return np.array(norms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(ROOT / "data" / "mini"),
                        help="a data root holding a prepared listops (default: data/mini)")
    args = parser.parse_args()
    print("| Measure | Value |\n|---|---|")
    for task in TASKS:
        t = task_config(task)
        one, lin = (schedule(s, t.warmup_steps, t.max_steps) for s in ("onecycle", "linear"))
        print(f"| {task} ({t.warmup_steps}/{t.max_steps} steps): mean lr onecycle / linear | "
              f"{one[:, 0].mean() / lin[:, 0].mean():.4f}; lr at step 0 {one[0, 0] / 1e-4:.3f} vs "
              f"{lin[0, 0] / 1e-4:.5f} of the peak; beta1 {one[:, 1].min():.2f}-"
              f"{one[:, 1].max():.2f} vs 0.9 |")
    folder = Path(args.data_root) / "listops"
    if (folder / "manifest.json").exists():
        manifest = read_manifest(folder, task="listops", data="mini")
        train = load_split(folder, "train", manifest, data="mini")
        lengths = np.asarray(train.lengths)
        max_len = task_config("listops").max_len
        print(f"| pooled scale mean_over_max_len / mean, ListOps of {args.data_root} | "
              f"{np.mean(lengths / max_len):.4f} (mean length {lengths.mean():.0f}, "
              f"task.max_len {max_len}) |")
        norms = grad_norms(np.asarray(train.tokens), lengths, np.asarray(train.labels))
        print(f"| gradient norm at initialisation, ListOps of {args.data_root}, {len(norms)} "
              f"batches of 32 | median {np.median(norms):.2f}, range {norms.min():.2f}-"
              f"{norms.max():.2f}; above 1.0 (clipped by grad_clip=1.0) in "
              f"{np.mean(norms > 1):.0%} |")
    values = np.arange(256, dtype=np.uint8)
    colours = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(1, -1, 3)
    weighted = colours.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    changed = image.to_gray(colours).astype(np.int64) != np.rint(weighted)
    print(f"| grayscale: colours where TF's value != rint (all 2^24) | {changed.mean():.4f} |")
    images, _ = pf.generate(200, pf.Settings.level(32), seed=0)
    print(f"| Pathfinder-32 pixels that are 0 (masked by the token != 0 quirk) | "
          f"{np.mean(images == 0):.4f} |")
    for task, (dev, steps, test, batch) in HARNESS_EVAL.items():
        dev_gap = eval_spread(dev, steps * batch, stream=True)
        test_gap = eval_spread(test, test - test % batch, stream=False)
        print(f"| {task}: harness estimate - whole split, accuracy 0.5, std (max) in points | "
              f"dev {steps} x {batch} of {dev:,} from a stream: {100 * dev_gap.std():.2f} "
              f"({100 * np.abs(dev_gap).max():.2f}); test drop_last ({test % batch} of "
              f"{test:,} dropped): {100 * test_gap.std():.2f} "
              f"({100 * np.abs(test_gap).max():.2f}) |")
    print(f"| optimiser: flax Adam with weight decay vs torch AdamW, 1,000 steps, float64: max "
          f"difference / max param | {optimiser_difference():.1e} |")
    warmup, total = 312, 62400
    ours = np.array([lr_factor("cosine", s, warmup, total) for s in range(total)])
    theirs = np.array([original_cosine(s, warmup, total) for s in range(total)])
    print(f"| pathfinder (lra_original, warmup {warmup}, {total:,} steps): our cosine vs the "
          f"original's factors | mean lr ratio {ours.mean() / theirs.mean():.4f}; max difference "
          f"{np.abs(ours - theirs).max():.4f} of the peak; last step {ours[-1]:.1e} vs "
          f"{theirs[-1]:.1e} |")
    for name, (logits, grad) in amp_differences().items():
        print(f"| AMP on CPU, {name} vs fp32: relative difference of logits, gradient | "
              f"{logits:.1e}, {grad:.1e} |")


if __name__ == "__main__":
    main()
