"""`make bench`: the study's tables, figures and cross-checks (speed itself is not asserted,
only that the timer measures work)."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
import torch

from attention_zoo import list_attentions, options_class
from attention_zoo.structured import structured_qkv
from lra import bench
from lra.bench import approximation as approx
from lra.bench import efficiency, measure
from lra.bench.measure import failure_status, timer
from lra.bench.profiles import BUDGETS
from lra.bench.report import ratios
from lra.bench.study import APPROX_COLUMNS


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One run of the quick profile, as the tests' `make bench bench=quick`."""
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(["--profile", "quick", "--out", str(out)]) == 0
    return out


def rows(path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def test_quick_writes_both_tables_with_every_attention(quick):
    eff, app = rows(quick / "efficiency.csv"), rows(quick / "approximation.csv")
    assert list(eff[0]) == efficiency.COLUMNS
    assert list(app[0]) == APPROX_COLUMNS
    every = set(list_attentions())
    assert every <= {r["attention"] for r in eff}
    assert every <= {r["attention"] for r in app if r["source"] == "ours"}
    for row in eff:
        assert row["status"] == "ok", row
        assert float(row["fwd_ms"]) > 0 and float(row["fwd_bwd_ms"]) > 0
        assert float(row["peak_memory_mb"]) > 0
    # Each attention with a knob is measured at more than one budget.
    for name in BUDGETS:
        points = {r["options"] for r in app if r["attention"] == name and r["scale"] == "1.0"}
        assert len(points) >= 2, (name, points)
    for name in ("softmax", "softmax_naive"):  # exact: rounding only
        errors = [float(r["relative_error"]) for r in app if r["attention"] == name]
        assert errors and max(errors) < 1e-5
    for figure in bench.report.FIGURES:
        assert (quick / figure).stat().st_size > 0, figure
    readme = (quick / "README.md").read_text()
    assert "python -m lra.bench --profile quick" in readme
    assert all(f"({figure})" in readme for figure in bench.report.FIGURES)


def test_the_budget_table_names_real_options():
    """The knob of each attention is one of its options (another branch renaming one fails
    here, not in a half-written study)."""
    for name, (knob, values) in BUDGETS.items():
        assert knob in {f.name for f in dataclasses.fields(options_class(name))}, name
        assert list(values) == sorted(values)


def test_attentions_at_their_exact_limit_have_no_error():
    """MRA with every block and Longformer with a window covering the sequence are exact."""
    q, k, v = structured_qkv(2, 2, 128, 32, seed=3)
    inputs = approx.InputSet("structured", q, k, v, repeats=1, costs={})
    exact = {"mra2": {"block_per_row": 4}, "mra2_s": {"block_per_row": 4},  # 128 / 32 blocks
             "longformer": {"window": 256}}
    for name, options in exact.items():
        row = inputs.row(name, options, 1.0, lambda *shape, n=name, o=options:
                         approx.build(n, o, *shape), "ours")
        assert row["status"] == "ok" and row["relative_error"] < 1e-5, row
    partial = inputs.row("mra2", {"block_per_row": 1}, 1.0,
                         lambda *shape: approx.build("mra2", {"block_per_row": 1}, *shape), "ours")
    assert partial["relative_error"] > 1e-3  # the measure does see an approximation


def test_entropy_of_uniform_attention_is_log_n():
    n = 96
    q = torch.zeros(2, 3, n, 16)  # every logit 0: each row uniform over the real keys
    k = torch.randn(2, 3, n, 16)
    mask = torch.ones(2, n, dtype=torch.bool)
    assert approx.entropy(q, k, mask) == pytest.approx(math.log(n), rel=1e-6)
    mask[1, n // 2:] = False  # padded keys do not count: log of the real ones
    assert approx.entropy(q[1:], k[1:], mask[1:]) == pytest.approx(math.log(n // 2), rel=1e-6)


def test_a_doubled_workload_times_at_least_one_and_a_half_times_the_single():
    """The timer measures the work it is given: the minimum over repeats (what a loaded machine
    inflates least) of twice the work is at least 1.5x that of once."""
    a = torch.randn(384, 384)

    def once():
        for _ in range(8):
            a @ a

    def twice():
        once()
        once()

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, double = min(timer(once, 7, "cpu")), min(timer(twice, 7, "cpu"))
    finally:
        torch.set_num_threads(previous)
    assert double >= 1.5 * single, (single, double)


def test_failures_become_statuses_and_crossovers_read_them():
    assert failure_status(torch.OutOfMemoryError("CUDA out of memory")) == "oom"
    assert failure_status(RuntimeError("DefaultCPUAllocator: not enough memory")) == "oom"
    assert failure_status(ValueError("bad")) == "error: ValueError: bad"

    def row(name, seq, ms, status="ok"):
        return {"attention": name, "backend": "-", "batch": 1, "seq_len": seq,
                "fwd_bwd_ms": ms, "status": status}

    table = [row("softmax", 256, 1.0), row("softmax", 512, 4.0), row("softmax", 1024, "", "oom"),
             row("fast", 256, 2.0), row("fast", 512, 3.0), row("fast", 1024, 6.0),
             row("slow", 256, 2.0), row("slow", 512, 5.0), row("slow", 1024, "", "oom")]
    found = efficiency.crossover(table, "fwd_bwd_ms")
    assert found["fast", "-", 1] == "512"  # faster from 512 on; softmax's OOM at 1,024 a win
    assert found["slow", "-", 1] == "none up to 1024"


def test_an_oom_skips_the_longer_lengths_of_its_series(monkeypatch):
    def fake_cell(name, backend, batch, heads, seq, head_dim, device, repeats, limit_s=None):
        return {"attention": name, "batch": batch, "seq_len": seq,
                "status": "oom" if seq >= 128 else "ok"}

    monkeypatch.setattr(efficiency, "cell", fake_cell)
    got = list(efficiency.series("softmax", "-", [64, 128, 256], [1], 2, 32, "cpu", 1))
    assert [r["status"] for r in got] == ["ok", "oom", "skipped: oom at n=128"]


def test_a_cell_over_the_time_limit_skips_the_longer_lengths_of_its_batch(monkeypatch):
    """A cell over half the limit (wall clock) ends its batch size's series: the next length
    would take at least twice as long. Each batch size starts afresh."""
    spent = {64: 4, 128: 6, 256: 1}  # seconds each length's cell takes on the fake clock
    now = [0.0]

    def fake_cell(name, backend, batch, heads, seq, head_dim, device, repeats, limit_s=None):
        now[0] += spent[seq] if batch == 8 else 1
        return {"attention": name, "batch": batch, "seq_len": seq, "status": "ok"}

    monkeypatch.setattr(efficiency, "cell", fake_cell)
    monkeypatch.setattr(efficiency, "perf_counter", lambda: now[0])
    got = list(efficiency.series("yoso", "reference", [64, 128, 256], [8, 1], 2, 32, "cpu", 1,
                                 limit_s=10))
    assert [(r["batch"], r["status"]) for r in got] == [
        (8, "ok"), (8, "ok"), (8, "skipped: n=128 took 6 s; longer would pass the 10 s cell limit"),
        (1, "ok"), (1, "ok"), (1, "ok")]
    unlimited = list(efficiency.series("yoso", "reference", [64, 128, 256], [8], 2, 32, "cpu", 1))
    assert [r["status"] for r in unlimited] == ["ok"] * 3


def test_a_timer_stops_repeating_past_its_budget(monkeypatch):
    """Calls of 0.1 s on a fake clock: a 0.25 s budget stops after the third timed call (the sum
    passes it), no budget runs every repeat, and a warm fn gets no warm-up call."""
    now, calls = [0.0], []

    def call():
        calls.append(now[0])
        now[0] += 0.1

    monkeypatch.setattr(measure, "perf_counter", lambda: now[0])
    assert timer(call, 5, "cpu", budget_s=0.25) == pytest.approx([100, 100, 100])
    assert len(calls) == 4  # the warm-up and three timed calls
    calls.clear()
    assert len(timer(call, 5, "cpu", warm_up=False)) == 5 and len(calls) == 5
    calls.clear()
    assert len(timer(call, 5, "cpu", warm_up=False, budget_s=0.01)) == 1  # at least one call


def test_a_cell_gives_each_timer_a_quarter_of_the_cell_limit(monkeypatch):
    seen = {}

    def fake_measure(attn, q, k, v, mask, repeats, budget_s=None):
        seen["budget_s"] = budget_s
        return {"fwd_ms": 1.0, "fwd_bwd_ms": 2.0, "peak_memory_mb": 0.0, "status": "ok"}

    monkeypatch.setattr(efficiency, "measure", fake_measure)
    list(efficiency.series("softmax", "-", [32], [1], 2, 16, "cpu", 5, limit_s=60))
    assert seen["budget_s"] == 15
    list(efficiency.series("softmax", "-", [32], [1], 2, 16, "cpu", 5))
    assert seen["budget_s"] is None


def test_the_cell_limit_comes_from_the_profile_and_zero_means_none():
    from lra.bench import study

    assert study.settings(study.parser().parse_args([]))["cell_limit_s"] == 60.0
    assert study.settings(study.parser().parse_args(["--cell-limit", "0"]))["cell_limit_s"] is None
    assert study.settings(study.parser().parse_args(["--profile", "quick"]))["cell_limit_s"] is None


def test_peers_asked_for_but_not_installed_are_said(monkeypatch, tmp_path, capsys):
    """--peers never compares silently with nobody: none installed is an error naming the extra,
    some missing is a warning naming them."""
    from lra.bench import study
    monkeypatch.setattr(study, "installed_peers", lambda: [])
    with pytest.raises(SystemExit):
        study.main(["--profile", "quick", "--peers", "--attentions", "softmax",
                    "--out", str(tmp_path)])
    assert "no peer package is installed; pip install -e '.[peers]'" in capsys.readouterr().err
    monkeypatch.setattr(study, "installed_peers", lambda: study.PEERS[:1])
    assert study.main(["--profile", "quick", "--peers", "--attentions", "softmax",
                       "--parts", "approximation", "--out", str(tmp_path)]) == 0
    missing = ", ".join(p.package for p in study.PEERS[1:])
    assert f"warning: --peers: not installed, so not compared: {missing}" in capsys.readouterr().out


def test_ratios_divide_by_softmax_and_naive_at_the_longest_length():
    """The report's ratios are the method's figure over softmax's (SDPA) and over softmax_naive's,
    at the longest length and smallest batch, for time and memory each; a method faster than
    softmax at both lengths crosses over at the first."""
    def row(name, seq, ms, mb, batch=1):
        return {"attention": name, "backend": "-", "batch": batch, "seq_len": seq,
                "fwd_bwd_ms": ms, "peak_memory_mb": mb, "status": "ok"}

    rows = [row("softmax", 512, 10.0, 4.0), row("softmax", 1024, 40.0, 8.0),
            row("softmax_naive", 512, 20.0, 16.0), row("softmax_naive", 1024, 80.0, 64.0),
            row("linear", 512, 5.0, 8.0), row("linear", 1024, 10.0, 16.0),
            row("linear", 1024, 1.0, 1.0, batch=2)]
    line = next(r for r in ratios(rows) if r["attention"] == "linear")
    assert (line["seq_len"], line["batch"]) == (1024, 1)
    assert line["time_vs_softmax"] == 10.0 / 40.0 and line["time_vs_naive"] == 10.0 / 80.0
    assert line["memory_vs_softmax"] == 16.0 / 8.0 and line["memory_vs_naive"] == 16.0 / 64.0
    assert line["time_crossover"] == "512"
    assert line["memory_crossover"] == "none up to 1024"
