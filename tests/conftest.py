"""Shared fixtures: a tiny ListOps cache that the trainer tests read instead of the mini suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attention_zoo import attention_class, build_attention, list_attentions
from data_prep import listops
from kernels.backend import registered_backends

ROOT = Path(__file__).resolve().parents[1]


# The alternative of each protocol option (the default follows the published code): the contract
# suite runs each as its own case, "name[key=value,...]". One line per attention.
ALTERNATIVES: dict[str, list[dict]] = {
    "yoso": [{"hash": "gaussian"}, {"redraw": "training_steps"}, {"backward_slots": None}],
    "yoso_conv": [{"hash": "gaussian", "redraw": "training_steps", "backward_slots": None}],
}


def case_name(name: str, options: dict) -> str:
    return f"{name}[{','.join(f'{key}={value}' for key, value in options.items())}]"


def attention_cases() -> list[str]:
    """Every registered attention once per CPU kernel backend: the name alone runs its default
    (auto: the fastest that loads), "name@backend" each other backend of its kernel family; and
    once per entry of ALTERNATIVES, "name[key=value]"."""
    cases = []
    for name in list_attentions():
        cases.append(name)
        family = attention_class(name).kernel_family
        if family:
            cases += [f"{name}@{b}" for b in registered_backends(family, "cpu")[1:]]
        cases += [case_name(name, options) for options in ALTERNATIVES.get(name, [])]
    return cases


def build_case(case: str, **kwargs):
    """build_attention for an `attention_cases()` entry."""
    name, _, backend = case.partition("@")
    name = name.partition("[")[0]
    options = next((o for o in ALTERNATIVES.get(name, []) if case_name(name, o) == case), {})
    return build_attention(name, **kwargs, **options, **({"backend": backend} if backend else {}))


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """data root with a small ListOps cache (mini=True) at root/listops."""
    root = tmp_path_factory.mktemp("data")
    listops.build_generated(root / "listops", sizes={"train": 96, "val": 32, "test": 32}, seed=1,
                            max_depth=4, max_args=4, min_length=4, max_length=64, mini=True,
                            progress=False)
    return root


def run_train(*overrides: str, cwd: Path = ROOT, check: bool = True
              ) -> subprocess.CompletedProcess:
    """Run `python -m lra.train` in a subprocess as a user would."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "lra.train", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"lra.train failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc
