"""Train and evaluate one (task, attention, seed) run: `python -m lra.train task=listops
attention=mra2`, a sweep with `-m`, or several processes with `torchrun --nproc_per_node=N -m
lra.train ...` (DistributedDataParallel; `trainer.batch_size` stays the global batch).

The run folder (lra.run) is <runs_dir>/<data>/<tag>/<task>-<attention>-s<seed>-<fingerprint>,
where the fingerprint hashes every setting that changes the result. Re-running the same command
resumes from `last.pt` (with the exact data order, see lra.sampling), and skips a run whose
`summary.json` exists, so a killed sweep loses at most the run in progress.

`train` reads top to bottom: set-up, the training loop (`train_step`, and every eval_every steps
`evaluate_and_save`), the test of the best model (`summarize`).
"""

from __future__ import annotations

import logging
import os
import random
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

from . import cli, distributed, sampling, schedules
from .config import Config, ConfigError, load_config
from .data import TaskData, load_task_data, manifest_digest, prepare_manifest
from .eta import StepClock
from .memory import PeakMemory
from .model import Classifier
from .overrides import check_overrides, group_options
from .preemption import Preemption
from .run import RunFolder

log = logging.getLogger("lra.train")
# The first MEMORY_STEPS training steps of each process measure peak memory (lra.memory), the
# others are timed: counting CPU memory slows every op, and the first steps hold one-off set-up
# work (lazy optimizer state, kernel selection) that is no step time.
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
        shard = sampling.Shard(len(self.data.splits[split]), self.d, limit, self.cfg.seed)
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

    def majority_accuracy(self) -> float:
        """The test accuracy of always predicting the most frequent training label."""
        train_labels = np.asarray(self.data.splits["train"].split.labels)
        test_labels = np.asarray(self.data.splits["test"].split.labels)
        majority = int(np.bincount(train_labels).argmax())
        return float(np.mean(test_labels == majority))


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


def warmup_steps(tc: Any) -> int:
    """trainer.warmup_steps, or a tenth of the run when the warmup would outlast it (rsqrt keeps
    a warmup longer than the run: the original LRA's Retrieval config has one)."""
    if tc.warmup_steps < tc.max_steps or tc.schedule == "rsqrt":
        return tc.warmup_steps
    warmup = max(1, tc.max_steps // 10)
    log.warning("trainer.warmup_steps=%d >= trainer.max_steps=%d: warming up for %d steps",
                tc.warmup_steps, tc.max_steps, warmup)
    return warmup


class Learner:
    """The model with its optimizer, schedule and loss scaler, and the run's progress: what
    last.pt holds. (Not the RNG: each step reseeds it from the step, lra.sampling.reseed.)"""

    def __init__(self, cfg: Config, manifest: dict[str, Any], device: torch.device, name: str):
        self.tc, self.name = cfg.trainer, name  # name: the run's, for its error messages
        # The model (and any random features, hashes or blocks it draws) is the same on every rank.
        seed_everything(cfg.seed)
        self.model = build_model(cfg, manifest).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.tc.lr,
                                           betas=tuple(self.tc.betas), eps=self.tc.eps,
                                           weight_decay=self.tc.weight_decay)
        self.scheduler = schedules.build(self.optimizer, self.tc.schedule, warmup_steps(self.tc),
                                         self.tc.max_steps)
        self.dtype = amp_dtype(self.tc, device)
        # fp16 needs loss scaling (its gradients underflow); a disabled scaler passes through.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        # Progress and the measurements of the whole run (kept in last.pt across resumes).
        self.step, self.best_dev = 0, -1.0
        self.totals = {"train_time": 0.0, "timed_steps": 0, "real_tokens": 0,
                       "peak_memory_mb": 0.0}

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "totals": self.totals, "best_dev": self.best_dev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.totals, self.best_dev = state["step"], state["totals"], state["best_dev"]


def shared_manifest(cfg: Config, d: distributed.Dist) -> dict[str, Any]:
    """The task's manifest on every process; rank 0 reads it first, so that it builds a missing
    mini task once, before the other processes read it."""
    expect = {"num_classes": cfg.task.num_classes, "pair": cfg.task.pair,
              "max_len": cfg.task.max_len}
    manifest = prepare_manifest(cfg.task.name, cfg.data, expect=expect) if d.main else None
    d.barrier()
    return manifest or prepare_manifest(cfg.task.name, cfg.data, expect=expect)


def check_batch_size(tc: Any, d: distributed.Dist, train_size: int) -> None:
    if tc.batch_size % (d.world * tc.accumulate) or tc.batch_size > train_size:
        raise ConfigError(f"trainer.batch_size={tc.batch_size} (the global batch) must be a "
                          f"multiple of the {d.world} process(es) x trainer.accumulate="
                          f"{tc.accumulate} and at most the {train_size} training examples")


def data_parallel(model: torch.nn.Module, d: distributed.Dist, device: torch.device
                  ) -> torch.nn.Module:
    """The module the training step calls: DDP (which averages gradients over processes) under
    torchrun, else the model itself. Evaluation and checkpoints use the plain model."""
    if d.world == 1:
        return model
    return DistributedDataParallel(model, device_ids=[d.local_rank]
                                   if device.type == "cuda" else None)


def train_step(learner: Learner, ddp: torch.nn.Module, batch: tuple[torch.Tensor, ...],
               memory: PeakMemory | None, clock: StepClock) -> tuple[torch.Tensor, float]:
    """One optimizer step on this process's share of the global batch; returns its loss and lr.
    With `memory` the step measures its peak memory, else it is timed (see MEMORY_STEPS)."""
    start = time.perf_counter()
    with memory if memory is not None else nullcontext():
        learner.optimizer.zero_grad(set_to_none=True)
        loss = accumulated_backward(ddp, batch, learner.tc.accumulate, learner.autocast,
                                    learner.scaler)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{learner.name}: loss became {loss.item()} at step "
                                     f"{learner.step}")
        lr = optimizer_step(learner.model, learner.optimizer, learner.scaler, learner.scheduler,
                            learner.tc.grad_clip)
        if batch[0].device.type == "cuda":
            torch.cuda.synchronize(batch[0].device)
    totals = learner.totals
    if memory is not None:
        totals["peak_memory_mb"] = max(totals["peak_memory_mb"], memory.peak_mb())
    else:
        seconds = time.perf_counter() - start
        totals["train_time"] += seconds
        clock.tick(seconds)
        totals["timed_steps"] += 1
        totals["real_tokens"] += int(batch[1].sum())  # the mask's true positions
    learner.step += 1
    return loss, lr


def evaluate_and_save(learner: Learner, evaluate: Evaluator, loss: torch.Tensor, lr: float,
                      run: RunFolder, logger: Logger) -> None:
    """The dev evaluation after `learner.step`, then its metrics line and checkpoints (best.pt
    when it is the best yet, last.pt), on every process together."""
    dev_acc = evaluate(learner.model, "val", learner.tc.eval_batches)
    record = {"step": learner.step, "loss": loss.item(), "lr": lr, "dev_accuracy": dev_acc}
    best = None
    if dev_acc > learner.best_dev:
        best = {"model": learner.model.state_dict(), "step": learner.step,
                "dev_accuracy": dev_acc}
    learner.best_dev = max(learner.best_dev, dev_acc)
    run.evaluated(record, learner.state_dict(), best)
    logger.log(record, learner.step)
    evaluate.d.barrier()


def summarize(cfg: Config, manifest: dict[str, Any], learner: Learner, evaluate: Evaluator,
              memory: PeakMemory, run: RunFolder) -> dict[str, Any]:
    """The run's summary.json: the test accuracy of the model in place (the best one) and the
    measurements of the whole run."""
    d, device, totals = evaluate.d, evaluate.device, learner.totals
    [real_tokens] = d.sum([totals["real_tokens"]], device)
    train_time = totals["train_time"]
    return {
        "task": cfg.task.name, "attention": cfg.attention.name, "seed": cfg.seed,
        "device": str(device), "data": cfg.data.name, "mini": bool(manifest["mini"]),
        "params": sum(p.numel() for p in learner.model.parameters()), "steps": learner.step,
        "best_dev_accuracy": learner.best_dev, "test_accuracy": evaluate(learner.model, "test"),
        "majority_accuracy": evaluate.majority_accuracy(),
        "test_examples": len(evaluate.data.splits["test"]),
        "peak_memory_mb": totals["peak_memory_mb"],
        "step_time_ms": (1000 * train_time / totals["timed_steps"] if totals["timed_steps"]
                         else None),
        "tokens_per_s": real_tokens / train_time if train_time > 0 else None,
        "peak_memory_kind": f"{memory.kind}: peak growth in one training step (per process)",
        "kernel_backend": kernel_backend(learner.model),
        "world_size": d.world, "attention_options": dict(cfg.attention.options),
        "data_digest": manifest_digest(manifest), "tag": cfg.tag, "protocol": cfg.protocol,
        "run_dir": str(run.path),
    }


def train(cfg: Config) -> dict[str, Any]:
    """Run one training job end to end and return its summary. SIGTERM/SIGUSR1 stop it at a step
    boundary with a checkpoint (lra.preemption); the same call then resumes it."""
    tc = cfg.trainer
    d = distributed.init_from_env(use_cuda=tc.device != "cpu" and torch.cuda.is_available())
    device = pick_device(tc.device, d.local_rank)
    manifest = shared_manifest(cfg, d)
    train_size = manifest["splits"]["train"]["size"]
    check_batch_size(tc, d, train_size)
    run = RunFolder.of(cfg, manifest_digest(manifest), writer=d.main)
    # One process (group) per run folder: a second launch of the same run stops here.
    with run.lock(), Preemption() as preemption:
        if tc.resume and (finished := run.finished()) is not None:
            log.info("%s is already complete; skipping (trainer.resume=false reruns it)",
                     run.path)
            distributed.shutdown()
            return finished
        state = run.start(cfg, device, resume=tc.resume)
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        data = load_task_data(cfg.task.name, cfg.data, manifest, cfg.task.max_len)
        learner = Learner(cfg, manifest, device, run.name)
        if state is not None:
            learner.load_state_dict(state)
        ddp = data_parallel(learner.model, d, device)
        batches = iter(data.train_loader(sampling.StepBatches(
            train_size, tc.batch_size, cfg.seed, learner.step, d), cfg.data))
        evaluate = Evaluator(data, cfg, d, device, learner.autocast)
        logger = Logger(cfg, run.name, run.path, enabled=d.main)
        memory, first_step = PeakMemory(device), learner.step
        bar = tqdm(total=tc.max_steps, initial=learner.step, desc=run.name, file=sys.stderr,
                   disable=not (tc.progress and d.main), dynamic_ncols=True)
        clock = StepClock(learner.step, tc.max_steps, tc.eval_every,
                          on_cpu=device.type == "cpu", enabled=d.main)
        learner.model.train()
        while learner.step < tc.max_steps:
            sampling.reseed(cfg.seed, d.rank, learner.step)  # dropout: resumable at any step
            batch = tuple(t.to(device) for t in next(batches))
            measured = learner.step - first_step < MEMORY_STEPS
            loss, lr = train_step(learner, ddp, batch, memory if measured else None, clock)
            bar.update(1)
            if learner.step % tc.eval_every == 0 or learner.step == tc.max_steps:
                evaluate_and_save(learner, evaluate, loss, lr, run, logger)
            bar.set_postfix(loss=f"{loss.item():.3f}", best_dev="-" if learner.best_dev < 0
                            else f"{learner.best_dev:.3f}")  # "-": not evaluated yet
            if preemption.requested(d, device) and learner.step < tc.max_steps:
                run.checkpoint(learner.state_dict())
                d.barrier()
                preemption.pass_on()
        bar.close()
        learner.model.load_state_dict(run.best_checkpoint(device)["model"])
        summary = summarize(cfg, manifest, learner, evaluate, memory, run)
        run.finish(summary)
        logger.finish(summary)
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
