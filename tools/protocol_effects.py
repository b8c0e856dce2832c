"""The measured effects behind DEVIATIONS.md's "Training loop" and "Data" rows, one table:

    python tools/protocol_effects.py [--data-root data/mini]

- schedule: over each task's protocol (conf/task/*.yaml), the mean lr and mean beta1 of torch's
  OneCycleLR as the harness called it (our default) against the linear schedule (the option);
- pooling: the pooled output's scale under mean_over_max_len against the mean over real tokens,
  which is each example's real length / task.max_len (conf/task/listops.yaml: 2048, whatever
  the data was padded to), averaged over the train split of the ListOps in the data root given
  (the mini suite by default);
- grayscale: the fraction of colours whose TensorFlow grayscale differs from the rounded one, over
  all 2^24 colours (CIFAR-10 itself is not measured: it is not on a fresh machine);
- zero-token mask: the fraction of Pathfinder-32 pixels (our generator, 200 images) that are 0,
  which `data.mask_zero_tokens_as_padding=true` masks as padding.
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
from lra.schedules import build as build_scheduler  # noqa: E402

TASKS = ("listops", "text", "retrieval", "image", "pathfinder")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(ROOT / "data" / "mini"),
                        help="a data root holding a prepared listops (default: data/mini)")
    args = parser.parse_args()
    print("| Measure | Value |\n|---|---|")
    for task in TASKS:
        t = OmegaConf.load(ROOT / "conf" / "task" / f"{task}.yaml")
        one, lin = (schedule(s, t.warmup_steps, t.max_steps) for s in ("onecycle", "linear"))
        print(f"| {task} ({t.warmup_steps}/{t.max_steps} steps): mean lr onecycle / linear | "
              f"{one[:, 0].mean() / lin[:, 0].mean():.4f}; lr at step 0 {one[0, 0] / 1e-4:.3f} vs "
              f"{lin[0, 0] / 1e-4:.5f} of the peak; beta1 {one[:, 1].min():.2f}-"
              f"{one[:, 1].max():.2f} vs 0.9 |")
    folder = Path(args.data_root) / "listops"
    if (folder / "manifest.json").exists():
        manifest = read_manifest(folder, task="listops", data="mini")
        lengths = np.asarray(load_split(folder, "train", manifest, data="mini").lengths)
        max_len = OmegaConf.load(ROOT / "conf" / "task" / "listops.yaml").max_len
        print(f"| pooled scale mean_over_max_len / mean, ListOps of {args.data_root} | "
              f"{np.mean(lengths / max_len):.4f} (mean length {lengths.mean():.0f}, "
              f"task.max_len {max_len}) |")
    values = np.arange(256, dtype=np.uint8)
    colours = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(1, -1, 3)
    weighted = colours.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    changed = image.to_gray(colours).astype(np.int64) != np.rint(weighted)
    print(f"| grayscale: colours where TF's value != rint (all 2^24) | {changed.mean():.4f} |")
    images, _ = pf.generate(200, pf.Settings.level(32), seed=0)
    print(f"| Pathfinder-32 pixels that are 0 (masked by the token != 0 quirk) | "
          f"{np.mean(images == 0):.4f} |")


if __name__ == "__main__":
    main()
