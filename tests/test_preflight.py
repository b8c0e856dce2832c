"""A sweep on data=lra checks every task of its grid before launching any job."""

from __future__ import annotations

from data_prep import listops
from tests.conftest import run_train


def test_lra_all_without_data_lists_every_task_and_launches_nothing(tmp_path):
    proc = run_train("-m", "+experiment=lra_all", f"data.root={tmp_path}/none",
                     f"hydra.sweep.dir={tmp_path}/multirun", check=False)
    assert proc.returncode == 2
    assert "Launching" not in proc.stdout + proc.stderr
    assert not (tmp_path / "multirun").exists()
    for task, sources in (("listops", "lra_release|generate"), ("text", "tfds|raw"),
                          ("retrieval", "lra_release"), ("image", "tfds|raw"),
                          ("pathfinder", "lra_release|generate")):
        assert f"python -m data_prep {task} --source <{sources}>" in proc.stderr, task


def test_a_prepared_task_is_not_listed(tmp_path):
    listops.build_generated(tmp_path / "lra" / "listops", sizes={"train": 32, "val": 8, "test": 8},
                            seed=0, max_depth=4, max_args=4, min_length=4, max_length=64,
                            mini=False, progress=False)
    proc = run_train("-m", "task=listops,text", "data=lra", f"data.root={tmp_path}/lra",
                     f"hydra.sweep.dir={tmp_path}/multirun", check=False)
    assert proc.returncode == 2
    assert "needs 1 task(s)" in proc.stderr
    assert "data_prep text --source <tfds|raw>" in proc.stderr
    assert "data_prep listops" not in proc.stderr
