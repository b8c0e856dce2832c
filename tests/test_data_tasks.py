"""The task registry: every registered task has its trainer config, and a toy task added through
the registry alone (here, with its config in a folder of the test) builds, prepares and trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from data_prep import mini, tasks
from data_prep.__main__ import main as data_prep_main
from data_prep.cache import Split, prepare_command, read_manifest, write_task
from lra.config import load_config
from lra.train import train
from tests.test_configs import CONF, TASKS

BITS = 15  # an odd count: "more ones than zeros" is never a tie
SPLIT_SIZES = {"train": 512, "val": 64, "test": 128}


def build_majority(out_dir: Path, progress: bool = True, seed: int = 0) -> Path:
    """Toy task: are most of BITS random bits ones? Tokens 1 (a zero) and 2 (a one), no
    padding; about half of each split is of each class."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name, n in SPLIT_SIZES.items():
        bits = rng.integers(0, 2, size=(n, BITS))
        splits[name] = Split((bits + 1).astype(np.uint8), np.full(n, BITS, dtype=np.int32),
                             (bits.sum(1) > BITS // 2).astype(np.int64))
    return write_task(out_dir, splits, task="majority", source="generate", num_classes=2,
                      vocab_size=3, max_len=BITS, mini=True, params={"seed": seed},
                      description="toy: are most bits ones? (a test's task)")


@pytest.fixture
def majority_task():
    def flags(p):
        p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")

    task = tasks.register(tasks.Task(
        name="majority", help="toy: are most of 15 bits ones?",
        sources={"generate": tasks.Source(
            "the toy's generator", lambda args, out: build_majority(out, seed=args.seed), flags)},
        mini=build_majority))
    yield task
    tasks.unregister("majority")


@pytest.fixture
def majority_conf(tmp_path) -> Path:
    """A config folder holding only conf/task/majority.yaml, for Hydra's search path."""
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "majority.yaml").write_text(
        f"name: majority\nnum_classes: 2\nmax_len: {BITS}\npair: false\nbatch_size: 32\n"
        "warmup_steps: 5\nmax_steps: 40\neval_every: 20\n")
    return tmp_path / "conf"


def test_every_registered_task_has_a_task_config_and_back():
    assert sorted(tasks.names()) == TASKS


def test_the_registry_lists_tasks_in_lra_order_and_the_grid_leaves_pathx_out():
    assert tasks.names() == ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]
    assert tasks.grid_names() == ["listops", "text", "retrieval", "image", "pathfinder"]


def test_a_task_registered_twice_is_refused(majority_task):
    with pytest.raises(ValueError, match="task 'majority' is registered twice"):
        tasks.register(majority_task)


def test_a_toy_task_through_the_registry_alone_builds_and_trains(majority_task, majority_conf,
                                                                 tmp_path):
    # The command line and the messages know it.
    assert prepare_command("majority", "lra") == "python -m data_prep majority --source <generate>"
    assert data_prep_main(["majority", "--source", "generate", "--seed", "3",
                           "--out", str(tmp_path / "lra" / "majority")]) == 0
    assert read_manifest(tmp_path / "lra" / "majority", task="majority")["params"] == {"seed": 3}
    assert "majority" in tasks.mini_names() and "majority" in tasks.grid_names()
    # The trainer builds its mini data on first use (data.build_missing) and trains on it.
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        raw = compose("config", overrides=[
            f"hydra.searchpath=[file://{majority_conf}]", "task=majority",
            f"data.root={tmp_path / 'mini'}", "data.build_missing=true", f"runs_dir={tmp_path}",
            "trainer.lr=1e-3", "trainer.progress=false", "trainer.device=cpu"])
    summary = train(load_config(raw))
    assert read_manifest(tmp_path / "mini" / "majority", task="majority", data="mini")["mini"]
    assert summary["task"] == "majority" and summary["steps"] == 40 and summary["mini"] is True
    saved = json.loads(Path(summary["run_dir"], "summary.json").read_text())
    assert saved["test_accuracy"] == summary["test_accuracy"]
    # 128 test examples: an accuracy is a count of them, and counting 15 bits is learnable.
    assert summary["test_accuracy"] * SPLIT_SIZES["test"] == pytest.approx(
        round(summary["test_accuracy"] * SPLIT_SIZES["test"]))
    assert summary["test_accuracy"] > summary["majority_accuracy"] + 0.1
    # The mini suite builds it too.
    assert mini.build(tmp_path / "suite", ["majority"], progress=False) == [
        tmp_path / "suite" / "majority"]
