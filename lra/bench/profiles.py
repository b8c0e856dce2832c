"""The bench's profiles (how big a study) and the budget knob of every attention.

A profile fixes the efficiency grid (head shape, lengths, batch sizes, repeats) and the
approximation study (length, inputs, logit scales). `python -m lra.bench --profile NAME`; each
field can be overridden on the command line (`--lengths`, `--batches`, ...).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Profile:
    heads: int
    head_dim: int
    lengths: tuple[int, ...]        # efficiency lengths on CPU
    gpu_lengths: tuple[int, ...]    # ... and on CUDA
    batches: tuple[int, ...]
    repeats: int                    # timed passes after one warm-up (the median is reported)
    isolate: bool                   # one fresh process per (attention, backend): a crash or an
                                    # OOM kill costs that series only
    approx_len: int                 # length of the approximation study
    inputs: tuple[str, ...]         # "structured" (synthetic) and/or "real" (MiniLM on text)
    budget_points: int | None       # first N values of each knob (None: all of them)
    scales: tuple[float, ...]       # logit scales of the entropy sweep
    segments: int = 2               # real inputs: text segments (x 6 layers = instances)
    threads: int | None = None      # torch intra-op threads (None: torch's default, all cores)
    # No cell should take longer than this many seconds (all its passes): each of a cell's two
    # timers stops repeating past a quarter of it, and after a cell over half of it the longer
    # lengths of that series and batch size, each at least twice as long, are recorded as
    # skipped (None: no limit). What it cuts is the slow oracles' long tail (YOSO's reference
    # backend, 2 x 32 heads: one forward+backward at batch 8, n = 2,048 takes 10 s).
    cell_limit_s: float | None = None


PROFILES = {
    # Run by the tests: every attention, tiny shapes, under 2 minutes on 2 loaded cores.
    "quick": Profile(heads=2, head_dim=32, lengths=(64, 128), gpu_lengths=(64, 128),
                     batches=(1,), repeats=3, isolate=False, approx_len=128,
                     inputs=("structured",), budget_points=2, scales=(0.5, 1.0, 2.0),
                     threads=1),  # tiny ops: on a loaded machine, spinning threads cost 10-100x
    # `make bench`: the small LRA protocol's head shape over lengths and two batch sizes; the
    # approximation study at the MRA paper's n = 512 on real inputs (MiniLM's 12 heads x 32).
    "default": Profile(heads=2, head_dim=32, lengths=(256, 512, 1024, 2048, 4096),
                       gpu_lengths=(256, 512, 1024, 2048, 4096, 8192), batches=(1, 8),
                       repeats=5, isolate=True, approx_len=512, inputs=("structured", "real"),
                       budget_points=None, scales=(0.25, 0.5, 1.0, 2.0, 4.0),
                       cell_limit_s=60.0),
    # The MRA paper's efficiency setting: one layer, 12 heads x 64, fp32, forward+backward.
    "paper": Profile(heads=12, head_dim=64, lengths=(512, 1024, 2048, 4096),
                     gpu_lengths=(512, 1024, 2048, 4096, 8192, 16384), batches=(1,),
                     repeats=5, isolate=True, approx_len=512, inputs=("structured", "real"),
                     budget_points=None, scales=(0.25, 0.5, 1.0, 2.0, 4.0),
                     cell_limit_s=120.0),
}

# attention -> (its budget option, the values swept, cheapest first). The only option names the
# bench knows; every other option keeps the registry's default. An attention missing here is
# measured at its defaults only.
BUDGETS: dict[str, tuple[str, tuple[int, ...]]] = {
    "mra2": ("block_per_row", (1, 2, 4, 8, 16)),
    "mra2_s": ("block_per_row", (1, 2, 4, 8, 16)),
    "nystrom": ("num_landmarks", (16, 32, 64, 128, 256)),
    "nystrom_conv": ("num_landmarks", (16, 32, 64, 128, 256)),
    "soft": ("num_landmarks", (16, 32, 64, 128, 256)),
    "soft_conv": ("num_landmarks", (16, 32, 64, 128, 256)),
    "performer": ("num_features", (32, 64, 128, 256, 512)),
    "scatterbrain": ("window", (16, 32, 64, 128, 256)),
    "linformer": ("proj_len", (32, 64, 128, 256, 512)),
    "longformer": ("window", (16, 32, 64, 128, 256)),
    "bigbird": ("block_size", (8, 16, 32, 64)),
    "h_transformer_1d": ("block_size", (8, 16, 32, 64)),
    "reformer": ("num_hashes", (1, 2, 4, 8)),
    "yoso": ("num_hash", (4, 8, 16, 32, 64)),
    "yoso_conv": ("num_hash", (4, 8, 16, 32, 64)),
}


def budget_options(name: str, points: int | None) -> list[dict]:
    """The option sets of `name`'s budget sweep ([{}] for an attention without a knob)."""
    if name not in BUDGETS:
        return [{}]
    knob, values = BUDGETS[name]
    return [{knob: value} for value in values[:points]]


def describe(name: str, options: dict) -> str:
    """The `options` column: the knob's value ("block_per_row=8"), its default when not set, and
    any other option given; "-" for an attention without options."""
    import attention_zoo

    shown = dict(options)
    if name in BUDGETS and BUDGETS[name][0] not in shown:
        knob = BUDGETS[name][0]
        shown = {knob: getattr(attention_zoo.make_options(name), knob), **shown}
    return ",".join(f"{key}={value}" for key, value in shown.items()) or "-"
