"""What the README promises about a run, checked by value on in-process runs of `lra.train.train`:
the summary's measurements, the run folder's fingerprint, `trainer.resume=false` and the wandb
run's name and group; and, in one process, what `lra.distributed` does with and without torchrun.

Timing is made exact with a fake clock: every `time.perf_counter()` call of the trainer advances
it by one step's duration, and an evaluation advances it by an hour, so a step time that counted
an evaluation would be off by orders of magnitude.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import lra.train
from lra import distributed, sampling
from lra.config import NOT_FINGERPRINTED, Config, fingerprint, load_config
from lra.memory import PeakMemory
from lra.run import RunFolder
from tests.test_configs import composed

EVALUATION_S = 3600.0  # fake seconds that one evaluation takes


class FakeClock:
    """perf_counter() for lra.train: each call moves time on by `step_s` (the trainer reads it
    once before and once after each step, so a step lasts exactly step_s). Fake times grow to
    hours, so a few ulps of rounding are left: compared with rel=1e-6."""

    def __init__(self, step_s: float):
        self.now, self.step_s = 0.0, step_s

    def perf_counter(self) -> float:
        self.now += self.step_s
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """Install a fake clock with 1 ms steps and evaluations of EVALUATION_S; returns it."""
    fake = FakeClock(0.001)
    monkeypatch.setattr(lra.train, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    evaluate = lra.train.Evaluator.__call__

    def slow_evaluate(self, *args, **kwargs):
        fake.now += EVALUATION_S
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(lra.train.Evaluator, "__call__", slow_evaluate)
    return fake


def tiny_config(data_root: Path, runs: Path, *overrides: str) -> Config:
    raw = composed("task.max_len=64", "trainer.batch_size=16", "trainer.max_steps=4",
                   "trainer.eval_every=2", "trainer.progress=false", "data.build_missing=false",
                   *overrides)
    raw.data.root, raw.runs_dir = str(data_root), str(runs)
    return load_config(raw)


def metric_steps(summary) -> list[int]:
    lines = Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_step_time_excludes_evaluation_and_tokens_are_the_real_ones(tiny_data_root, tmp_path,
                                                                    clock):
    """step_time_ms is the mean training step (1 ms on the fake clock, 3 evaluations of an hour
    excluded); tokens_per_s counts the real tokens of the batches trained on, from the cache's
    lengths (each batch is padded to 64 tokens, several times more). The first
    MEMORY_STEPS steps measure memory and are not timed, so both figures cover the rest."""
    steps = 5
    cfg = tiny_config(tiny_data_root, tmp_path, f"trainer.max_steps={steps}")
    summary = lra.train.train(cfg)
    assert summary["step_time_ms"] == pytest.approx(1.0, rel=1e-6)
    lengths = np.load(tiny_data_root / "listops" / "train.lengths.npy")
    batches = list(zip(sampling.StepBatches(len(lengths), 16, cfg.seed, 0,
                                            distributed.Dist()), range(steps), strict=False))
    timed = batches[lra.train.MEMORY_STEPS:]
    real = sum(int(lengths[b].sum()) for b, _ in timed)
    assert real < 0.7 * len(timed) * 16 * 64  # the check below tells real from padded tokens
    assert summary["tokens_per_s"] == pytest.approx(real / (len(timed) * 0.001), rel=1e-6)


def test_peak_memory_is_the_largest_growth_seen_over_the_run(tiny_data_root, tmp_path,
                                                             monkeypatch):
    """The summary's peak_memory_mb is the largest peak that lra.memory reported at any
    evaluation (here 7, then 5: not the last one)."""
    readings = iter([3.0, 7.0, 5.0])

    class Scripted(PeakMemory):
        def peak_mb(self) -> float:
            return next(readings)

    monkeypatch.setattr(lra.train, "PeakMemory", Scripted)
    summary = lra.train.train(tiny_config(tiny_data_root, tmp_path, "trainer.max_steps=6"))
    assert summary["peak_memory_mb"] == 7.0


def test_cpu_peak_memory_is_growth_over_the_start():
    """Memory held before start() is not counted; a 160 MB tensor made and freed after it is."""
    held = torch.ones(40 * 2**20)  # 160 MB in use before the measurement starts
    memory = PeakMemory(torch.device("cpu"))
    memory.start()
    assert memory.peak_mb() < 40
    temporary = torch.ones(40 * 2**20)
    del temporary
    assert 150 < memory.peak_mb() < 400
    del held


def test_resume_false_starts_over(tiny_data_root, tmp_path, clock):
    """With trainer.resume=false, a run whose last.pt exists is trained again from step 0 (its
    totals are not carried over: 2 ms steps, not a mix with the first run's 1 ms), its metrics
    log is rewritten, and the same folder is used; a later default run skips it."""
    first = lra.train.train(tiny_config(tiny_data_root, tmp_path))
    Path(first["run_dir"], "summary.json").unlink()  # as if killed after the last checkpoint
    clock.step_s = 0.002
    again = lra.train.train(tiny_config(tiny_data_root, tmp_path, "trainer.resume=false"))
    assert again["run_dir"] == first["run_dir"]
    assert again["step_time_ms"] == pytest.approx(2.0, rel=1e-6)
    assert metric_steps(again) == [2, 4]
    clock.step_s = 0.004
    skipped = lra.train.train(tiny_config(tiny_data_root, tmp_path))
    assert skipped["step_time_ms"] == pytest.approx(2.0, rel=1e-6)
    # Default resume of a run cut after its last checkpoint: the totals come from last.pt.
    Path(first["run_dir"], "summary.json").unlink()
    resumed = lra.train.train(tiny_config(tiny_data_root, tmp_path))
    assert resumed["step_time_ms"] == pytest.approx(2.0, rel=1e-6)


def test_a_changed_training_setting_is_a_new_run(tiny_data_root, tmp_path, clock):
    """Changing a setting that changes the result (the learning rate) trains a new run in a new
    folder instead of skipping to the finished one."""
    base = lra.train.train(tiny_config(tiny_data_root, tmp_path))
    clock.step_s = 0.002
    changed = lra.train.train(tiny_config(tiny_data_root, tmp_path, "trainer.lr=3e-4"))
    assert changed["run_dir"] != base["run_dir"]
    assert changed["step_time_ms"] == pytest.approx(2.0, rel=1e-6)  # trained, not skipped
    assert len(list(tmp_path.rglob("summary.json"))) == 2


# Stated here independently of lra.config: the keys that must not change what a run computes.
NOT_RESULTS = {"logger.name", "logger.project", "logger.group", "logger.mode", "trainer.resume",
               "trainer.progress", "trainer.device", "data.root", "data.build_missing",
               "data.verify_checksums", "data.num_workers", "runs_dir", "tag",
               # The protocol's name: the values it sets are fingerprinted themselves.
               "protocol",
               # Kernel backends are held to the reference by their tests (kernels/): the same
               # run up to the last bits.
               "attention.options.backend"}


def leaves(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "options":
            keys += leaves(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def changed(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, enum.Enum):  # another member: the dataclasses refuse other strings
        members = list(type(value))
        return members[(members.index(value) + 1) % len(members)]
    if isinstance(value, int):
        return value * 2 + 1
    if isinstance(value, float):  # stays a valid rate or fraction (dropout, eps, lr)
        return value / 2 + 0.25
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return [x / 2 for x in value]
    if isinstance(value, dict):
        return {**value, "changed": 1}
    return 3 if value is None else None


def with_changed(cfg: Config, key: str) -> Config:
    """cfg with the value at `key` (dotted) changed."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node[part]
    ref_type = OmegaConf.select(OmegaConf.structured(cfg), ".".join(parents) or "")
    ref_type = ref_type._get_node(leaf)._metadata.ref_type
    if node[leaf] is None and isinstance(ref_type, type) and issubclass(ref_type, enum.Enum):
        node[leaf] = next(iter(ref_type))  # an unset choice: set it to one
    else:
        node[leaf] = changed(node[leaf])
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), tree))


def test_every_setting_but_the_bookkeeping_ones_enters_the_fingerprint(tmp_path):
    """Each leaf of the config, changed alone, changes the fingerprint (so the run folder)
    exactly when it can change the result; the prepared data's digest changes it too."""
    cfg = tiny_config(tmp_path, tmp_path)
    keys = leaves(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
    assert set(NOT_FINGERPRINTED) <= NOT_RESULTS | {"logger"}
    assert "attention.options" in keys and "trainer.lr" in keys and len(keys) > 40
    base = fingerprint(cfg, "digest")
    for key in keys:
        other = fingerprint(with_changed(cfg, key), "digest")
        assert (other == base) == (key in NOT_RESULTS), key
    assert fingerprint(cfg, "other digest") != base
    # The run folder also names the data, the tag and the seed in clear.
    folder = RunFolder.of(cfg, "digest").path
    assert folder == Path(tmp_path) / "mini" / "default" / f"listops-softmax-s0-{base}"


def test_wandb_run_is_named_and_grouped(tiny_data_root, tmp_path, monkeypatch):
    """logger=wandb: the run is named {task}-{attention}-s{seed} and grouped by tag (or by
    logger.group), offline without an API key, and it gets every metrics line and the summary.
    wandb.init is replaced by a recorder: no network, no files."""
    import wandb

    calls = []

    class Run:
        def __init__(self, **kwargs):
            self.kwargs, self.logged, self.summary, self.finished = kwargs, [], {}, False
            calls.append(self)

        def log(self, metrics, step):
            self.logged.append((step, metrics))

        def finish(self):
            self.finished = True

    monkeypatch.setattr(wandb, "init", lambda **kwargs: Run(**kwargs))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    summary = lra.train.train(tiny_config(tiny_data_root, tmp_path, "logger=wandb", "tag=mytag",
                                          "seed=3"))
    [run] = calls
    assert run.kwargs["name"] == "listops-softmax-s3"
    assert run.kwargs["group"] == "mytag" and run.kwargs["mode"] == "offline"
    assert run.kwargs["dir"] == summary["run_dir"]
    lines = Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()
    assert [(s, m) for s, m in run.logged] == [(r["step"], r) for r in map(json.loads, lines)]
    assert run.summary == summary and run.finished
    lra.train.train(tiny_config(tiny_data_root, tmp_path, "logger=wandb",
                                "logger.group=mygroup", "logger.mode=online", "seed=4"))
    assert calls[1].kwargs["group"] == "mygroup" and calls[1].kwargs["mode"] == "online"


def test_without_torchrun_one_process_needs_no_process_group(monkeypatch):
    """No WORLD_SIZE (or WORLD_SIZE=1): rank 0 of 1, the main process; no group is joined, and
    barrier and sum are no-ops that never reach a collective (with no group, one would raise)."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for world in (None, "1"):
        if world is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world)
        d = distributed.init_from_env(use_cuda=False)
        assert (d.rank, d.world, d.local_rank, d.main) == (0, 1, 0, True)
    assert not torch.distributed.is_initialized()
    d.barrier()
    assert d.sum([0.1, 2.0], torch.device("cpu")) == [0.1, 2.0]
    assert distributed.Dist(rank=0, world=2).main and not distributed.Dist(rank=1, world=2).main


def test_under_torchrun_a_cpu_process_joins_a_gloo_group_and_takes_its_ranks(monkeypatch,
                                                                              tmp_path):
    """WORLD_SIZE > 1 (torchrun): the process joins the process group once, with Gloo on CPU,
    takes its rank from the group and its local rank from LOCAL_RANK; `shutdown` leaves the
    group (and is a no-op without one). The group is a real Gloo group of one process on a file
    store (torchrun's env:// rendezvous would wait for the other ranks), whose get_rank answers
    3, as for rank 3 of 4 on two nodes of two."""
    joined = []
    real_init = torch.distributed.init_process_group

    def init(*args, **kwargs):
        joined.append(kwargs)
        real_init(*args, **kwargs, init_method=f"file://{tmp_path / 'store'}", rank=0,
                  world_size=1)

    monkeypatch.setattr(torch.distributed, "init_process_group", init)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *args, **kwargs: 3)
    for name, value in [("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1")]:
        monkeypatch.setenv(name, value)
    try:
        d = distributed.init_from_env(use_cuda=False)
        assert (d.rank, d.world, d.local_rank, d.main) == (3, 4, 1, False)
        assert torch.distributed.is_initialized()
        assert torch.distributed.get_backend() == "gloo"
        assert distributed.init_from_env(use_cuda=False) == d and len(joined) == 1
        distributed.shutdown()
        assert not torch.distributed.is_initialized()
        distributed.shutdown()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_sum_reduces_float64_values_and_barrier_waits_only_with_peers(monkeypatch):
    """With peers, `sum` hands the collective a float64 tensor on the given device (float32
    would round 0.1 + 0.2 and lose 2**-1000) and returns the reduced values; `barrier` reaches
    the collective only when there are peers. The peer is simulated: all_reduce adds a second
    process's values in place, as a sum over two processes does."""
    peer = torch.tensor([0.2, 2.0**-1000], dtype=torch.float64)
    reduced, barriers = [], []

    def all_reduce(t):
        reduced.append((t.dtype, t.device))
        t += peer

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: barriers.append("barrier"))
    d = distributed.Dist(rank=1, world=2)
    assert d.sum([0.1, 2.0**-1000], torch.device("cpu")) == [0.1 + 0.2, 2.0**-999]
    assert reduced == [(torch.float64, torch.device("cpu"))]
    d.barrier()
    distributed.Dist().barrier()
    assert barriers == ["barrier"]
    assert distributed.Dist().sum([0.1], torch.device("cpu")) == [0.1] and len(reduced) == 1


def test_under_torchrun_a_gpu_process_binds_its_gpu_before_joining_nccl(monkeypatch):
    """With CUDA, the process binds to GPU LOCAL_RANK first (collectives would otherwise run on
    cuda:0 for every rank) and then joins with NCCL on that device. No GPU here: set_device and
    init_process_group are recorders (the backend name goes through torch's own parser, so a
    spelling torch accepts passes), and get_rank answers rank 2 of 4."""
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("bind", device)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend=None, device_id=None: calls.append(
                            ("join", backend and torch.distributed.Backend(backend), device_id)))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *args, **kwargs: 2)
    for name, value in [("WORLD_SIZE", "4"), ("RANK", "2"), ("LOCAL_RANK", "1")]:
        monkeypatch.setenv(name, value)
    d = distributed.init_from_env(use_cuda=True)
    assert calls == [("bind", 1), ("join", "nccl", torch.device("cuda", 1))]
    assert (d.rank, d.world, d.local_rank) == (2, 4, 1)
