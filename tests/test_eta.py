"""The time of a run is said before it is spent, and the progress bar does not invent accuracy."""

from __future__ import annotations

import logging
import re

import pytest

import lra.train
from lra.eta import StepClock, duration, round_steps
from tests.conftest import run_train
from tests.test_train_claims import clock, tiny_config  # noqa: F401 (clock is a fixture)


def test_estimate_is_the_mean_of_steps_two_to_six_times_the_steps(caplog):
    caplog.set_level(logging.INFO, logger="lra.train")
    step_clock = StepClock(start_step=0, max_steps=5000, eval_every=50, on_cpu=True)
    for seconds in (9.0, 3.0, 4.0, 3.0, 4.0, 3.6, 100.0):  # the first and the last are not used
        step_clock.tick(seconds)
    assert abs(step_clock.step_s - 3.52) < 1e-9
    assert abs(step_clock.estimate_s() - 3.52 * 5000) < 1e-6
    text = caplog.text
    assert "planned: 5000 training steps" in text
    assert "about 4.9 h for the 5000 steps" in text
    # 10 minutes at 3.52 s per step is 170 steps.
    assert ("trainer.max_steps=170 (about 10.0 min) tries the same run shorter; trainer=smoke "
            "(50 steps of 8 examples) checks that it works end to end") in text


def test_no_suggestion_on_cuda_or_for_a_short_run(caplog):
    caplog.set_level(logging.INFO, logger="lra.train")
    for on_cpu, steps in ((False, 5000), (True, 100)):
        step_clock = StepClock(start_step=0, max_steps=steps, eval_every=50, on_cpu=on_cpu)
        for _ in range(6):
            step_clock.tick(3.0)
    assert "about 5.0 min for the 100 steps" in caplog.text
    assert "trainer.max_steps=" not in caplog.text


def test_a_resume_plans_the_steps_left(caplog):
    caplog.set_level(logging.INFO, logger="lra.train")
    StepClock(start_step=300, max_steps=500, eval_every=50, on_cpu=True)
    assert "planned: 200 training steps (resuming at step 300)" in caplog.text


def test_rounding_and_durations():
    assert [round_steps(s) for s in (3, 47, 170.4, 1234, 98765)] == [10, 47, 170, 1200, 98000]
    assert [duration(s) for s in (42, 450, 17600)] == ["42 s", "7.5 min", "4.9 h"]


@pytest.mark.usefixtures("clock")
def test_a_run_logs_an_estimate_within_2x_of_its_measured_time(tiny_data_root, tmp_path, caplog):
    """The estimate a run logs is fed by the same step times as its summary's step_time_ms.
    On the fake clock (1 ms a step; evaluations of an hour, not counted) both are exact, so the
    check does not depend on how busy the machine is."""
    caplog.set_level(logging.INFO, logger="lra.train")
    summary = lra.train.train(tiny_config(tiny_data_root, tmp_path, "trainer.max_steps=40",
                                          "trainer.eval_every=20"))
    found = re.search(r"([\d.]+) s per training step \(mean of steps 2-6\): about .* for the "
                      r"40 steps", caplog.text)
    assert found, caplog.text
    ratio = float(found.group(1)) / (summary["step_time_ms"] / 1000)
    assert 0.5 <= ratio <= 2, (found.group(0), summary["step_time_ms"])


def test_the_bar_shows_no_accuracy_before_the_first_evaluation(tiny_data_root, tmp_path):
    proc = run_train("task.max_len=64", "trainer.max_steps=40", "trainer.eval_every=20",
                     "trainer.batch_size=32", "trainer.progress=true",
                     f"data.root={tiny_data_root}", "data.build_missing=false",
                     f"runs_dir={tmp_path}/runs", "hydra.run.dir=" + str(tmp_path / "hydra"))
    # Before the first evaluation (step 20) the bar has no accuracy to show.
    before, after = proc.stderr.split(" 20/40 ", 1)
    assert "best_dev=-" in before and "best_dev=0" not in before
    assert "best_dev=0." in after
