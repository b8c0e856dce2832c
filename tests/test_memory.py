"""Peak memory that means the same in every run: tensor bytes, whatever ran before it."""

from __future__ import annotations

import json

import torch

from lra.memory import PeakMemory
from tests.conftest import run_train


def test_cpu_count_is_live_tensor_bytes():
    """Growth during a stretch: new storages count while alive, views and in-place results do
    not, and what existed before start does not."""
    before = torch.ones(1024, 1024)  # 4 MiB that exist at start
    memory = PeakMemory(torch.device("cpu"))
    assert memory.peak_mb() == 0.0  # nothing measured yet
    with memory:
        view = before.t()[:10]  # no new memory
        before.mul_(2)  # in place: none either
        a = torch.ones(128, 1024, dtype=torch.float64)  # 1 MiB (the dtype is a kwarg of the op)
        b = a * 2  # 1 MiB more: 2 live
        del a, b
        c = torch.ones(384, 1024)  # 1.5 MiB after both were freed: the peak stays 2
        assert memory.peak_mb() == 2.0  # read while measuring
        del c, view
    assert memory.peak_mb() == 2.0 and memory.kind == "cpu_live_tensor_bytes"
    with memory:
        before.add_(1)  # a stretch that allocates nothing
    assert memory.peak_mb() == 0.0
    # Nothing is left counting after stop: a later stretch starts from zero.
    junk = [torch.ones(1024, 1024) for _ in range(8)]
    del junk
    with memory:
        torch.ones(256, 1024)
    assert memory.peak_mb() == 1.0


def test_an_op_returning_an_input_and_a_new_tensor_counts_the_new_one_once():
    """What the dispatch rule sees, with an op written here: it returns its input, a view of
    its input, and a new 1 MiB tensor twice."""
    from lra.memory import LiveTensorBytes

    x = torch.zeros(8)

    def op(t):
        new = torch.ones(256, 1024)
        return t, t[2:], new, new[1:]

    counter = LiveTensorBytes()
    out = counter.__torch_dispatch__(op, (), (x,))
    assert counter.live == counter.peak == 2**20
    del out
    assert counter.live == 0 and counter.peak == 2**20


def test_cuda_uses_the_allocator_statistics():
    """The kind is named from the device alone (building it touches no GPU); the CUDA branch
    itself needs a GPU (tools/gpu_check.py)."""
    assert PeakMemory(torch.device("cuda")).kind == "cuda_max_allocated"


def test_multirun_and_single_runs_report_the_same_peak(tiny_data_root, tmp_path):
    """Two seeds in one multirun process and each seed alone: peak_memory_mb within 10%.
    Batches pad to max_len, so that the seeds' batches have one shape (with mini's default
    pad_to=batch a seed's longest example sets it, and memory follows the shape)."""
    common = (f"data.root={tiny_data_root}", "data.build_missing=false", "task.max_len=64",
              "data.pad_to=max",
              "trainer.batch_size=16", "trainer.max_steps=4", "trainer.eval_every=4",
              "trainer.progress=false")
    run_train("-m", "seed=0,1", *common, f"runs_dir={tmp_path}/multi",
              f"hydra.sweep.dir={tmp_path}/sweep")
    run_train("seed=1", *common, f"runs_dir={tmp_path}/single",
              f"hydra.run.dir={tmp_path}/hydra")
    figures = {}
    for kind in ("multi", "single"):
        for path in sorted((tmp_path / kind).rglob("summary.json")):
            summary = json.loads(path.read_text())
            figures[kind, summary["seed"]] = summary["peak_memory_mb"]
    assert set(figures) == {("multi", 0), ("multi", 1), ("single", 1)}
    low, high = min(figures.values()), max(figures.values())
    assert low > 0 and high <= 1.1 * low, figures
