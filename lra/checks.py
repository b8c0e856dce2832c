"""Value checks for the config dataclasses' `__post_init__`, so that a bad value fails wherever a
dataclass is built (Hydra's composed config, a test, a notebook) with its full key named:

    @dataclass
    class TrainerConfig:
        lr: float = 1e-4
        schedule: Schedule = Schedule.onecycle

        def __post_init__(self):
            positive("trainer", self, "lr")             # trainer.lr=-1.0 must be > 0
            choice("trainer", self, schedule=Schedule)  # trainer.schedule='x' is not one of ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from omegaconf import MISSING


class ConfigError(ValueError):
    """A config key or value that cannot work. The message names the key."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean a or b?)' naming the options closest to `word`, or '' if none is close.
    A dotted key is matched whole, then by its last part (`lrr` finds `trainer.lr`)."""
    options = [str(o) for o in options]
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.8)
    if not close:
        leaf = word.rsplit(".", 1)[-1]
        by_leaf = {o.rsplit(".", 1)[-1]: o for o in options}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, by_leaf, n=3, cutoff=0.6)]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def not_one_of(key: str, value: Any, allowed: type[Enum], nullable: bool = False) -> ConfigError:
    choices = (["null"] if nullable else []) + [m.value for m in allowed]
    return ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}"
                       + did_you_mean(str(value), choices))


def unresolved(value: Any) -> bool:
    """A schema default that OmegaConf fills in before it builds the dataclass with the values:
    '???' (MISSING, e.g. task.name) or an interpolation (trainer.max_steps: ${task.max_steps})."""
    return isinstance(value, str) and (value == MISSING or value.startswith("${"))


def _check(section: str, obj: Any, keys: Iterable[str], ok: Callable[[Any], bool],
           rule: str) -> None:
    for key in keys:
        value = getattr(obj, key)
        if unresolved(value):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ConfigError(f"{section}.{key}={value!r} {rule}")


def positive(section: str, obj: Any, *keys: str) -> None:
    _check(section, obj, keys, lambda v: v > 0, "must be > 0")


def non_negative(section: str, obj: Any, *keys: str) -> None:
    _check(section, obj, keys, lambda v: v >= 0, "must be >= 0")


def fraction(section: str, obj: Any, *keys: str) -> None:
    """A rate such as a dropout: in [0, 1)."""
    _check(section, obj, keys, lambda v: 0 <= v < 1, "must be in [0, 1)")


def at_least_one_or_null(section: str, obj: Any, *keys: str) -> None:
    _check(section, obj, [k for k in keys if getattr(obj, k) is not None], lambda v: v >= 1,
           "must be >= 1 or null")


def choice(section: str, obj: Any, nullable: tuple[str, ...] = (), **enums: type[Enum]) -> None:
    """Each named field is a member of its enumeration (or None, for the fields in `nullable`);
    a plain string, as Python code may pass, becomes the member."""
    for key, allowed in enums.items():
        value = getattr(obj, key)
        if value is None and key in nullable:
            continue
        if value not in allowed.__members__.values():
            raise not_one_of(f"{section}.{key}", value, allowed, key in nullable)
        setattr(obj, key, allowed(value))
