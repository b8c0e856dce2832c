"""`make bench` writes its tables and plot (no timing is asserted: speed is for benchmarks)."""

from __future__ import annotations

import csv

import pytest

from lra import bench


def test_bench_writes_tables_with_ratios_and_errors(tmp_path):
    code = bench.main(["--attentions", "softmax", "softmax_naive", "--lengths", "64", "128",
                       "--error-length", "64", "--repeats", "1", "--out", str(tmp_path)])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert {(r["attention"], r["seq_len"]) for r in rows} == {
        ("softmax", "64"), ("softmax", "128"), ("softmax_naive", "64"), ("softmax_naive", "128")}
    for row in rows:
        assert not row["error"], row["error"]
        assert float(row["fwd_bwd_ms"]) > 0
    exact = [r for r in rows if r["seq_len"] == "64"]
    # Both are exact softmax: their error against the oracle is rounding only.
    assert all(float(r["rel_error"]) < 1e-5 for r in exact)
    by_name = {r["attention"]: r for r in exact}
    assert float(by_name["softmax"]["time_vs_softmax"]) == 1.0
    assert float(by_name["softmax_naive"]["time_vs_naive"]) == 1.0
    assert (tmp_path / "time_memory_vs_length.png").stat().st_size > 0
    assert "Command: `python -m lra.bench" in (tmp_path / "bench.md").read_text()


def test_bench_has_a_row_per_kernel_backend_and_a_roofline(tmp_path):
    code = bench.main(["--attentions", "softmax", "mra2", "--lengths", "128",
                       "--error-length", "128", "--repeats", "1", "--out", str(tmp_path)])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    mra = {r["backend"]: r for r in rows if r["attention"] == "mra2"}
    assert set(mra) == {"cpp", "reference"}
    assert all(not r["error"] and float(r["fwd_bwd_ms"]) > 0 for r in mra.values())
    # The error is measured once per attention, on its first (preferred) backend's row.
    assert float(mra["cpp"]["rel_error"]) < 1e-5 and mra["reference"]["rel_error"] == ""
    roof = list(csv.DictReader(open(tmp_path / "roofline.csv")))
    assert {(r["kernel"], r["backend"]) for r in roof} == {
        ("torch.matmul", "-"), ("block_sparse", "cpp"), ("block_sparse", "reference")}
    for row in roof:
        assert float(row["gflops"]) > 0
        assert abs(float(row["fraction_of_dense"]) * float(roof[0]["gflops"])
                   - float(row["gflops"])) < 1e-6 * float(row["gflops"])


def test_ratios_divide_by_the_reference_at_the_same_length(tmp_path, monkeypatch):
    """time_vs_X = time / time of X, memory_vs_X = memory / memory of X, at each length.

    The measurements are fixed stand-ins for the workers (`run_worker`), so the ratios are
    known exactly; the rows go through `main` as in `make bench`."""
    measured = {  # (attention, seq_len) -> (fwd_bwd_ms, peak_memory_mb)
        ("softmax", 64): (2.0, 10.0), ("softmax", 128): (4.0, 20.0),
        ("softmax_naive", 64): (8.0, 40.0), ("softmax_naive", 128): (32.0, 160.0),
        ("nystrom", 64): (1.0, 5.0), ("nystrom", 128): (3.0, 30.0),
    }

    def fake_worker(args):  # ["--worker", "time", name, seq, backend, *common flags]
        name, seq = args[2], int(args[3])
        ms, mb = measured[name, seq]
        return {"fwd_bwd_ms": ms, "peak_memory_mb": mb, "device": "cpu"}

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    monkeypatch.setattr(bench, "approximation_error", lambda name, seq, setting: 0.0)
    bench.main(["--attentions", "softmax", "softmax_naive", "nystrom", "--lengths", "64", "128",
                "--error-length", "64", "--device", "cpu", "--out", str(tmp_path)])
    rows = {(r["attention"], int(r["seq_len"])): r
            for r in csv.DictReader(open(tmp_path / "bench.csv"))}
    assert set(rows) == set(measured)
    for (name, seq), (ms, mb) in measured.items():
        for ref, suffix in (("softmax", "softmax"), ("softmax_naive", "naive")):
            ref_ms, ref_mb = measured[ref, seq]
            row = rows[name, seq]
            assert float(row[f"time_vs_{suffix}"]) == pytest.approx(ms / ref_ms, rel=1e-6)
            assert float(row[f"memory_vs_{suffix}"]) == pytest.approx(mb / ref_mb, rel=1e-6)
