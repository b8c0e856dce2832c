"""A typo on the command line or in a yaml file gets one line with the closest valid names."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lra.config import ConfigError, did_you_mean, load_config
from lra.overrides import check_overrides
from tests.conftest import run_train
from tests.test_configs import composed


@pytest.mark.parametrize("argv, message", [
    (["trainer.lrr=1"], "unknown key trainer.lrr (did you mean trainer.lr?)"),
    (["+trainer.lrr=1"], "unknown key trainer.lrr (did you mean trainer.lr?)"),
    (["lrr=1"], "unknown key lrr (did you mean trainer.lr?)"),
    (["model.dimm=3"], "unknown key model.dimm (did you mean model.dim?)"),
    (["task=listop"], "task=listop: there is no conf/task/listop.yaml (did you mean listops?)"),
    (["-m", "attention=softmax,mrb2"], "attention=mrb2: there is no conf/attention/mrb2.yaml "
                                       "(did you mean mra2"),
    (["attention=mra2", "attention.options.block_per_rows=4"],
     "attention 'mra2' has no option block_per_rows (did you mean block_per_row"),
    (["attention=mra2", "+attention.options.block_per_row=4"],
     "conf/attention/mra2.yaml already sets it; change it without the +: "
     "attention.options.block_per_row=4"),
    (["attention=mra2", "attention.options.input_shape=[2,2]"], None),
    (["attention=performer", "attention.options.block_size=4"], "has no option block_size"),
])
def test_a_typo_names_the_closest_valid_names(argv, message):
    if message is None:
        check_overrides(argv)
        return
    with pytest.raises(ConfigError) as err:
        check_overrides(argv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [
    ["task=text", "attention=mra2", "attention.options.block_per_row=4", "trainer.lr=1e-3"],
    ["-m", "+experiment=demo", "attention.options.block_size=8", "seed=0,1"],
    ["--cfg", "job", "hydra.job.chdir=true", "hydra/launcher=basic", "~logger"],
    ["seed=range(3)", "attention=glob(mra*)"],
])
def test_valid_commands_pass(argv):
    check_overrides(argv)


def test_a_key_a_yaml_file_adds_is_named_with_suggestions():
    raw = composed()
    OmegaConf.set_struct(raw, False)  # as a yaml file of the user's own would add it
    raw.trainer.max_step = 3
    with pytest.raises(ConfigError, match=r"unknown key trainer.max_step \(did you mean "
                                          r"trainer.max_steps"):
        load_config(raw)


def test_a_wrong_choice_suggests_the_closest():
    assert did_you_mean("btach", ["max", "batch"]) == " (did you mean batch?)"
    with pytest.raises(ConfigError, match=r"data.pad_to='btach' is not one of max, batch "
                                          r"\(did you mean batch\?\)"):
        load_config(composed("data.pad_to=btach"))


def test_the_command_line_answers_in_one_line():
    proc = run_train("trainer.lrr=1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown key trainer.lrr (did you mean trainer.lr?); every key is in "
        "lra/config.py"]
