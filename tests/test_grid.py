"""`make lra-all` end to end on a 2 x 2 grid (ListOps and Image x softmax and MRA-2, tiny data,
the smoke profile cut to a few steps): the sweep, its table, and a sweep killed midway."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attention_zoo import list_attentions
from data_prep import image
from lra import grid
from lra.cli import UserError
from tests.conftest import ROOT

GRID = ("TASKS=listops,image", "ATTENTIONS=softmax,mra2", "DATA=mini", "TRAINER=smoke")
RUNS = {"listops-softmax-s0", "listops-mra2-s0", "image-softmax-s0", "image-mra2-s0"}
ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def grid_data(tiny_data_root, tmp_path_factory) -> Path:
    """tiny ListOps and the mini Image task (digits) under one data root."""
    root = tmp_path_factory.mktemp("grid_data")
    (root / "listops").symlink_to(tiny_data_root / "listops")
    image.build_mini(root / "image", progress=False)
    return root


def make_lra_all(data_root: Path, tmp_path: Path) -> list[str]:
    """The `make lra-all` command of the 2 x 2 grid in this test's environment (`-o` skips the
    venv step: the environment is installed) with each run cut to 4 steps."""
    overrides = [f"data.root={data_root}", "data.build_missing=false", "trainer.max_steps=4",
                 "trainer.eval_every=2", "trainer.eval_batches=1", "trainer.batch_size=16",
                 "trainer.progress=false", f"hydra.sweep.dir={tmp_path}/multirun",
                 f"--runs-dir={tmp_path}/runs", f"--out={tmp_path}/out"]
    return ["make", "--no-print-directory", "-o", ".venv/.installed", "lra-all",
            f"PY={sys.executable}", *GRID, "OVERRIDES=" + " ".join(overrides)]


def summaries(tmp_path: Path) -> dict[str, Path]:
    """run name (task-attention-seed) -> its summary.json."""
    return {p.parent.name.rsplit("-", 1)[0]: p
            for p in (tmp_path / "runs").rglob("summary.json")}


def test_make_lra_all_runs_the_grid_and_writes_the_table(grid_data, tmp_path):
    proc = subprocess.run(make_lra_all(grid_data, tmp_path), cwd=ROOT, env=ENV, text=True,
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(summaries(tmp_path)) == RUNS
    assert all(p.parent.parent.name == "small_protocol-mini-smoke"
               for p in summaries(tmp_path).values())  # the tag: protocol, data, trainer
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert {(r["task"], r["attention"], r["seeds"]) for r in rows} == {
        (t, a, "1") for t in ("listops", "image") for a in ("softmax", "mra2")}
    assert "MINI DATA" in (tmp_path / "out" / "results.md").read_text().splitlines()[0]
    for plot in ("accuracy_vs_memory.png", "accuracy_vs_speed.png", "accuracy_per_task.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 0, plot


def test_a_sweep_killed_midway_completes_on_rerun_without_rerunning_a_finished_run(
        grid_data, tmp_path):
    cmd = make_lra_all(grid_data, tmp_path)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not summaries(tmp_path) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # make, the grid and the sweep at once
    proc.wait()
    finished = {name: (p.stat().st_mtime_ns, p.read_text())
                for name, p in summaries(tmp_path).items()}
    assert 1 <= len(finished) < len(RUNS), "the sweep was not killed midway"
    rerun = subprocess.run(cmd, cwd=ROOT, env=ENV, text=True, capture_output=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = summaries(tmp_path)
    assert set(after) == RUNS
    for name, (mtime, text) in finished.items():
        assert (after[name].stat().st_mtime_ns, after[name].read_text()) == (mtime, text), name
    assert (rerun.stdout + rerun.stderr).count("already complete") == len(finished)


def test_slurm_launcher_preset_requeues_on_the_time_limit_signal():
    """conf/hydra/launcher/slurm.yaml on submitit: a GPU per run, SIGUSR1 before the limit."""
    proc = subprocess.run([sys.executable, "-m", "lra.train", "hydra/launcher=slurm",
                           "hydra.launcher.partition=gpu", "--cfg", "hydra"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from omegaconf import OmegaConf

    launcher = OmegaConf.create(proc.stdout).hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_task, launcher.signal_delay_s) == ("gpu", 1, 120)
    assert launcher.max_num_timeout > 0 and launcher.timeout_min > 0


def test_make_lra_all_without_data_prints_each_tasks_command_and_runs_nothing(tmp_path):
    cmd = ["make", "--no-print-directory", "-o", ".venv/.installed", "lra-all",
           f"PY={sys.executable}", "TASKS=listops,text", "ATTENTIONS=softmax",
           f"OVERRIDES=data.root={tmp_path}/none hydra.sweep.dir={tmp_path}/multirun "
           f"--runs-dir={tmp_path}/runs --out={tmp_path}/out"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, text=True, capture_output=True, timeout=300)
    assert proc.returncode != 0
    for task, sources in (("listops", "lra_release|generate"), ("text", "tfds|raw")):
        assert f"python -m data_prep {task} --source <{sources}>" in proc.stderr, task
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


# lra.grid's command line in process: what it asks Hydra to sweep and what it aggregates (the
# tests above run it end to end in subprocesses, where no mutation or coverage tool reaches).

@pytest.fixture
def planned(monkeypatch, tmp_path):
    """lra.grid.main with the sweep and the aggregation recorded instead of run: call it with the
    argument list and the sweep's exit status; it returns (exit status, calls). Runs and results
    go under tmp_path unless `own_dirs=False` (then the checkout's defaults)."""
    def run(argv: list[str], status: int = 0, own_dirs: bool = True):
        calls = {}

        def sweep(overrides):
            calls["sweep"] = overrides
            return status

        def aggregate(runs, out, title, wandb):
            calls["aggregate"] = (runs, out, title, wandb)
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.md").write_text("the table\n")

        monkeypatch.setattr(grid, "sweep", sweep)
        monkeypatch.setattr(grid, "aggregate", aggregate)
        dirs = [f"--runs-dir={tmp_path}/runs", f"--out={tmp_path}/out"] if own_dirs else []
        return grid.main([*dirs, *argv]), calls

    return run


def test_runs_and_results_go_under_the_checkouts_results_by_default(planned, monkeypatch,
                                                                    tmp_path):
    monkeypatch.setattr(grid, "ROOT", tmp_path / "checkout")  # where the table would be written
    status, calls = planned(["--data", "lra", "--launcher", "joblib"], own_dirs=False)
    assert status == 0
    results = tmp_path / "checkout" / "results"
    assert calls["sweep"][-2:] == [f"runs_dir={results / 'runs'}", "hydra/launcher=joblib"]
    assert calls["aggregate"][:2] == (results / "runs" / "lra" / "small_protocol-lra",
                                      results / "small_protocol-lra")


@pytest.mark.parametrize("argv", [["--data", "full"], ["--launcher", "ray"]])
def test_a_value_outside_an_options_choices_is_refused_by_the_parser(planned, argv, capsys):
    with pytest.raises(SystemExit) as err:
        planned(argv)
    assert err.value.code == 2
    assert f"argument {argv[0]}: invalid choice: '{argv[1]}'" in capsys.readouterr().err


def test_the_sweep_is_lra_train_multirun_from_the_checkout(monkeypatch, capsys):
    """One `python -m lra.train -m` with the overrides, run from the checkout's root (where
    conf/ and the default results/ are), its exit status returned and its command printed."""
    seen = {}

    def call(cmd, cwd):
        seen.update(cmd=cmd, cwd=cwd)
        return 5

    monkeypatch.setattr(grid.subprocess, "call", call)
    assert grid.sweep(["task=listops", "seed=0,1"]) == 5
    assert seen == {"cmd": [sys.executable, "-m", "lra.train", "-m", "task=listops", "seed=0,1"],
                    "cwd": ROOT}
    assert capsys.readouterr().out == "$ python -m lra.train -m task=listops seed=0,1\n"


def test_the_default_grid_is_every_task_and_every_compared_attention(planned, tmp_path, capsys):
    status, calls = planned([])
    assert status == 0
    task, attention, *rest = calls["sweep"]
    assert task == "task=listops,text,retrieval,image,pathfinder"  # Path-X is not in the grid
    compared = attention.removeprefix("attention=").split(",")
    assert set(compared) == set(list_attentions()) - {"softmax_naive"}, (
        "the grid runs every attention of the zoo but the cost baseline softmax_naive")
    assert rest == ["seed=0", "data=lra", "protocol=small_protocol", "trainer=default",
                    "tag=small_protocol-lra", f"runs_dir={tmp_path}/runs"]
    assert calls["aggregate"] == (tmp_path / "runs" / "lra" / "small_protocol-lra",
                                  tmp_path / "out", "LRA, small_protocol", False)
    assert capsys.readouterr().out.endswith(f"the table\n\nwritten to {tmp_path}/out\n")


def test_each_option_changes_its_part_of_the_sweep(planned, tmp_path):
    status, calls = planned(["--tasks", "listops", "--attentions", "softmax,mra2", "--seeds",
                             "0,1", "--data", "mini", "--protocol", "reproduce_mra",
                             "--launcher", "slurm", "--trainer", "smoke", "logger=wandb",
                             "trainer.accumulate=2"])
    assert status == 0
    assert calls["sweep"] == [
        "task=listops", "attention=softmax,mra2", "seed=0,1", "data=mini",
        "+experiment=reproduce_mra", "trainer=smoke", "tag=reproduce_mra-mini-smoke",
        f"runs_dir={tmp_path}/runs", "hydra/launcher=slurm", "logger=wandb", "trainer.accumulate=2"]
    assert calls["aggregate"] == (
        tmp_path / "runs" / "mini" / "reproduce_mra-mini-smoke", tmp_path / "out",
        "LRA, reproduce_mra (trainer=smoke: not the protocol's length)", True)
    _, calls = planned(["--protocol", "lra_original", "--tag", "mine"])
    assert calls["sweep"][4:7] == ["protocol=lra_original", "trainer=default", "tag=mine"]
    assert calls["aggregate"][0] == tmp_path / "runs" / "lra" / "mine"


def test_a_failed_sweep_returns_its_status_and_aggregates_nothing(planned):
    status, calls = planned(["--data", "mini"], status=3)
    assert status == 3 and "aggregate" not in calls


@pytest.mark.parametrize("argv, message", [
    (["--trainer", "quick"],
     "--trainer quick: no conf/trainer/quick.yaml; choices: default, smoke"),
    *[(["--protocol", name], f"--protocol {name}: not a protocol; choices: lra_original, "
       "small_protocol, reproduce_mra (conf/protocol/, or a preset of conf/experiment/)")
      for name in ("fast", "demo", "lra_all")],
])
def test_an_unknown_profile_or_protocol_is_refused_with_the_choices(planned, argv, message):
    """Before any run: a protocol is a conf/protocol/ file or a whole preset of conf/experiment/
    (demo and lra_all are presets of other commands, not protocols)."""
    with pytest.raises(UserError) as err:
        planned(argv)
    assert str(err.value) == message
