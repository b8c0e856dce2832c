"""The training loop of lra.train, in process and by value: its helpers (device, AMP dtype,
warmup, batch-size check, optimizer step, evaluation, the learner and its state) and the loop's
order of steps, evaluations, checkpoints and the summary, each against a value computed here
independently (or a recorder standing in for torch's distributed parts, which need peers)."""

from __future__ import annotations

import json
import logging
import random
import sys
import types
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import lra.train
from lra import distributed, sampling
from lra.config import ConfigError
from lra.data import TaskData, load_task_data, manifest_digest
from lra.model import Classifier
from lra.run import RunFolder
from tests.test_train_claims import tiny_config


def tc_of(**values):
    """A trainer config's fields, as the helpers read them."""
    return types.SimpleNamespace(**values)


def test_pick_device_takes_cpu_and_refuses_cuda_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lra.train.pick_device("cpu", 3) == torch.device("cpu")
    assert lra.train.pick_device("auto", 3) == torch.device("cpu")
    with pytest.raises(ConfigError) as error:
        lra.train.pick_device("cuda", 0)
    assert str(error.value) == ("trainer.device=cuda but no CUDA device is available; use "
                                "trainer.device=auto or cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert lra.train.pick_device("cpu", 3) == torch.device("cpu")
    assert lra.train.pick_device("auto", 3) == torch.device("cuda", 3)
    assert lra.train.pick_device("cuda", 1) == torch.device("cuda", 1)


def test_amp_dtype_is_the_configured_one_on_cuda_only():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert lra.train.amp_dtype(tc_of(amp=True, amp_dtype="fp16"), cuda) is torch.float16
    assert lra.train.amp_dtype(tc_of(amp=True, amp_dtype="bf16"), cuda) is torch.bfloat16
    assert lra.train.amp_dtype(tc_of(amp=False, amp_dtype="fp16"), cuda) is None
    assert lra.train.amp_dtype(tc_of(amp=True, amp_dtype="fp16"), cpu) is None
    assert lra.train.amp_dtype(tc_of(amp=True, amp_dtype="bf16"), cpu) is None


def test_warmup_is_kept_unless_it_would_outlast_the_run(caplog):
    def warmup(steps, max_steps, schedule="onecycle"):
        return lra.train.warmup_steps(tc_of(warmup_steps=steps, max_steps=max_steps,
                                            schedule=schedule))

    with caplog.at_level(logging.WARNING, logger="lra.train"):
        assert warmup(99, 100) == 99
        assert warmup(1000, 5000, "rsqrt") == 1000
        assert not caplog.records
        assert warmup(8000, 5000, "rsqrt") == 8000  # rsqrt keeps a warmup past the run
        assert warmup(100, 100) == 10  # a tenth of the run
        assert warmup(1000, 250, "cosine") == 25
        assert warmup(5, 4) == 1  # at least one step
        assert warmup(1000, 25) == 2  # a whole number of steps: 25 // 10, not 2.5
    assert [r.getMessage() for r in caplog.records] == [
        "trainer.warmup_steps=100 >= trainer.max_steps=100: warming up for 10 steps",
        "trainer.warmup_steps=1000 >= trainer.max_steps=250: warming up for 25 steps",
        "trainer.warmup_steps=5 >= trainer.max_steps=4: warming up for 1 steps",
        "trainer.warmup_steps=1000 >= trainer.max_steps=25: warming up for 2 steps"]


def test_batch_size_must_split_over_processes_and_micro_batches_and_fit_the_data():
    two = distributed.Dist(rank=0, world=2)
    lra.train.check_batch_size(tc_of(batch_size=12, accumulate=3), two, 12)
    lra.train.check_batch_size(tc_of(batch_size=1, accumulate=1), distributed.Dist(), 1)
    for batch, accumulate, size in ((12, 3, 11), (10, 3, 100), (6, 2, 100), (9, 1, 100)):
        with pytest.raises(ConfigError) as error:
            lra.train.check_batch_size(tc_of(batch_size=batch, accumulate=accumulate), two, size)
        assert str(error.value) == (
            f"trainer.batch_size={batch} (the global batch) must be a multiple of the 2 "
            f"process(es) x trainer.accumulate={accumulate} and at most the {size} training "
            f"examples")


def test_kernel_backend_names_each_backend_the_attentions_ran_once_sorted():
    def module(backend=None, children=()):
        m = torch.nn.Sequential(*children)
        if backend is not None:
            m.backend_in_use = backend
        return m

    assert lra.train.kernel_backend(module(children=[module(), module()])) == "-"
    model = module(children=[module("triton"), module("cpp", [module("triton")]), module()])
    assert lra.train.kernel_backend(model) == "cpp,triton"
    assert lra.train.kernel_backend(module("reference")) == "reference"


def test_one_process_trains_the_model_itself_and_several_wrap_it_in_ddp(monkeypatch):
    model = torch.nn.Linear(2, 2)
    assert lra.train.data_parallel(model, distributed.Dist(), torch.device("cpu")) is model
    calls = []
    monkeypatch.setattr(lra.train, "DistributedDataParallel",
                        lambda module, device_ids: calls.append((module, device_ids)) or "ddp")
    two = distributed.Dist(rank=1, world=2, local_rank=1)
    assert lra.train.data_parallel(model, two, torch.device("cpu")) == "ddp"
    assert lra.train.data_parallel(model, two, torch.device("cuda", 1)) == "ddp"
    assert calls == [(model, None), (model, [1])]


class Schedule:
    """A scheduler recorder: counts its steps."""

    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1


def test_optimizer_step_clips_steps_and_returns_the_lr_it_used():
    """With grad_clip the update is taken from gradients of norm grad_clip (SGD, lr 0.5: the
    parameter moves by 0.5 * clip * g / |g|); without it, from the raw gradients. The lr returned
    is the one before the schedule moved on."""
    for clip, moved in ((0.1, 0.5 * 0.1 * np.array([0.6, 0.8])), (0.0, 0.5 * np.array([3., 4.]))):
        weight = torch.nn.Parameter(torch.zeros(2))
        model = torch.nn.Module()
        model.weight = weight
        optimizer = torch.optim.SGD([weight], lr=0.5)
        weight.grad = torch.tensor([3.0, 4.0])
        scaler, schedule = torch.amp.GradScaler("cpu", enabled=False), Schedule()
        lr = lra.train.optimizer_step(model, optimizer, scaler, schedule, clip)
        np.testing.assert_allclose(-weight.detach().numpy(), moved, rtol=1e-6)
        assert lr == 0.5 and schedule.steps == 1
    weight.grad = torch.tensor([3.0, 4.0])
    optimizer.param_groups[0]["lr"] = 0.25
    assert lra.train.optimizer_step(model, optimizer, scaler, schedule, 0.0) == 0.25


def test_optimizer_step_unscales_before_clipping():
    """Under loss scaling (an enabled scaler, scale 8) the clip applies to the true gradients:
    scaled gradients (24, 32) are (3, 4) after unscaling, clipped to norm 1."""
    weight = torch.nn.Parameter(torch.zeros(2))
    model = torch.nn.Module()
    model.weight = weight
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(torch.zeros(()))  # the scaler's scale tensor, as a scaled backward makes it
    weight.grad = torch.tensor([24.0, 32.0])
    lra.train.optimizer_step(model, optimizer, scaler, Schedule(), 1.0)
    np.testing.assert_allclose(-weight.detach().numpy(), [0.6, 0.8], rtol=1e-6)


class FakeDDP(lra.train.DistributedDataParallel):
    """A DistributedDataParallel with no process group: it runs the module and records which
    micro-batches ran under no_sync (gradients all-reduced only on the others)."""

    def __init__(self, module):
        torch.nn.Module.__init__(self)
        self.module, self.synced = module, []
        self.in_no_sync = False

    def forward(self, *args):
        self.synced.append(not self.in_no_sync)
        return self.module(*args)

    def no_sync(self):
        ddp = self

        class NoSync:
            def __enter__(self):
                ddp.in_no_sync = True

            def __exit__(self, *exc):
                ddp.in_no_sync = False

        return NoSync()


def test_under_ddp_only_the_last_micro_batch_all_reduces():
    model = torch.nn.Linear(4, 3)

    def forward(tokens, mask):
        return model(tokens * mask[..., None])

    class Wrapped(torch.nn.Module):
        def forward(self, tokens, mask):
            return forward(tokens, mask)

    ddp = FakeDDP(Wrapped())
    batch = (torch.randn(6, 4), torch.ones(6, dtype=torch.bool), torch.tensor([0, 1, 2] * 2))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    lra.train.accumulated_backward(ddp, batch, 3, nullcontext, scaler)
    assert ddp.synced == [False, False, True]
    ddp.synced.clear()
    lra.train.accumulated_backward(ddp, batch, 1, nullcontext, scaler)
    assert ddp.synced == [True]


def test_accumulated_backward_scales_each_micro_batch_loss():
    """Under loss scaling each micro-batch's backward is of scale * loss / accumulate: the
    gradients are the whole batch's times the scale (8), and the returned loss is unscaled."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)

    class Wrapped(torch.nn.Module):
        def forward(self, tokens, mask):
            return model(tokens * mask[..., None])

    batch = (torch.randn(4, 4), torch.ones(4, dtype=torch.bool), torch.tensor([0, 1, 2, 0]))
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    loss = lra.train.accumulated_backward(Wrapped(), batch, 2, nullcontext, scaler)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    whole = torch.nn.functional.cross_entropy(model(batch[0]), batch[2])
    whole.backward()
    torch.testing.assert_close(loss, whole.detach(), rtol=0, atol=1e-6)
    for got, want in zip(grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, 8 * want, rtol=1e-5, atol=1e-6)


def split_of(labels):
    return types.SimpleNamespace(split=types.SimpleNamespace(labels=np.array(labels)))


def test_majority_accuracy_is_the_test_share_of_the_most_frequent_training_label():
    data = TaskData({}, {"train": split_of([0, 2, 2, 1, 2, 1]), "test": split_of([2, 2, 1, 2]),
                         "val": split_of([0])})
    evaluate = lra.train.Evaluator(data, None, distributed.Dist(), torch.device("cpu"),
                                   nullcontext)
    assert evaluate.majority_accuracy() == 0.75
    data.splits["test"] = split_of([0, 1, 1, 1, 1])
    assert evaluate.majority_accuracy() == 0.0


def manifest_of(cfg) -> dict:
    return json.loads((Path(cfg.data.root) / cfg.task.name / "manifest.json").read_text())


def no_dropout(data_root, runs, *overrides):
    return tiny_config(data_root, runs, "model.dropout=0", "attention.options.dropout=0",
                       *overrides)


def test_learner_builds_the_seeded_model_and_the_configured_optimizer(tiny_data_root, tmp_path):
    """The model is the Classifier of the task's sizes drawn after seeding every RNG with the
    run's seed; AdamW has the trainer's lr, betas, eps and weight decay; the schedule is the
    trainer's (linear, warmup 2 of 4 steps: factors 0.5, 1, 1, 0.5); nothing is done yet."""
    cfg = tiny_config(tiny_data_root, tmp_path, "seed=5", "trainer.lr=3e-4",
                      "trainer.betas=[0.8,0.95]", "trainer.eps=1e-7",
                      "trainer.weight_decay=0.05", "trainer.schedule=linear",
                      "trainer.warmup_steps=2")
    manifest = manifest_of(cfg)
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002 -- the global RNGs that seed_everything seeds
    learner = lra.train.Learner(cfg, manifest, torch.device("cpu"), "the-run")
    assert random.random() == random.Random(5).random()
    assert np.random.random() == np.random.RandomState(5).random_sample()  # noqa: NPY002
    torch.manual_seed(5)
    want = Classifier(cfg.model, cfg.attention, vocab_size=17, max_len=64, num_classes=10,
                      pair=False)
    got = learner.model.state_dict()
    assert got.keys() == want.state_dict().keys()
    for name, tensor in want.state_dict().items():
        assert torch.equal(got[name], tensor), name
    assert learner.name == "the-run" and learner.tc is cfg.trainer
    assert isinstance(learner.optimizer, torch.optim.AdamW)
    [group] = learner.optimizer.param_groups
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.95), 1e-7, 0.05)
    assert group["params"] == list(learner.model.parameters())
    lrs = []
    for _ in range(4):
        lrs.append(group["lr"])
        learner.optimizer.step()
        learner.scheduler.step()
    assert lrs == pytest.approx([1.5e-4, 3e-4, 3e-4, 1.5e-4], rel=1e-9)
    assert learner.dtype is None and not learner.scaler.is_enabled()
    assert isinstance(learner.autocast(), nullcontext)
    assert (learner.step, learner.best_dev) == (0, -1.0)
    assert learner.totals == {"train_time": 0.0, "timed_steps": 0, "real_tokens": 0,
                              "peak_memory_mb": 0.0}


def test_learner_autocasts_on_cuda_in_its_amp_dtype(tiny_data_root, tmp_path):
    learner = lra.train.Learner(tiny_config(tiny_data_root, tmp_path), manifest_of(
        tiny_config(tiny_data_root, tmp_path)), torch.device("cpu"), "run")
    learner.dtype = torch.bfloat16  # as amp_dtype gives it on CUDA
    with pytest.warns(UserWarning, match="CUDA is not available"):
        context = learner.autocast()  # built here; on a CUDA machine it would also be enabled
    assert isinstance(context, torch.autocast)
    assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)


def batch_of(cfg, manifest, step=0):
    data = load_task_data(cfg.task.name, cfg.data, manifest)
    batches = sampling.StepBatches(len(data.splits["train"]), cfg.trainer.batch_size, cfg.seed,
                                   step, distributed.Dist())
    return next(iter(data.train_loader(batches, cfg.data)))


def test_learner_state_round_trips_every_part(tiny_data_root, tmp_path):
    """load_state_dict(state_dict()) onto a learner of another seed gives the same model,
    optimizer moments, schedule position, loss scale (an enabled scaler, as fp16 has on CUDA),
    step, totals and best dev accuracy."""
    cfg = no_dropout(tiny_data_root, tmp_path)
    manifest = manifest_of(cfg)
    a = lra.train.Learner(cfg, manifest, torch.device("cpu"), "run")
    a.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    batch = batch_of(cfg, manifest)
    lra.train.train_step(a, a.model, batch, None, types.SimpleNamespace(tick=lambda s: None))
    a.step, a.best_dev = 7, 0.3
    a.totals["real_tokens"] = 123
    state = a.state_dict()
    assert set(state) == {"model", "optimizer", "scheduler", "scaler", "step", "totals",
                          "best_dev"}
    b = lra.train.Learner(tiny_config(tiny_data_root, tmp_path, "seed=1"), manifest,
                          torch.device("cpu"), "run")
    b.scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    b.load_state_dict(state)
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], tensor), name
    moments_a, moments_b = (x.optimizer.state_dict()["state"] for x in (a, b))
    assert moments_a.keys() == moments_b.keys() and moments_a
    for key, value in moments_a.items():
        assert torch.equal(value["exp_avg"], moments_b[key]["exp_avg"]), key
    assert b.scheduler.state_dict() == a.scheduler.state_dict()
    assert b.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"]
    assert b.scaler.get_scale() == a.scaler.get_scale() == 4.0
    assert (b.step, b.best_dev, b.totals) == (7, 0.3, a.totals)


class Ticks:
    def __init__(self):
        self.seconds = []

    def tick(self, seconds):
        self.seconds.append(seconds)


def test_train_step_updates_the_model_like_adamw_and_times_the_step(tiny_data_root, tmp_path,
                                                                    monkeypatch):
    """Two timed steps: the loss returned is the batch's cross entropy before the update, the
    parameters are those of AdamW steps written out here over the same batches (gradients
    cleared between steps and clipped to trainer.grad_clip), the lr returned is the one before
    the schedule moved on, and the totals count each step's (fake) time and the batch's real
    tokens."""
    now = [0.0]

    def perf_counter():
        now[0] += 0.25
        return now[0]

    monkeypatch.setattr(lra.train, "time", types.SimpleNamespace(perf_counter=perf_counter))
    cfg = no_dropout(tiny_data_root, tmp_path, "trainer.schedule=linear",
                     "trainer.warmup_steps=2", "trainer.lr=1e-3", "trainer.grad_clip=0.05")
    manifest = manifest_of(cfg)
    learner = lra.train.Learner(cfg, manifest, torch.device("cpu"), "run")
    torch.manual_seed(0)
    model = Classifier(cfg.model, cfg.attention, vocab_size=17, max_len=64, num_classes=10)
    model.load_state_dict(learner.model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
                                  weight_decay=0.0)
    ticks, tokens = Ticks(), 0
    for step, factor in enumerate((0.5, 1.0)):
        batch = batch_of(cfg, manifest, step)
        optimizer.param_groups[0]["lr"] = 1e-3 * factor
        optimizer.zero_grad()
        want = torch.nn.functional.cross_entropy(model(batch[0], batch[1]), batch[2])
        want.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        assert norm > 0.05  # the clip changes these updates
        optimizer.step()
        loss, lr = lra.train.train_step(learner, learner.model, batch, None, ticks)
        torch.testing.assert_close(loss, want.detach(), rtol=1e-5, atol=1e-6)
        assert lr == pytest.approx(1e-3 * factor, rel=1e-12)
        tokens += int(batch[1].sum())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(learner.model.state_dict()[name], tensor, rtol=1e-4,
                                   atol=1e-6, msg=name)
    assert ticks.seconds == [0.25, 0.25]
    assert tokens < 2 * 16 * 64  # real tokens, not the padded batch
    assert learner.totals == {"train_time": 0.5, "timed_steps": 2, "real_tokens": tokens,
                              "peak_memory_mb": 0.0}
    assert learner.step == 2


class Memory:
    """A PeakMemory stand-in: entered around the step, reads a scripted peak."""

    def __init__(self, peak):
        self.peak, self.entered = peak, 0

    def __enter__(self):
        self.entered += 1

    def __exit__(self, *exc):
        pass

    def peak_mb(self):
        return self.peak


def test_a_measured_step_records_its_peak_memory_and_is_not_timed(tiny_data_root, tmp_path):
    cfg = tiny_config(tiny_data_root, tmp_path)
    manifest = manifest_of(cfg)
    learner = lra.train.Learner(cfg, manifest, torch.device("cpu"), "run")
    batch, ticks = batch_of(cfg, manifest), Ticks()
    before = [p.detach().clone() for p in learner.model.parameters()]
    for peak in (5.0, 3.0):
        memory = Memory(peak)
        lra.train.train_step(learner, learner.model, batch, memory, ticks)
        assert memory.entered == 1
    assert learner.totals == {"train_time": 0.0, "timed_steps": 0, "real_tokens": 0,
                              "peak_memory_mb": 5.0}
    assert ticks.seconds == [] and learner.step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.model.parameters(),
                                                     strict=True))


def test_a_non_finite_loss_stops_the_step_with_the_run_and_step_named(tiny_data_root, tmp_path):
    cfg = tiny_config(tiny_data_root, tmp_path)
    manifest = manifest_of(cfg)
    learner = lra.train.Learner(cfg, manifest, torch.device("cpu"), "listops-softmax-s0")
    learner.step = 3
    with torch.no_grad():
        next(learner.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError) as error:
        lra.train.train_step(learner, learner.model, batch_of(cfg, manifest), None, Ticks())
    assert str(error.value) == "listops-softmax-s0: loss became nan at step 3"
    assert learner.step == 3


class Recorder:
    """Records calls to any of its methods as (name, args)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


def test_evaluate_and_save_writes_the_metrics_line_and_best_only_on_a_strict_improvement():
    accuracies = iter([0.5, 0.5, 0.75, 0.25])
    seen, barriers = [], Recorder()

    class Evaluate:
        d = barriers

        def __call__(self, model, split, max_batches=None):
            seen.append((model, split, max_batches))
            return next(accuracies)

    model = torch.nn.Linear(1, 1)
    learner = types.SimpleNamespace(model=model, tc=tc_of(eval_batches=3), step=0,
                                    best_dev=-1.0)
    learner.state_dict = lambda: {"last": learner.step}
    run, logger = Recorder(), Recorder()
    for step in (10, 20, 30, 40):
        learner.step = step
        lra.train.evaluate_and_save(learner, Evaluate(), torch.tensor(1.5), 1e-3, run, logger)
    assert seen == [(model, "val", 3)] * 4
    records = [{"step": s, "loss": 1.5, "lr": 1e-3, "dev_accuracy": a}
               for s, a in ((10, 0.5), (20, 0.5), (30, 0.75), (40, 0.25))]
    bests = [None] * 4
    bests[0] = {"model": model.state_dict(), "step": 10, "dev_accuracy": 0.5}
    bests[2] = {"model": model.state_dict(), "step": 30, "dev_accuracy": 0.75}
    assert [name for name, _ in run.calls] == ["evaluated"] * 4
    for (_, (record, last, best)), want_record, want_best, step in zip(
            run.calls, records, bests, (10, 20, 30, 40), strict=True):
        assert record == want_record and last == {"last": step}
        if want_best is None:
            assert best is None
        else:
            assert best.keys() == want_best.keys() and best["step"] == want_best["step"]
            assert best["dev_accuracy"] == want_best["dev_accuracy"]
            assert torch.equal(best["model"]["weight"], model.weight)
    assert logger.calls == [("log", (r, r["step"])) for r in records]
    assert barriers.calls == [("barrier", ())] * 4
    assert learner.best_dev == 0.75


def test_the_manifest_is_read_by_rank_0_before_the_others(tiny_data_root, tmp_path,
                                                          monkeypatch):
    cfg = tiny_config(tiny_data_root, tmp_path)
    events = []

    def prepare(task, data, *, expect):
        events.append(("prepare", task, data, expect))
        return {"read": len(events)}

    monkeypatch.setattr(lra.train, "prepare_manifest", prepare)
    expect = {"num_classes": 10, "pair": False, "max_len": 64}
    for main in (True, False):
        events.clear()
        d = types.SimpleNamespace(main=main, barrier=lambda: events.append(("barrier",)))
        manifest = lra.train.shared_manifest(cfg, d)
        read = ("prepare", "listops", cfg.data, expect)
        assert events == ([read, ("barrier",)] if main else [("barrier",), read])
        assert manifest == {"read": len(events) if not main else 1}


def test_the_model_takes_the_manifest_vocabulary_and_the_task_sizes(tiny_data_root, tmp_path):
    cfg = tiny_config(tiny_data_root, tmp_path, "task.num_classes=3", "task.pair=true")
    model = lra.train.build_model(cfg, {"vocab_size": 29})
    torch.manual_seed(0)
    want = Classifier(cfg.model, cfg.attention, vocab_size=29, max_len=64, num_classes=3,
                      pair=True)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in want.state_dict().items()}


class WandbRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.summary, self.finished = kwargs, [], {}, False

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


def test_wandb_logger_gets_the_project_the_whole_config_and_replaces_a_previous_run(
        tiny_data_root, tmp_path, monkeypatch, caplog):
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: runs.append(WandbRun(**kwargs))
                        or runs[-1])
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = tiny_config(tiny_data_root, tmp_path, "logger=wandb", "logger.project=proj",
                      "tag=t1")
    assert lra.train.Logger(cfg, "name", tmp_path, enabled=False).run is None
    none = lra.train.Logger(tiny_config(tiny_data_root, tmp_path), "name", tmp_path, True)
    assert none.run is None and not runs
    none.log({"a": 1}, 1)
    none.finish({"a": 1})
    with caplog.at_level(logging.INFO, logger="lra.train"):
        logger = lra.train.Logger(cfg, "the-run", tmp_path, enabled=True)
    [run] = runs
    assert logger.run is run
    assert run.kwargs == {"project": "proj", "name": "the-run", "group": "t1",
                          "dir": str(tmp_path), "mode": "offline",
                          "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
                          "reinit": "finish_previous"}
    assert [r.getMessage() for r in caplog.records] == [
        f"wandb runs offline (no WANDB_API_KEY); sync later with `wandb sync "
        f"{tmp_path / 'wandb'}`"]
    logger.log({"loss": 2.0}, 7)
    logger.finish({"test_accuracy": 0.5})
    assert run.logged == [(7, {"loss": 2.0})]
    assert run.summary == {"test_accuracy": 0.5} and run.finished
    monkeypatch.setenv("WANDB_API_KEY", "k")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lra.train"):
        lra.train.Logger(cfg, "the-run", tmp_path, enabled=True)
    assert runs[1].kwargs["mode"] == "online" and not caplog.records


def accuracy(model, data, split, cfg) -> float:
    """The accuracy of `model` on a whole split, in order, written out here."""
    model.eval()
    loader = data.eval_loader(split, 16, range(len(data.splits[split])), cfg.data)
    correct = total = 0
    with torch.no_grad():
        for tokens, mask, labels in loader:
            correct += int((model(tokens, mask).argmax(-1) == labels).sum())
            total += len(labels)
    return correct / total


def records_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class Bar:
    """A tqdm recorder."""

    made = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.postfixes, self.closed = kwargs, [], [], False
        Bar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def set_postfix(self, **kwargs):
        self.postfixes.append(kwargs)

    def close(self):
        self.closed = True


def test_the_summary_holds_the_run_by_value(tiny_data_root, tmp_path, monkeypatch):
    """5 steps, a dev evaluation every 2 and at the end: the metrics lines of steps 2, 4, 5 with
    the lr each update used (linear, warmup 2: factors 1, 2/3, 1/3 at updates 2, 4, 5), best.pt
    the first best evaluation, and a summary whose every figure is recomputed here: the test
    accuracy of best.pt's model, the majority baseline from the cache's labels, the parameter
    count, the data digest, the run folder."""
    threads, wrapped, seeds = [], [], []
    reseed = sampling.reseed
    monkeypatch.setattr(sampling, "reseed", lambda *args: seeds.append(args) or reseed(*args))
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(lra.train, "tqdm", Bar)
    Bar.made.clear()
    data_parallel = lra.train.data_parallel

    def recorded(model, d, device):
        wrapped.append((d, device))
        return data_parallel(model, d, device)

    monkeypatch.setattr(lra.train, "data_parallel", recorded)
    cfg = tiny_config(tiny_data_root, tmp_path, "seed=2", "tag=t", "trainer.max_steps=5",
                      "trainer.schedule=linear", "trainer.warmup_steps=2", "trainer.lr=1e-3",
                      "trainer.num_threads=1")
    summary = lra.train.train(cfg)
    assert threads == [1]
    assert wrapped == [(distributed.Dist(), torch.device("cpu"))]
    assert seeds == [(2, 0, step) for step in range(5)]  # (seed, rank, step) before each step
    [bar] = Bar.made
    assert bar.kwargs["disable"] and bar.updates == [1] * 5  # trainer.progress=false
    manifest = manifest_of(cfg)
    run_dir = RunFolder.of(cfg, manifest_digest(manifest)).path
    records = records_of(run_dir)
    assert [r["step"] for r in records] == [2, 4, 5]
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3], rel=1e-9)
    assert all(0.5 < r["loss"] < 5 for r in records)  # cross entropy near ln(10) = 2.3
    dev = [r["dev_accuracy"] for r in records]
    best = torch.load(run_dir / "best.pt", weights_only=False)
    assert best["dev_accuracy"] == max(dev) == summary["best_dev_accuracy"]
    assert best["step"] == records[dev.index(max(dev))]["step"]
    data = load_task_data("listops", cfg.data, manifest)
    model = Classifier(cfg.model, cfg.attention, vocab_size=17, max_len=64, num_classes=10)
    model.load_state_dict(best["model"])
    assert accuracy(model, data, "val", cfg) == best["dev_accuracy"]
    labels = {s: np.load(tiny_data_root / "listops" / f"{s}.labels.npy") for s in ("train",
                                                                                   "test")}
    majority = np.bincount(labels["train"]).argmax()
    last = torch.load(run_dir / "last.pt", weights_only=False)
    assert (last["step"], last["best_dev"]) == (5, max(dev))
    assert last["totals"]["timed_steps"] == 5 - lra.train.MEMORY_STEPS
    peak = summary.pop("peak_memory_mb")
    assert 0 < peak == last["totals"]["peak_memory_mb"]
    step_time, tokens_per_s = summary.pop("step_time_ms"), summary.pop("tokens_per_s")
    assert step_time == pytest.approx(1000 * last["totals"]["train_time"] / 3)
    assert tokens_per_s == pytest.approx(last["totals"]["real_tokens"]
                                         / last["totals"]["train_time"])
    assert summary == {
        "task": "listops", "attention": "softmax", "seed": 2, "device": "cpu", "data": "mini",
        "mini": True, "params": sum(p.numel() for p in model.parameters()), "steps": 5,
        "best_dev_accuracy": max(dev), "test_accuracy": accuracy(model, data, "test", cfg),
        "majority_accuracy": float(np.mean(labels["test"] == majority)),
        "test_examples": len(labels["test"]),
        "peak_memory_kind": "cpu_live_tensor_bytes: peak growth in one training step "
                            "(per process)",
        "kernel_backend": "-", "world_size": 1,
        "attention_options": dict(cfg.attention.options), "data_digest": manifest_digest(
            manifest), "tag": "t", "protocol": "small_protocol", "run_dir": str(run_dir)}
    assert json.loads((run_dir / "summary.json").read_text())["test_accuracy"] == (
        summary["test_accuracy"])


class Clock(lra.train.StepClock):
    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Clock.made.append((args, kwargs))


class Preempted:
    """A Preemption whose signal arrives during step `at` (counted from 1 in this process):
    requested() says so after it; pass_on() then stops as SIGTERM's default would."""

    def __init__(self, at):
        self.at, self.asked, self.passed = at, 0, 0

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def requested(self, d, device):
        self.asked += 1
        return self.asked >= self.at

    def pass_on(self):
        self.passed += 1
        raise SystemExit(143)


def test_a_preempted_run_checkpoints_its_step_and_resumes_to_the_uninterrupted_result(
        tiny_data_root, tmp_path, monkeypatch, caplog):
    """A signal in step 3 of 4 (eval every 2): last.pt holds step 3 and no summary is written;
    the same call resumes there (its bar and plan start at step 3) and ends with the model,
    metrics and summary of a run never stopped (dropout on: the RNG follows the step). A signal
    in the last step stops nothing. A finished run is skipped with its summary."""
    monkeypatch.setattr(lra.train, "tqdm", Bar)
    monkeypatch.setattr(lra.train, "StepClock", Clock)
    Bar.made.clear()
    Clock.made.clear()
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    preempted = Preempted(at=3)
    monkeypatch.setattr(lra.train, "Preemption", preempted)
    cfg = tiny_config(tiny_data_root, stopped, "trainer.progress=true")
    with pytest.raises(SystemExit) as stop:
        lra.train.train(cfg)
    assert stop.value.code == 143 and preempted.passed == 1
    run_dir = RunFolder.of(cfg, manifest_digest(manifest_of(cfg))).path
    assert torch.load(run_dir / "last.pt", weights_only=False)["step"] == 3
    assert [r["step"] for r in records_of(run_dir)] == [2]
    assert not (run_dir / "summary.json").exists()
    at_end = Preempted(at=1)  # the resumed call's first step is step 4, the last
    monkeypatch.setattr(lra.train, "Preemption", at_end)
    resumed = lra.train.train(cfg)
    assert at_end.asked == 1 and at_end.passed == 0  # asked after step 4 only: no stop there
    monkeypatch.setattr(lra.train, "Preemption", Preempted(at=99))
    straight = lra.train.train(tiny_config(tiny_data_root, whole, "trainer.progress=true"))
    final = [torch.load(Path(s["run_dir"]) / "last.pt", weights_only=False)
             for s in (resumed, straight)]
    assert final[0]["step"] == final[1]["step"] == 4
    # Each call measures the memory of its own first MEMORY_STEPS steps: the resumed call's
    # step 4 was measured, so 1 step was timed (step 3, in the first call), not 2.
    assert (final[0]["totals"]["timed_steps"], final[1]["totals"]["timed_steps"]) == (1, 2)
    for name, tensor in final[1]["model"].items():
        assert torch.equal(final[0]["model"][name], tensor), name
    assert records_of(Path(resumed["run_dir"])) == records_of(Path(straight["run_dir"]))
    for key in ("steps", "best_dev_accuracy", "test_accuracy"):
        assert resumed[key] == straight[key], key
    name = "listops-softmax-s0"
    assert [(b.kwargs, b.updates, b.closed) for b in Bar.made] == [
        ({"total": 4, "initial": start, "desc": name, "file": sys.stderr, "disable": False,
          "dynamic_ncols": True}, [1] * count, closed)
        for start, count, closed in ((0, 3, False), (3, 1, True), (0, 4, True))]
    assert [c for c in Clock.made] == [((start, 4, 2), {"on_cpu": True, "enabled": True})
                                       for start in (0, 3, 0)]
    records = records_of(Path(straight["run_dir"]))
    best = [f"{max(r['dev_accuracy'] for r in records[:i + 1]):.3f}" for i in range(2)]
    postfixes = Bar.made[2].postfixes
    assert [p["best_dev"] for p in postfixes] == ["-", best[0], best[0], best[1]]
    assert [postfixes[i]["loss"] for i in (1, 3)] == [f"{r['loss']:.3f}" for r in records]
    with caplog.at_level(logging.INFO, logger="lra.train"):
        assert lra.train.train(cfg) == resumed
    assert f"{run_dir} is already complete; skipping (trainer.resume=false reruns it)" in [
        r.getMessage() for r in caplog.records]
    assert len(Bar.made) == 3  # the skip trains nothing


class Stop(Exception):
    """Raised by a recorder to end a run once it has seen what the test asks about."""


def test_the_process_group_the_device_and_the_run_folder_follow_the_config(
        tiny_data_root, tmp_path, monkeypatch):
    """train() asks lra.distributed for a CUDA (NCCL) group exactly when trainer.device is not
    cpu and CUDA is available; the device is trainer.device's on the process's LOCAL_RANK; only
    the main process writes the run folder. Recorders stand in for the process group and for
    RunFolder.start (where the run is stopped: no CUDA here to train on)."""
    seen = []

    def init_from_env(use_cuda):
        seen.append(use_cuda)
        return distributed.Dist(rank=rank, world=1, local_rank=3)

    def start(self, cfg, device, *, resume):
        seen.append((self.writer, cfg, device, resume))
        raise Stop

    monkeypatch.setattr(distributed, "init_from_env", init_from_env)
    monkeypatch.setattr(RunFolder, "start", start)
    for available, device, rank, want_cuda, want_device in (
            (True, "cpu", 0, False, torch.device("cpu")),
            (True, "auto", 0, True, torch.device("cuda", 3)),
            (True, "cuda", 1, True, torch.device("cuda", 3)),
            (False, "auto", 0, False, torch.device("cpu"))):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        cfg = tiny_config(tiny_data_root, tmp_path / device, f"trainer.device={device}",
                          "trainer.resume=false")
        seen.clear()
        with pytest.raises(Stop):
            lra.train.train(cfg)
        assert seen == [want_cuda, (rank == 0, cfg, want_device, False)], (available, device)


def test_a_loss_that_becomes_nan_stops_the_run_naming_it(tiny_data_root, tmp_path,
                                                         monkeypatch):
    build = lra.train.build_model

    def broken(cfg, manifest):
        model = build(cfg, manifest)
        with torch.no_grad():
            model.head[-1].bias.fill_(float("nan"))
        return model

    monkeypatch.setattr(lra.train, "build_model", broken)
    with pytest.raises(FloatingPointError) as error:
        lra.train.train(tiny_config(tiny_data_root, tmp_path))
    assert str(error.value) == "listops-softmax-s0: loss became nan at step 0"


def test_a_run_too_short_to_time_a_step_has_no_step_time(tiny_data_root, tmp_path):
    """The first MEMORY_STEPS steps are measured, not timed: a run of that many steps has no
    step time and no token rate (None, not a division by zero)."""
    summary = lra.train.train(tiny_config(tiny_data_root, tmp_path,
                                          f"trainer.max_steps={lra.train.MEMORY_STEPS}"))
    assert summary["steps"] == lra.train.MEMORY_STEPS
    assert summary["step_time_ms"] is None and summary["tokens_per_s"] is None


def test_the_bar_shows_a_dev_accuracy_of_zero_as_evaluated(tiny_data_root, tmp_path,
                                                          monkeypatch):
    """best_dev "-" means not evaluated yet: after an evaluation that scored 0 the bar says
    0.000."""
    monkeypatch.setattr(lra.train, "tqdm", Bar)
    monkeypatch.setattr(lra.train.Evaluator, "__call__", lambda self, model, split, n=None: 0.0)
    Bar.made.clear()
    summary = lra.train.train(tiny_config(tiny_data_root, tmp_path, "trainer.max_steps=2"))
    assert summary["best_dev_accuracy"] == 0.0
    [bar] = Bar.made
    assert [p["best_dev"] for p in bar.postfixes] == ["-", "0.000"]


@pytest.mark.parametrize("dtype, scaled", [(torch.float16, True), (torch.bfloat16, False)])
def test_the_learner_scales_the_loss_exactly_under_fp16(tiny_data_root, tmp_path, monkeypatch,
                                                        dtype, scaled):
    """The learner autocasts in amp_dtype's answer for its device, and only fp16 (whose
    gradients underflow) gets an enabled loss scaler. amp_dtype's CUDA answer is given by a
    recorder, and torch.cuda.is_available by a stub, so that GradScaler("cuda") does not
    disable itself here for want of a GPU."""
    seen = []
    monkeypatch.setattr(lra.train, "amp_dtype", lambda tc, device: seen.append((tc, device))
                        or dtype)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = tiny_config(tiny_data_root, tmp_path)
    learner = lra.train.Learner(cfg, manifest_of(cfg), torch.device("cpu"), "run")
    assert seen == [(cfg.trainer, torch.device("cpu"))]
    assert learner.dtype is dtype and learner.scaler.is_enabled() is scaled
