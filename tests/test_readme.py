"""Every command in README.md's fenced shell blocks works as written.

Each command (a `make` target stands for its Makefile recipe) is checked by what it runs:
- `lra.train`: its overrides pass the pre-flight check and its first job composes and validates;
  then it runs for two steps on tiny data (a sweep runs every job), its own overrides untouched
  and only the step count, the data root and the output folders appended.
- `lra.results`: runs as written on the runs the commands above it wrote.
- `data_prep`: the arguments parse; `data_prep mini --tasks listops` style commands would build
  the mini suite, and the commands that need the LRA release or build full-size data are only
  parsed (they would take minutes or need files a fresh clone lacks).
- `lra.bench`: runs as written at length 64, structured inputs, one budget point (`make bench`
  for two attentions); `--peers` without the `peers` extra must stop with a line naming it.
The whole check runs serially in one test so that a results command sees the runs before it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from data_prep import listops
from data_prep.__main__ import parser as data_prep_parser
from lra import bench, results
from lra.bench import peers
from lra.config import load_config
from lra.overrides import check_overrides
from tests.conftest import ROOT, run_train
from tests.test_configs import composed

PYTHONS = (".venv/bin/python", "python", "$(PY)")
# Appended to a training command: two steps on the tiny data already built.
TWO_STEPS = ("trainer.max_steps=2", "trainer.progress=false", "data.build_missing=false")
# What a README command may not do in a test, and why it is only checked, not run.
NOT_RUN = {
    "make setup": "builds the environment this test runs in",
    "make test": "is the test suite itself",
    "+experiment=lra_all": "trains 80 jobs on the prepared LRA data; its first job is composed",
    "results/runs/lra/lra_all": "aggregates the runs of make lra-all",
    "--release": "needs the LRA release (lra_release.gz); the arguments are parsed",
    "--source generate": "generates the full-size task (minutes); the arguments are parsed",
    "data_prep mini": "builds all five mini tasks (a minute); the arguments are parsed",
}


# `make lra-all` with any variables: tests/test_grid.py runs it through the Makefile.
GRID = "the grid; tests/test_grid.py runs it through the Makefile on a 2 x 2 mini grid"


def readme_commands(text: str) -> list[list[str]]:
    """The commands of the ```bash blocks, one per line, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        commands += [shlex.split(line, comments=True) for line in block.splitlines()]
    return [c for c in commands if c]


def make_recipe(target: str) -> list[list[str]]:
    """The commands of a Makefile target's recipe (its `@echo` lines left out), with the
    Makefile's `NAME ?= value` defaults put in for `$(NAME)`."""
    text = (ROOT / "Makefile").read_text()
    for name, value in re.findall(r"^(\w+) \?= (\S*)$", text, flags=re.M):
        text = text.replace(f"$({name})", value)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        if not line.lstrip().startswith(("@", "#")):
            recipe.append(shlex.split(line.strip(), comments=True))
    return recipe


def first_job(overrides: list[str]) -> list[str]:
    """A sweep's first job: every `a,b,c` sweep replaced by its first value."""
    job = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            prefix = "++" if override.is_force_add() else "+" if override.is_add() else ""
            job.append(f"{prefix}{override.key_or_group}={value}")
        else:
            job.append(override.input_line)
    return job


def run_demo(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lra.demo", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=600,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, f"lra.demo failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def lra_tiny_root(tmp_path_factory) -> Path:
    """A data root with a tiny ListOps cache marked as the benchmark (mini=False)."""
    root = tmp_path_factory.mktemp("lra")
    listops.build_generated(root / "listops", sizes={"train": 64, "val": 32, "test": 32},
                            seed=2, max_depth=4, max_args=4, min_length=4, max_length=64,
                            mini=False, progress=False)
    return root


def check_train(args: list[str], cwd: Path, roots: dict[str, Path]) -> str:
    check_overrides(args)
    overrides = [a for a in args if not a.startswith("-")]
    cfg = load_config(composed(*first_job(overrides)))
    reason = next((why for key, why in NOT_RUN.items() if key in args), None)
    if reason:
        return f"composed, not run: {reason}"
    assert cfg.task.name == "listops", "the tiny data holds ListOps only"
    run_train(*args, *TWO_STEPS, f"data.root={roots[cfg.data.name]}",
              f"runs_dir={cwd}/results/runs", f"hydra.run.dir={cwd}/hydra",
              f"hydra.sweep.dir={cwd}/multirun")
    return "composed, ran 2 steps"


def check_python(module: str, args: list[str], cwd: Path, roots: dict[str, Path],
                 monkeypatch, capsys) -> str:
    if module == "lra.train":
        return check_train(args, cwd, roots)
    if module == "lra.demo":
        assert not args, "make demo takes no arguments"
        proc = run_demo(f"--runs-dir={cwd}/demo_runs", f"--out={cwd}/demo",
                                *TWO_STEPS, f"data.root={roots['mini']}",
                                f"hydra.sweep.dir={cwd}/multirun")
        assert "results.md" in proc.stdout
        assert all((cwd / "demo" / name).stat().st_size > 0 for name in (
            "results.csv", "results.md", "accuracy_vs_memory.png", "accuracy_vs_speed.png"))
        return "ran its sweep for 2 steps a job, then the aggregation"
    if module == "lra.results":
        reason = next((why for key, why in NOT_RUN.items() if key in args), None)
        if reason:
            return f"not run: {reason}"
        monkeypatch.chdir(cwd)
        assert results.main(args) == 0
        return "ran"
    if module == "data_prep":
        data_prep_parser().parse_args(args)
        command = " ".join(["data_prep", *args])
        reason = next((why for key, why in NOT_RUN.items() if key in command), None)
        assert reason, f"no rule for running `{command}` in the README test"
        return f"parsed, not run: {reason}"
    if module == "lra.bench":
        # As written, at one short length (the later flags win); `make bench`'s whole zoo is
        # cut to two attentions, one of them kernel-backed.
        few = [] if "--attentions" in args else ["--attentions", "softmax", "mra2"]
        if "--peers" in args and not peers.installed():
            # The README names the extra; without it the command must say so and stop.
            with pytest.raises(SystemExit) as stop:
                bench.main([*args, *few, "--out", str(cwd / "bench")])
            assert stop.value.code == 2
            assert ".[peers]" in capsys.readouterr().err
            return "refused, naming the peers extra (not installed here)"
        assert bench.main([*args, *few, "--lengths", "64", "--approx-len", "64",
                           "--inputs", "structured", "--budget-points", "1", "--repeats", "1",
                           "--out", str(cwd / "bench")]) == 0
        assert (cwd / "bench" / "efficiency.csv").stat().st_size > 0
        return "ran at length 64" + (" for softmax and mra2" if few else "")
    raise AssertionError(f"the README test has no rule for python -m {module}")


def check_command(command: list[str], cwd, roots, monkeypatch, capsys) -> list[str]:
    """Check one command; returns what was done, one line per command run."""
    line = " ".join(command)
    if command[0] == "make":
        reason = NOT_RUN.get(line) or (GRID if command[1] == "lra-all" else None)
        if reason:
            return [f"{line}: not run: {reason}"]
        return [f"{line} -> {done}" for step in make_recipe(command[1])
                for done in check_command(step, cwd, roots, monkeypatch, capsys)]
    assert command[0] in PYTHONS and command[1] == "-m", f"not a python -m command: {line}"
    return [f"{line}: " + check_python(command[2], command[3:], cwd, roots, monkeypatch,
                                          capsys)]


def test_the_readme_has_the_commands_this_test_knows():
    commands = readme_commands((ROOT / "README.md").read_text())
    modules = {c[2] for c in commands if c[0] != "make"}
    assert modules == {"lra.train", "lra.results", "data_prep", "lra.bench"}
    assert {c[1] for c in commands if c[0] == "make"} >= {"setup", "demo", "test", "lra-all",
                                                           "bench"}


def test_every_readme_command_runs_as_written(tiny_data_root, lra_tiny_root, tmp_path,
                                              monkeypatch, capsys):
    roots = {"mini": tiny_data_root, "lra": lra_tiny_root}
    done = []
    for command in readme_commands((ROOT / "README.md").read_text()):
        try:
            done += check_command(command, tmp_path, roots, monkeypatch, capsys)
        except BaseException as err:
            raise AssertionError(f"README command failed: {' '.join(command)}\n{err}") from err
    assert done  # every command was handled (a command with no rule fails above)
