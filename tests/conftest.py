"""Shared fixtures: a tiny ListOps cache that the trainer tests read instead of the mini suite."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attention_zoo import options_class
from data_prep import listops

ROOT = Path(__file__).resolve().parents[1]


def kernel_backend_options(name: str) -> dict:
    """LRA_KERNEL_BACKEND=reference (or cpp, ...) runs the attention suites on that kernels backend:
    {"backend": it} for an attention with a `backend` option, else {} (unset: its default, auto)."""
    backend = os.environ.get("LRA_KERNEL_BACKEND")
    if not backend or "backend" not in {f.name for f in dataclasses.fields(options_class(name))}:
        return {}
    return {"backend": backend}


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
