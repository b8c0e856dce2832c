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


def attention_cases() -> list[str]:
    """Every registered attention once per CPU kernel backend: the name alone runs its default
    (auto: the fastest that loads), "name@backend" each other backend of its kernel family."""
    cases = []
    for name in list_attentions():
        cases.append(name)
        family = attention_class(name).kernel_family
        if family:
            cases += [f"{name}@{b}" for b in registered_backends(family, "cpu")[1:]]
    return cases


def build_case(case: str, **kwargs):
    """build_attention for an `attention_cases()` entry."""
    name, _, backend = case.partition("@")
    return build_attention(name, **kwargs, **({"backend": backend} if backend else {}))


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
