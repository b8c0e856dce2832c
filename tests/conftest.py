"""Shared fixtures: a tiny ListOps cache that the trainer tests read instead of the mini suite;
the kernel registry with fresh caches, or with a C++ backend that fails to build."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels.backend as kb
from attention_zoo import attention_class, build_attention, list_attentions
from data_prep import listops
from kernels.backend import registered_backends

ROOT = Path(__file__).resolve().parents[1]


# The non-default side of each protocol option (DEVIATIONS.md): attention name -> option sets,
# one per line. The contract suite runs every attention under its defaults and under each of
# these, as the case "name[key=value,...]".
ALTERNATIVES = {
    "mra2": [{"budget_from": "real_length"}],
    "mra2_s": [{"budget_from": "real_length"}],
    "reformer": [{"redraw_every": None}, {"buckets_from": "real_length"}],
    "bigbird": [{"redraw_every": None}],
    "linformer": [{"init": "pooling", "share_across_layers": False}],
    "scatterbrain": [{"num_features": 256, "feature_map": "positive"},
                     {"window_shape": "symmetric"}],
    "softmax": [{"dropout": 0.0}],
    "softmax_naive": [{"dropout": 0.1}],
    "longformer": [{"dropout": 0.0}],
    "yoso": [{"hash": "gaussian"}, {"redraw": "training_steps"}, {"backward_slots": None}],
    "yoso_conv": [{"hash": "gaussian", "redraw": "training_steps", "backward_slots": None}],
}


def _case_id(name: str, options: dict) -> str:
    return f"{name}[{','.join(f'{k}={v}' for k, v in options.items())}]"


def _cases() -> dict[str, tuple[str, dict]]:
    """case id -> (attention name, options): every registered attention once per CPU kernel
    backend (the name alone runs its default, auto: the fastest that loads; "name@backend" each
    other backend of its kernel family), then each of its ALTERNATIVES."""
    cases = {}
    for name in list_attentions():
        cases[name] = (name, {})
        family = attention_class(name).kernel_family
        if family:
            cases.update({f"{name}@{b}": (name, {"backend": b})
                          for b in registered_backends(family, "cpu")[1:]})
        cases.update({_case_id(name, opts): (name, opts) for opts in ALTERNATIVES.get(name, [])})
    return cases


def attention_cases() -> list[str]:
    """The case ids of `_cases`, for parametrising a suite over every attention and option."""
    return list(_cases())


def build_case(case: str, **kwargs):
    """build_attention for an `attention_cases()` entry (extra options in kwargs win); any other
    string goes to build_attention as a name, so a wrong one fails with its own message."""
    name, options = _cases().get(case, (case, {}))
    return build_attention(name, **{**options, **kwargs})


def make(name: str, max_len: int = 512, *, heads: int = 2, head_dim: int = 16,
         torch_seed: int = 0, **options):
    """An attention as the zoo tests build it: `build_case` (a case id of `attention_cases`
    works too), its parameters drawn after torch.manual_seed(torch_seed)."""
    torch.manual_seed(torch_seed)
    return build_case(name, num_heads=heads, head_dim=head_dim, max_seq_len=max_len, **options)


def exact(q, k, v, mask):
    """softmax(q k^T / sqrt(d)) v written out (softmax_naive, the oracle), for any q shape."""
    _, heads, seq, head_dim = q.shape
    return make("softmax_naive", seq, heads=heads, head_dim=head_dim)(q, k, v, mask)


def same_draws(attn):
    """attn, restored to its present state before each call, so that every call makes the same
    random draws (methods that redraw on every forward, eval included, count their calls)."""
    state = attn.state_dict()

    def restore(module, args):
        module.load_state_dict(state)  # returns None: a hook's return value would replace args

    attn.register_forward_pre_hook(restore)
    return attn


@pytest.fixture
def kernel_caches(monkeypatch):
    """kernels.backend with its load and warning caches emptied for this test (restored after),
    so that a backend loads, fails and warns here as it would first in a fresh process."""
    for name in ("_LOADED", "_FAILED", "_WARNED"):
        monkeypatch.setattr(kb, name, type(getattr(kb, name))())
    return kb


@pytest.fixture
def failing_cpp(monkeypatch, kernel_caches):
    """`failing_cpp(family, reason)`: the family's C++ backend now fails to load with
    BackendError(reason), as on a machine without a compiler; the other backends are untouched."""
    def install(family: str, reason: str) -> None:
        def fail():
            raise kb.BackendError(reason)

        monkeypatch.setitem(kb._FAMILIES, family, [
            dataclasses.replace(impl, load=fail) if impl.name == "cpp" else impl
            for impl in kb._FAMILIES[family]])

    return install


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
