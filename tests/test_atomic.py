"""Atomic writes: whole or nothing, readable by others, concurrent folder builders all finish."""

from __future__ import annotations

import os
import threading

import pytest

from data_prep.atomic import atomic_dir, atomic_write_text


def test_file_is_replaced_whole_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "one")
        atomic_write_text(tmp_path / "a.json", "two")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_text() == "two"
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_folder_build_leaves_the_old_folder(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "x").write_text("new")
        raise RuntimeError("killed")
    assert (target / "x").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_concurrent_folder_builders_all_finish(tmp_path):
    target, errors = tmp_path / "cache", []

    def build(i):
        try:
            for _ in range(20):
                with atomic_dir(target) as tmp:
                    (tmp / "who").write_text(str(i))
        except Exception as err:  # noqa: BLE001 -- collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert (target / "who").read_text() in {"0", "1", "2", "3"}
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
