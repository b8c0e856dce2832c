"""`make demo` (lra.demo.main) on tiny settings: the sweep it runs and the tables it writes."""

from __future__ import annotations

import csv
import json

from lra import demo


def test_demo_trains_the_sweep_and_writes_its_tables(tiny_data_root, tmp_path, capsys):
    """The demo's sweep (softmax on mini ListOps, tag demo) runs to its summary, and
    results.{csv,md} hold that summary's values, marked as mini stand-ins."""
    overrides = [f"data.root={tiny_data_root}", "data.build_missing=false", "task.max_len=64",
                 "trainer.batch_size=16", "trainer.max_steps=4", "trainer.eval_every=2",
                 "trainer.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert demo.main(overrides, results=tmp_path) == 0
    [path] = (tmp_path / "runs" / "mini" / "demo").glob("listops-softmax-s0-*/summary.json")
    summary = json.loads(path.read_text())
    assert summary["steps"] == 4 and summary["mini"] is True and summary["tag"] == "demo"
    [row] = csv.DictReader(open(tmp_path / "demo" / "results.csv"))
    assert row["task"] == "listops" and row["attention"] == "softmax"
    assert float(row["test_accuracy"]) == summary["test_accuracy"]
    assert float(row["best_dev_accuracy"]) == summary["best_dev_accuracy"]
    table = (tmp_path / "demo" / "results.md").read_text()
    assert table.startswith("# lra-zoo demo (offline mini suite")
    assert "mini=True" in table
    assert table in capsys.readouterr().out  # printed as well as written
