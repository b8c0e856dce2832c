"""Disk, checkpoint and summary faults a user meets: each ends in one line and exit 2, and loses
nothing (the previous checkpoint and summaries stay valid)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from lra import cli, results
from lra import run as run_module
from lra import train as train_module
from lra.config import load_config
from tests.test_configs import composed


def tiny_run(root, runs, *extra):
    raw = composed("task.max_len=64", "trainer.batch_size=8", "trainer.progress=false",
                   "data.build_missing=false", *extra)
    raw.data.root = str(root)
    raw.runs_dir = str(runs)
    return lambda: train_module.train(load_config(raw))


def fails(command, capsys) -> str:
    """Run `command` as a CLI would; return its one error line (exit 2 asserted)."""
    with pytest.raises(SystemExit) as stop:
        cli.call(command)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.fixture(autouse=True)
def no_full_error(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def test_runs_dir_that_is_a_file(tiny_data_root, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    line = fails(tiny_run(tiny_data_root, tmp_path / "file", "trainer.max_steps=2"), capsys)
    assert f"{tmp_path / 'file'}" in line and "is a file, not a folder" in line


def test_a_full_disk_keeps_the_previous_checkpoint(tiny_data_root, tmp_path, capsys,
                                                   monkeypatch):
    run = tiny_run(tiny_data_root, tmp_path, "trainer.max_steps=6", "trainer.eval_every=2")
    real_save, calls = torch.save, []

    def full_disk_save(obj, path):
        calls.append(path)
        if len(calls) > 2:  # best.pt and last.pt of step 2 are written, then the disk is full
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 "
                               "vs 0")
        real_save(obj, path)

    monkeypatch.setattr(train_module.torch, "save", full_disk_save)
    line = fails(run, capsys)
    assert "last.pt failed" in line or "best.pt failed" in line
    assert "(a full disk ends this way); the previous checkpoint is kept" in line
    monkeypatch.undo()
    [last] = tmp_path.rglob("last.pt")
    assert torch.load(last, weights_only=False)["step"] == 2
    assert not list(last.parent.glob(".*.tmp")), "no temporary file left behind"
    assert run()["steps"] == 6  # the same command resumes from it


def test_no_space_for_the_metrics_line_is_one_line(tiny_data_root, tmp_path, capsys,
                                                  monkeypatch):
    def no_space(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_module, "append_jsonl", no_space)
    line = fails(tiny_run(tiny_data_root, tmp_path, "trainer.max_steps=2"), capsys)
    assert "metrics.jsonl: no space left on the device" in line


@pytest.fixture
def finished(tiny_data_root, tmp_path):
    """A finished 2-step run: its command and folder."""
    run = tiny_run(tiny_data_root, tmp_path / "runs", "trainer.max_steps=2",
                   "trainer.eval_every=2")
    summary = run()
    return run, Path(summary["run_dir"]), summary


def test_truncated_last_checkpoint_names_it_and_the_fix(finished, capsys, tiny_data_root,
                                                        tmp_path):
    run, run_dir, _ = finished
    (run_dir / "summary.json").unlink()
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    line = fails(run, capsys)
    assert f"{last} is partial or corrupt" in line and "trainer.resume=false" in line
    again = tiny_run(tiny_data_root, tmp_path / "runs", "trainer.max_steps=2",
                     "trainer.eval_every=2", "trainer.resume=false")()
    assert again["run_dir"] == str(run_dir) and again["steps"] == 2


def test_missing_best_checkpoint_names_it(finished, capsys):
    run, run_dir, _ = finished
    (run_dir / "summary.json").unlink()
    (run_dir / "best.pt").unlink()
    line = fails(run, capsys)
    assert f"{run_dir / 'best.pt'} is missing" in line and "trainer.resume=false" in line


def test_corrupt_summary_in_train_and_results(finished, capsys, tmp_path):
    run, run_dir, _ = finished
    (run_dir / "summary.json").write_text('{"task": ')
    line = fails(run, capsys)
    assert f"{run_dir / 'summary.json'} is not a valid run summary" in line
    assert "delete it" in line
    line = fails(lambda: results.main([str(tmp_path / "runs"), str(tmp_path / "out")]), capsys)
    assert f"{run_dir / 'summary.json'} is not a valid run summary" in line


def test_results_into_a_path_that_is_a_file(finished, capsys, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    line = fails(lambda: results.main([str(tmp_path / "runs"), str(tmp_path / "file" / "out")]),
                 capsys)
    assert str(tmp_path / "file") in line and "is a file, not a folder" in line
    json.loads(next((tmp_path / "runs").rglob("summary.json")).read_text())  # still valid
