"""`make bench`: the efficiency and approximation study of every attention (the MRA paper's
evaluation, for the whole zoo, in one harness).

    python -m lra.bench --profile quick      # every attention, tiny shapes (< 2 min; the tests)
    python -m lra.bench                      # the default study (make bench; < 20 min, 2 cores)
    python -m lra.bench --profile paper      # one layer, 12 heads x 64, n = 512..4,096 (CPU)
    python -m lra.bench --profile default --parts approximation --inputs real --peers

Efficiency (efficiency.csv): forward and forward+backward time (median of the repeats after a
warm-up; CUDA events on GPU) and peak tensor memory of one attention layer over lengths and
batch sizes, for each kernel backend; OOM or an input a method refuses is a status, never a
crash; the crossover length at which each method beats `softmax` (torch's SDPA).
Approximation (approximation.csv): mean per-head relative error ||Y_hat - Y|| / ||Y|| against
exact attention on structured synthetic inputs and on real q, k, v (MiniLM-L6 on Python's own
docs, n = 512), every attention swept over its budget knob (profiles.BUDGETS), and at its
defaults over logit scales against the entropy of the exact rows.
Writes both CSVs, roofline.csv, the figures and README.md (command, commit, tables) to --out.
Module map: profiles (what is run), measure (timer, memory, statuses), efficiency,
approximation, real_inputs, peers, roofline, plots, report, study (the driver).
"""

from .study import main

__all__ = ["main"]
