"""The zoo's seeded randomness: draw numbers, the redraw schedule and its checkpointed count."""

import subprocess
import sys

import pytest
import torch

from attention_zoo.draws import DrawCounter, generator, module_seed, stable_seed


def test_stable_seed_is_the_same_in_a_fresh_interpreter_with_hash_randomisation():
    # Python's hash() of str is salted per process; the draw seed must not depend on it.
    code = "from attention_zoo.draws import stable_seed; print(stable_seed(1234, 7))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": salt}).stdout.strip()
            for salt in ("1", "2")}
    assert outs == {str(stable_seed(1234, 7))}


def test_draws_differ_by_number_and_by_seed():
    seeds = {stable_seed(s, d) for s in range(3) for d in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**63 for s in seeds)
    a = torch.randn(4, generator=generator(5, 1))
    assert torch.equal(a, torch.randn(4, generator=generator(5, 1)))
    assert not torch.equal(a, torch.randn(4, generator=generator(5, 2)))


def test_a_generator_is_addressed_by_seed_and_draw_number():
    """generator(seed) is draw 0 of that seed; another seed gives another stream; a counter's
    generator is the module function's for its seed."""
    def first(gen):
        return torch.randn(4, generator=gen)

    assert torch.equal(first(generator(5)), first(generator(5, 0)))
    assert not torch.equal(first(generator(5, 1)), first(generator(6, 1)))
    assert torch.equal(first(DrawCounter(seed=5, every=1).generator(3)), first(generator(5, 3)))


def test_module_seed_is_the_option_or_one_draw_of_the_global_rng():
    assert module_seed(7) == 7
    with torch.random.fork_rng(devices=[]):  # the global RNG is left as it was
        torch.manual_seed(0)
        drawn = [module_seed(None) for _ in range(2)]
        torch.manual_seed(0)
        assert [module_seed(None) for _ in range(2)] == drawn  # torch.manual_seed fixes it
    assert drawn[0] != drawn[1] and all(0 <= s < 2**62 for s in drawn)  # successive layers differ
    assert max(drawn) >= 2**40  # drawn from the whole 62-bit range (P(fail) ~ 2^-44)
    assert isinstance(drawn[0], int)


def test_eval_before_any_counted_call_uses_draw_zero():
    """A model evaluated before it trains (every N, eval not counted) uses draw 0, the one its
    buffers hold from construction."""
    counter = DrawCounter(seed=0, every=2).eval()
    assert counter.current() == 0 and counter.next() == 0 and counter.calls == 0


def test_a_redraw_interval_below_one_is_refused_with_its_value():
    with pytest.raises(ValueError, match=r"^redraw interval must be >= 1 or None, got 0$"):
        DrawCounter(seed=0, every=0)


def test_schedule_counts_training_calls_and_eval_only_when_asked():
    every2 = DrawCounter(seed=0, every=2)
    assert [every2.next() for _ in range(5)] == [0, 0, 1, 1, 2]
    every2.eval()
    assert [every2.next() for _ in range(3)] == [2, 2, 2]  # eval uses the current draw
    each = DrawCounter(seed=0, every=1, count_eval=True).eval()
    assert [each.next() for _ in range(3)] == [0, 1, 2]
    fixed = DrawCounter(seed=0, every=None)
    assert [fixed.next() for _ in range(3)] == [0, 0, 0]


def test_a_restored_counter_continues_the_sequence():
    run = DrawCounter(seed=9, every=1)
    uninterrupted = [run.next() for _ in range(6)]
    first = DrawCounter(seed=9, every=1)
    head = [first.next() for _ in range(3)]
    resumed = DrawCounter(seed=123, every=1)  # another seed: the checkpoint must restore it
    resumed.load_state_dict(first.state_dict())
    assert head + [resumed.next() for _ in range(3)] == uninterrupted
    assert resumed.seed == 9
