"""Backend choice for every kernel family: one registry, one resolver, one warning on fallback.

A family ("block_sparse", "lsh") registers its implementations in order of preference; each has
the devices it runs on and a `load()` that returns a module exposing the family's functions (the
same names in every backend) or raises `BackendError` saying why and how to fix it.

    resolve("block_sparse", "auto", device)  -> ("cpp", module)   # fastest that loads
    resolve("block_sparse", "cpp", device)   -> raises BackendError if it cannot load

"auto" never fails: when a preferred backend cannot load it logs one warning (per family, backend
and device type) naming the reason and the fix, and moves on; "reference" runs everywhere.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("kernels")

BACKENDS = ("auto", "reference", "cpp", "flex", "triton")


class BackendError(RuntimeError):
    """A kernel backend that cannot load, with the reason and the fix in the message."""


@dataclasses.dataclass(frozen=True)
class Implementation:
    name: str
    devices: tuple[str, ...]
    load: Callable[[], Any]


_FAMILIES: dict[str, list[Implementation]] = {}
_LOADED: dict[tuple[str, str], Any] = {}
_FAILED: dict[tuple[str, str], BackendError] = {}
_WARNED: set[tuple[str, str, str]] = set()


def register(family: str, name: str, devices: tuple[str, ...], load: Callable[[], Any]) -> None:
    """Add backend `name` of `family`; earlier registrations are preferred by "auto"."""
    if name not in BACKENDS or name == "auto":
        raise ValueError(f"backend name must be one of {BACKENDS[1:]}, got {name!r}")
    impls = _FAMILIES.setdefault(family, [])
    if any(impl.name == name for impl in impls):
        raise ValueError(f"kernels: backend {name!r} of {family!r} is registered twice")
    impls.append(Implementation(name, tuple(devices), load))


def _load(family: str, impl: Implementation) -> Any:
    """Load once per process; a failure is remembered so that it is not retried every call."""
    key = (family, impl.name)
    if key in _LOADED:
        return _LOADED[key]
    if key in _FAILED:
        raise _FAILED[key]
    try:
        module = impl.load()
    except BackendError as err:
        _FAILED[key] = err
        raise
    _LOADED[key] = module
    return module


def _implementations(family: str) -> list[Implementation]:
    if family not in _FAMILIES:
        raise ValueError(f"kernels: unknown family {family!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[family]


def resolve(family: str, backend: str, device: torch.device | str) -> tuple[str, Any]:
    """(name, module) of the backend that serves `family` on `device`.

    `backend` is "auto" or a name from BACKENDS. A named backend that does not run on the device
    or cannot load raises BackendError; "auto" takes the first registered one that loads and
    warns once about each preferred backend it had to skip.
    """
    device_type = torch.device(device).type
    impls = _implementations(family)
    if backend != "auto":
        impl = next((i for i in impls if i.name == backend), None)
        if impl is None:
            names = ", ".join(["auto", *(i.name for i in impls)])
            raise BackendError(f"kernels: {family} has no backend {backend!r}; choose one of "
                               f"{names}")
        if device_type not in impl.devices:
            raise BackendError(f"kernels: {family} backend {backend!r} runs on "
                               f"{'/'.join(impl.devices)}, not {device_type}; use backend=auto")
        return impl.name, _load(family, impl)
    for impl in impls:
        if device_type not in impl.devices:
            continue
        try:
            return impl.name, _load(family, impl)
        except BackendError as err:
            key = (family, impl.name, device_type)
            if key not in _WARNED:
                _WARNED.add(key)
                log.warning("kernels: %s backend %r unavailable on %s, falling back: %s",
                            family, impl.name, device_type, err)
    raise BackendError(f"kernels: no backend of {family} runs on {device_type}")


def registered_backends(family: str, device: torch.device | str) -> list[str]:
    """Names of the backends of `family` meant for `device`, loadable or not, in order of
    preference (tests use this, so that a backend that fails to build fails them)."""
    device_type = torch.device(device).type
    return [impl.name for impl in _implementations(family) if device_type in impl.devices]


def available_backends(family: str, device: torch.device | str) -> list[str]:
    """Names of the backends of `family` that load on `device`, in order of preference."""
    device_type = torch.device(device).type
    names = []
    for impl in _implementations(family):
        if device_type not in impl.devices:
            continue
        try:
            _load(family, impl)
        except BackendError:
            continue
        names.append(impl.name)
    return names
