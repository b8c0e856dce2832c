"""Before a sweep on `data=lra` launches anything, check that every task of its grid is prepared.

Without this, `make lra-all` with one task missing would train every job of the tasks before it
and then fail. A Hydra callback (registered in conf/config.yaml) runs once per `-m` sweep, before
the first job; it lists every missing task with its own sources and the command that prepares
it, and exits with status 2. Whether a prepared cache is also sound is checked by each job
(`lra.data.prepare_manifest`); this only looks for its manifest.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from data_prep.cache import prepare_command


def sweep_tasks(config: DictConfig) -> list[str]:
    """The tasks a sweep runs: its `task=` sweep (the command line's over the config's
    `hydra.sweeper.params`), else the one task composed."""
    params = config.hydra.sweeper.get("params") or {}
    overrides = [f"{key}={value}" for key, value in params.items()] + list(
        config.hydra.overrides.task)
    tasks = None
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group == "task":
            tasks = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                     else [str(override.value())])
    return tasks or [config.task.name]


def missing_tasks(config: DictConfig) -> tuple[Path, list[str]]:
    """The data root and the tasks of the sweep that have no prepared cache under it."""
    root = Path(config.data.root)
    return root, [t for t in sweep_tasks(config) if not (root / t / "manifest.json").exists()]


class SweepPreflight(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.data.name != "lra":
            return  # mini tasks are built on first use
        if not HydraConfig.initialized():  # data.root reads ${hydra:runtime.cwd}
            HydraConfig.instance().set_config(config)
        root, missing = missing_tasks(config)
        if not missing:
            return
        lines = [f"error: the sweep needs {len(missing)} task(s) that are not prepared in "
                 f"{root}; nothing was launched. Prepare each with:"]
        width = max(len(t) for t in missing) + 1
        lines += [f"  {task + ':':<{width}} {prepare_command(task, 'lra')}" for task in missing]
        lines.append("(`python -m data_prep <task> --help` explains each source; "
                     "data.root=<folder> points elsewhere)")
        print("\n".join(lines), file=sys.stderr)
        sys.exit(2)
