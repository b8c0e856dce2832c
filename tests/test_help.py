"""Help screens a new user can act on: lra.train's lists what to choose and how; every flag of
lra.results and data_prep says what it does and its default."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from data_prep.__main__ import parser as data_prep_parser
from lra import grid
from lra.overrides import check_overrides, group_options
from lra.results import parser as results_parser
from tests.conftest import run_train
from tests.test_configs import composed


@pytest.fixture(scope="module")
def train_help() -> str:
    return run_train("--help").stdout


def test_train_help_lists_every_choice_but_attention_task(train_help):
    for group in ("task", "attention", "data", "trainer", "model", "logger", "experiment"):
        for option in group_options(group):
            assert re.search(rf"\b{option}\b", train_help), (group, option)
    assert not re.search(r"^attention_task", train_help, flags=re.M)
    assert "lra/config.py" in train_help


def test_train_help_names_five_keys_and_its_examples_run(train_help):
    keys = re.findall(r"^(\S+\.\S+|seed) {2,}\S", train_help, flags=re.M)
    assert keys == ["trainer.max_steps", "trainer.batch_size", "trainer.lr", "trainer.device",
                    "seed"]
    examples = [shlex.split(line)[3:] for line in train_help.splitlines()
                if line.startswith("python -m lra.train ")]
    assert len(examples) == 3
    for args in examples:
        check_overrides(args)
        composed(*(a.split(",")[0] for a in args if a != "-m"))


def _actions(parser: argparse.ArgumentParser, name: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _actions(subparser, f"{name} {sub}")
        elif not isinstance(action, argparse._HelpAction):
            yield name, action


# Parser factories, called in the test (a parser built at collection would escape mutation runs).
@pytest.mark.parametrize("make_parser", [results_parser, data_prep_parser, grid.parser],
                         ids=["lra.results", "data_prep", "lra.grid"])
def test_every_flag_has_help_and_its_default(make_parser):
    parser = make_parser()
    for name, action in _actions(parser, parser.prog):
        flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help, f"{flag} has no help text"
        if action.default not in (None, False) and not action.required:
            assert "default" in action.help, f"{flag} does not say its default"


def test_the_grid_help_is_its_docstring_as_written_and_names_the_passthrough():
    """`python -m lra.grid --help`: the command as users type it, the module docstring with its
    example lines kept (not re-wrapped), and the rule for every other argument."""
    text = grid.parser().format_help()
    assert text.startswith("usage: python -m lra.grid [-h] [--tasks TASKS]")
    assert grid.__doc__.strip() in text
    assert text.rstrip().endswith("Any other argument is passed to every run as an lra.train "
                                  "override (e.g. trainer.accumulate=2, hydra.launcher.n_jobs=2).")
