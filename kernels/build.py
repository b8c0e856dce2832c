"""Just-in-time build of the C++/OpenMP extensions, with failures that say what to do.

`load_library(name, sources)` compiles the sources with ninja into the torch extensions cache
(`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions), once per machine: torch rebuilds only
when a source or a flag changes. The library registers its ops with `TORCH_LIBRARY`, so they are
reached as `torch.ops.<namespace>.<op>`; nothing is imported through pybind11. `-march=native`
makes the build specific to the machine that compiles it, which the per-machine cache keeps.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .backend import BackendError, log

# -fno-math-errno: no kernel reads errno, and with it set GCC keeps every loop that calls sqrt
# scalar (YOSO's v2 weights: 5x slower)
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
LDFLAGS = ["-fopenmp"]
STALE_LOCK_S = 600


def _ensure_ninja() -> None:
    """torch looks for `ninja` on PATH; the pip package puts it beside the interpreter, which is
    not on PATH when the virtual environment is not activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # noqa: PLC0415 (optional: only needed to build)
    except ImportError as err:
        raise BackendError("ninja not found; fix: pip install ninja (or make setup)") from err
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _key_lines(log: str, limit: int = 12) -> str:
    """The compiler's error lines, not the whole log."""
    lines = [ln.strip() for ln in log.splitlines()
             if "error" in ln.lower() or "fatal" in ln.lower()]
    return "\n  ".join(lines[:limit] or log.strip().splitlines()[-limit:])


def _clear_stale_lock(name: str, cpp_extension) -> None:
    """torch serialises concurrent builds with a `lock` file in the build folder and waits for
    it to go away; a build that was killed leaves it behind and every later load would wait
    forever. No build takes STALE_LOCK_S, so an older lock is a dead one."""
    lock = Path(cpp_extension._get_build_directory(name, verbose=False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        log.warning("kernels: removing the stale build lock %s (%.0f s old, left by a build that "
                    "was killed)", lock, age)
        lock.unlink(missing_ok=True)


def load_library(name: str, sources: list[Path]) -> None:
    """Compile (or reuse from the cache) and load the ops library `name` built from `sources`."""
    _ensure_ninja()
    compiler = os.environ.get("CXX", "c++")
    if not shutil.which(compiler):
        raise BackendError(f"no C++ compiler ({compiler!r}) on PATH; fix: install g++ "
                           "(apt-get install g++) or set CXX")
    from torch.utils import cpp_extension  # noqa: PLC0415 (heavy; only when building)

    _clear_stale_lock(name, cpp_extension)
    try:
        cpp_extension.load(name=name, sources=[str(s) for s in sources], extra_cflags=CFLAGS,
                           extra_ldflags=LDFLAGS, is_python_module=False, verbose=False)
    except Exception as err:  # the build's own exception carries the compiler log
        raise BackendError(f"building the C++ extension {name!r} failed; fix the toolchain or "
                           f"use backend=reference:\n  {_key_lines(str(err))}") from err
