"""Train and evaluate one (task, attention, seed) run: `python -m lra.train task=listops
attention=mra2`, a sweep with `-m`, or several processes with `torchrun --nproc_per_node=N -m
lra.train ...` (DistributedDataParallel; `trainer.batch_size` stays the global batch).

The run folder is <runs_dir>/<data>/<tag>/<task>-<attention>-s<seed>-<fingerprint>, where the
fingerprint hashes every setting that changes the result. Re-running the same command resumes from
`last.pt` (with the exact data order, see lra.distributed), and skips a run whose `summary.json`
exists, so a killed sweep loses at most the run in progress.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import sys
import textwrap
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data_prep import tasks as data_tasks
from data_prep.atomic import atomic_write, atomic_write_text

from . import cli, distributed, schedules
from .config import Config, ConfigError, fingerprint, load_config
from .data import TaskData, load_task_data, manifest_digest, prepare_manifest
from .eta import StepClock
from .memory import PeakMemory
from .model import Classifier
from .overrides import check_overrides, group_options
from .preemption import Preemption
from .results import append_jsonl, check_summary, read_summary, write_json
from .runlock import RunLock

log = logging.getLogger("lra.train")
# Training steps per process that measure peak memory and are not timed (see the training loop).
MEMORY_STEPS = 2


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- seeds the global RNG that library code may draw from
    torch.manual_seed(seed)


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use "
                          "trainer.device=auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def amp_dtype(tc: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training step, None for none: AMP runs on CUDA only."""
    if not tc.amp or device.type != "cuda":
        return None
    return torch.float16 if tc.amp_dtype == "fp16" else torch.bfloat16


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, scheduler: Any, grad_clip: float) -> float:
    """One update from the gradients in place (the scaler's unscale, optional clipping, step,
    schedule). Returns the lr this update used (the scheduler has moved on after it)."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return lr


def build_model(cfg: Config, manifest: dict[str, Any]) -> Classifier:
    return Classifier(cfg.model, cfg.attention, vocab_size=manifest["vocab_size"],
                      max_len=cfg.task.max_len, num_classes=cfg.task.num_classes,
                      pair=cfg.task.pair)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: on any failure the previous one stays as it was."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except RuntimeError as err:
        # torch's zip writer reports a failed write (a full disk) without an errno.
        free_mb = shutil.disk_usage(path.parent).free / 2**20
        raise cli.UserError(f"writing {path} failed ({str(err).splitlines()[0]}); "
                            f"{free_mb:.0f} MB are free on that disk (a full disk ends this "
                            "way); the previous checkpoint is kept") from None


def load_checkpoint(path: Path, device: torch.device, *, full: bool) -> dict[str, Any]:
    """A checkpoint (`full`: with optimizer state, from our own writer); a missing, partial or
    corrupt file is one UserError naming it and the fix."""
    try:
        return torch.load(path, map_location=device, weights_only=not full)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        reason = "missing" if isinstance(err, FileNotFoundError) else "partial or corrupt"
        raise cli.UserError(f"{path} is {reason} ({str(err).splitlines()[0]}); rerun with "
                            "trainer.resume=false to train this run again from step 0 (it "
                            "replaces the run's checkpoints)") from None


class Logger:
    """wandb when `logger=wandb` (offline unless an API key is configured), else nothing."""

    def __init__(self, cfg: Config, run_name: str, run_dir: Path, enabled: bool):
        self.run = None
        if cfg.logger.name != "wandb" or not enabled:
            return
        import wandb

        mode = cfg.logger.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=cfg.logger.project, name=run_name,
                              group=cfg.logger.group or cfg.tag, dir=str(run_dir), mode=mode,
                              config=OmegaConf.to_container(OmegaConf.structured(cfg)),
                              reinit="finish_previous")
        if mode == "offline":
            log.info("wandb runs offline (no WANDB_API_KEY); sync later with `wandb sync %s`",
                     run_dir / "wandb")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()


class Evaluator:
    """Accuracy on a split, sharded over processes and summed."""

    def __init__(self, data: TaskData, cfg: Config, d: distributed.Dist, device, autocast):
        self.data, self.cfg, self.d, self.device, self.autocast = data, cfg, d, device, autocast

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, split: str, max_batches: int | None = None
                 ) -> float:
        """Accuracy on `split`; with max_batches, on a fixed random subset of that many global
        batches."""
        batch = self.cfg.trainer.batch_size
        limit = None if max_batches is None else max_batches * batch
        shard = distributed.Shard(len(self.data.splits[split]), self.d, limit, self.cfg.seed)
        loader = self.data.eval_loader(split, batch // self.d.world, shard, self.cfg.data)
        was_training = model.training
        model.eval()
        correct = total = 0
        for tokens, mask, labels in loader:
            tokens, mask, labels = (t.to(self.device) for t in (tokens, mask, labels))
            with self.autocast():
                logits = model(tokens, mask)
            correct += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
        model.train(was_training)
        correct, total = self.d.sum([correct, total], self.device)
        return correct / max(total, 1)


def metrics_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def line_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line cut short by a kill counts as after any step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def run_folder(cfg: Config, data_digest: str) -> tuple[str, Path]:
    name = f"{cfg.task.name}-{cfg.attention.name}-s{cfg.seed}"
    folder = f"{name}-{fingerprint(cfg, data_digest)}"
    return name, Path(cfg.runs_dir) / cfg.data.name / cfg.tag / folder


def accumulated_backward(ddp: torch.nn.Module, batch: tuple[torch.Tensor, ...], accumulate: int,
                         autocast, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Forward and backward of this process's batch in `accumulate` equal micro-batches.

    Each micro-batch's mean loss is weighted 1 / accumulate, so the summed gradients are those of
    the whole batch; under DDP the gradients are all-reduced once, on the last micro-batch.
    Returns the batch's mean loss (detached).
    """
    total = torch.zeros(())
    micro = zip(*(t.chunk(accumulate) for t in batch), strict=True)
    for i, (tokens, mask, labels) in enumerate(micro):
        defer_sync = i < accumulate - 1 and isinstance(ddp, DistributedDataParallel)
        with ddp.no_sync() if defer_sync else nullcontext():
            with autocast():
                loss = torch.nn.functional.cross_entropy(ddp(tokens, mask).float(), labels)
            scaler.scale(loss / accumulate).backward()
        total = total + loss.detach().cpu() / accumulate
    return total


def kernel_backend(model: torch.nn.Module) -> str:
    """The kernel backends the model's attentions ran (comma-separated), "-" for none."""
    names = {getattr(m, "backend_in_use", None) for m in model.modules()} - {None}
    return ",".join(sorted(names)) or "-"


def train(cfg: Config) -> dict[str, Any]:
    """Run one training job end to end and return its summary."""
    tc = cfg.trainer
    d = distributed.init_from_env(use_cuda=tc.device != "cpu" and torch.cuda.is_available())
    device = pick_device(tc.device, d.local_rank)
    expect = {"num_classes": cfg.task.num_classes, "pair": cfg.task.pair,
              "max_len": cfg.task.max_len}
    # Rank 0 first: it builds a missing mini task once, before the other processes read it.
    manifest = prepare_manifest(cfg.task.name, cfg.data, expect=expect) if d.main else None
    d.barrier()
    if manifest is None:
        manifest = prepare_manifest(cfg.task.name, cfg.data, expect=expect)
    run_name, run_dir = run_folder(cfg, manifest_digest(manifest))
    train_size = manifest["splits"]["train"]["size"]
    if tc.batch_size % (d.world * tc.accumulate) or tc.batch_size > train_size:
        raise ConfigError(f"trainer.batch_size={tc.batch_size} (the global batch) must be a "
                          f"multiple of the {d.world} process(es) x trainer.accumulate="
                          f"{tc.accumulate} and at most the {train_size} training examples")
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # One process (group) per run folder: a second launch of the same run stops here.
    with RunLock(run_dir) if d.main else nullcontext(), Preemption() as preemption:
        return train_in(cfg, d, device, manifest, run_name, run_dir, preemption)


def train_in(cfg: Config, d: distributed.Dist, device: torch.device, manifest: dict[str, Any],
             run_name: str, run_dir: Path, preemption: Preemption) -> dict[str, Any]:
    """`train` once the run folder is chosen and locked; SIGTERM/SIGUSR1 (`preemption`) stop
    it at a step boundary with a checkpoint."""
    tc = cfg.trainer
    train_size = manifest["splits"]["train"]["size"]
    summary_path = run_dir / "summary.json"
    if tc.resume and summary_path.exists():
        log.info("%s is already complete; skipping (trainer.resume=false reruns it)", run_dir)
        distributed.shutdown()
        return read_summary(summary_path)
    if d.main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        log.info("run folder: %s", run_dir)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    data = load_task_data(cfg.task.name, cfg.data, manifest)

    # The model (and any random features, hashes or blocks it draws) is the same on every rank.
    seed_everything(cfg.seed)
    model = build_model(cfg, manifest).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas),
                                  eps=tc.eps, weight_decay=tc.weight_decay)
    warmup = tc.warmup_steps
    # rsqrt keeps a warmup longer than the run: the original LRA's Retrieval config has one.
    if warmup >= tc.max_steps and tc.schedule != "rsqrt":
        warmup = max(1, tc.max_steps // 10)
        log.warning("trainer.warmup_steps=%d >= trainer.max_steps=%d: warming up for %d steps",
                    tc.warmup_steps, tc.max_steps, warmup)
    scheduler = schedules.build(optimizer, tc.schedule, warmup, tc.max_steps)
    dtype = amp_dtype(tc, device)
    # fp16 needs loss scaling (its gradients underflow); a disabled scaler passes through.
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def checkpoint() -> dict[str, Any]:
        """What last.pt holds to resume at `step` (the RNG is reseeded from the step)."""
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "totals": totals, "best_dev": best_dev}

    def autocast():
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype)

    # Progress and the measurements of the whole run (kept in last.pt across resumes).
    step, best_dev = 0, -1.0
    totals = {"train_time": 0.0, "timed_steps": 0, "real_tokens": 0, "peak_memory_mb": 0.0}
    metrics_path, last_path, best_path = (run_dir / n for n in ("metrics.jsonl", "last.pt",
                                                                 "best.pt"))
    if tc.resume and last_path.exists():
        state = load_checkpoint(last_path, device, full=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, totals = state["step"], state["totals"]
        # best.pt is written before last.pt, so it holds the best dev accuracy seen so far
        # (last.pt records it too, since a preempted run may have no best.pt yet).
        best_dev = state["best_dev"] if "best_dev" in state else load_checkpoint(
            best_path, torch.device("cpu"), full=False)["dev_accuracy"]
        if d.main:  # evaluations after the checkpoint are redone: drop their lines
            atomic_write_text(metrics_path, "".join(
                line + "\n" for line in metrics_lines(metrics_path) if line_step(line) <= step))
        log.info("resumed %s at step %d (best dev %.4f)", run_dir, step, best_dev)
    elif d.main and metrics_path.exists():
        metrics_path.unlink()  # a fresh start owns its metrics log

    # DDP averages gradients over processes; evaluation and checkpoints use the plain module.
    ddp = model
    if d.world > 1:
        ddp = DistributedDataParallel(model, device_ids=[d.local_rank]
                                      if device.type == "cuda" else None)
    batches = distributed.StepBatches(train_size, tc.batch_size, cfg.seed, step, d)
    train_batches = iter(data.train_loader(batches, cfg.data))
    evaluate = Evaluator(data, cfg, d, device, autocast)
    logger = Logger(cfg, run_name, run_dir, enabled=d.main)

    # The first MEMORY_STEPS steps of each process measure peak memory (lra.memory), the
    # others are timed: counting CPU memory slows every op, and the first steps hold one-off
    # set-up work (lazy optimizer state, kernel selection) that is no step time.
    memory = PeakMemory(device)
    first_step = step
    model.train()
    bar = tqdm(total=tc.max_steps, initial=step, desc=run_name, file=sys.stderr,
               disable=not (tc.progress and d.main), dynamic_ncols=True)
    clock = StepClock(step, tc.max_steps, tc.eval_every, on_cpu=device.type == "cpu",
                      enabled=d.main)
    while step < tc.max_steps:
        distributed.reseed(cfg.seed, d.rank, step)  # dropout: resumable at any step boundary
        batch = tuple(t.to(device) for t in next(train_batches))
        mask = batch[1]
        measured = step - first_step < MEMORY_STEPS
        start = time.perf_counter()
        with memory if measured else nullcontext():
            optimizer.zero_grad(set_to_none=True)
            loss = accumulated_backward(ddp, batch, tc.accumulate, autocast, scaler)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{run_name}: loss became {loss.item()} at step {step}")
            lr = optimizer_step(model, optimizer, scaler, scheduler, tc.grad_clip)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        if measured:
            totals["peak_memory_mb"] = max(totals["peak_memory_mb"], memory.peak_mb())
        else:
            seconds = time.perf_counter() - start
            totals["train_time"] += seconds
            clock.tick(seconds)
            totals["timed_steps"] += 1
            totals["real_tokens"] += int(mask.sum())
        step += 1
        bar.update(1)

        if step % tc.eval_every == 0 or step == tc.max_steps:
            dev_acc = evaluate(model, "val", tc.eval_batches)
            if d.main:
                record = {"step": step, "loss": loss.item(), "lr": lr,
                          "dev_accuracy": dev_acc}
                append_jsonl(metrics_path, record)
                logger.log(record, step)
                if dev_acc > best_dev:
                    save_checkpoint(best_path, {"model": model.state_dict(), "step": step,
                                                "dev_accuracy": dev_acc})
            best_dev = max(best_dev, dev_acc)
            if d.main:
                save_checkpoint(last_path, checkpoint())
            d.barrier()
        bar.set_postfix(loss=f"{loss.item():.3f}",
                        best_dev="-" if best_dev < 0 else f"{best_dev:.3f}")  # "-": not evaluated
        if preemption.requested(d, device) and step < tc.max_steps:
            if d.main:
                save_checkpoint(last_path, checkpoint())
            d.barrier()
            preemption.pass_on()
    bar.close()

    model.load_state_dict(load_checkpoint(best_path, device, full=False)["model"])
    test_acc = evaluate(model, "test")
    [real_tokens] = d.sum([totals["real_tokens"]], device)
    train_labels = np.asarray(data.splits["train"].split.labels)
    test_labels = np.asarray(data.splits["test"].split.labels)
    majority = int(np.bincount(train_labels).argmax())
    train_time = totals["train_time"]
    summary = {
        "task": cfg.task.name, "attention": cfg.attention.name, "seed": cfg.seed,
        "device": str(device), "data": cfg.data.name, "mini": bool(manifest["mini"]),
        "params": params, "steps": step, "best_dev_accuracy": best_dev,
        "test_accuracy": test_acc, "majority_accuracy": float(np.mean(test_labels == majority)),
        "peak_memory_mb": totals["peak_memory_mb"],
        "step_time_ms": (1000 * train_time / totals["timed_steps"] if totals["timed_steps"]
                         else None),
        "tokens_per_s": real_tokens / train_time if train_time > 0 else None,
        "peak_memory_kind": f"{memory.kind}: peak growth in one training step (per process)",
        "kernel_backend": kernel_backend(model),
        "world_size": d.world, "attention_options": dict(cfg.attention.options),
        "data_digest": manifest_digest(manifest), "tag": cfg.tag, "protocol": cfg.protocol,
        "run_dir": str(run_dir),
    }
    check_summary(summary)
    if d.main:
        write_json(summary_path, summary)
        logger.finish(summary)
        log.info("%s: test accuracy %.4f (majority %.4f), best dev %.4f", run_name, test_acc,
                 summary["majority_accuracy"], best_dev)
    distributed.shutdown()
    return summary


# `--help` (conf/hydra/help/lra.yaml) lists each group's options as conf/ has them.
OmegaConf.register_new_resolver(
    "lra_options", lambda group: textwrap.fill(", ".join(group_options(group)), width=76,
                                               subsequent_indent=" " * 12), replace=True)
# `make lra-all`'s tasks (conf/experiment/lra_all.yaml): those the data_prep registry puts in it.
OmegaConf.register_new_resolver("lra_grid_tasks", lambda: ",".join(data_tasks.grid_names()),
                                replace=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(raw: DictConfig) -> float:
    # A user's mistake gets one clear line and exit 2, a bug exit 1 (lra.cli).
    summary = cli.call(lambda: train(load_config(raw)))
    # Returned for Hydra sweepers that optimise an objective.
    return float(summary["best_dev_accuracy"])


if __name__ == "__main__":
    # A typo in an override gets one line with the closest names, before Hydra composes.
    cli.call(lambda: check_overrides(sys.argv[1:]))
    main()
