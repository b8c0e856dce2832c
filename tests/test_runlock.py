"""The run lock: one process per run folder; a killed holder's lock is taken over."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lra.run import RunLock, RunLocked
from tests.conftest import ROOT

HOLD = ("import sys, time; from lra.run import RunLock\n"
        "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")


def test_a_live_holder_is_named_and_a_killed_one_taken_over(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"in use by process {holder.pid} "), RunLock(tmp_path):
            pass
    finally:
        holder.kill()  # SIGKILL: the holder releases nothing itself
        holder.wait()
    assert (tmp_path / "lock").read_text().strip() == str(holder.pid)
    with RunLock(tmp_path):
        assert f"lock of process {holder.pid}, which is no longer running" in caplog.text
    assert (tmp_path / "lock").read_text() == ""  # released cleanly: nothing to take over
    caplog.clear()
    with RunLock(tmp_path):
        assert "taking over" not in caplog.text
