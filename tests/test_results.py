"""Aggregation of run summaries into tables and the accuracy vs memory and vs time plots."""

from __future__ import annotations

import csv

from lra.results import SUMMARY_KEYS, main, write_json


def test_aggregate_collects_every_run(tmp_path):
    for i, attention in enumerate(("softmax", "mra2")):
        summary = {k: 0 for k in SUMMARY_KEYS} | {
            "task": "listops", "attention": attention, "seed": 0, "mini": True,
            "test_accuracy": 0.3 + i / 10, "majority_accuracy": 0.15,
            "peak_memory_mb": 100.0 * (i + 1)}
        write_json(tmp_path / "runs" / attention / "summary.json", summary)
    assert main([str(tmp_path / "runs"), str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert [r["attention"] for r in rows] == ["mra2", "softmax"]
    assert list(rows[0]) == list(SUMMARY_KEYS)
    assert "mini=True" in (tmp_path / "out" / "results.md").read_text()
    for plot in ("accuracy_vs_memory.png", "accuracy_vs_time.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 0
