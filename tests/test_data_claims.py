"""What the README promises about the data the trainer reads, checked by value: masks (and
`data.mask_zero_tokens_as_padding`), a cache that disagrees with the task config, the data
order of `StepBatches` / `Shard` across process counts, and the dropout stream of `reseed`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_prep.cache import DataError, Split, write_task
from lra.data import DataConfig, load_task_data, prepare_manifest
from lra.distributed import Dist
from lra.sampling import Shard, StepBatches, reseed

# Two examples of 6 tokens in a max_len 8 cache, with 0 tokens inside them (black pixels).
TOKENS = np.array([[3, 0, 5, 0, 7, 9, 0, 0], [0, 0, 1, 2, 3, 4, 0, 0]], dtype=np.uint8)
LENGTHS = np.array([6, 6], dtype=np.int32)


def write_cache(root, *, mini=True, num_classes=2, max_len=8, pair=False):
    tokens = np.stack([TOKENS, TOKENS], 1) if pair else TOKENS
    lengths = np.stack([LENGTHS, LENGTHS], 1) if pair else LENGTHS
    split = Split(tokens, lengths, np.array([0, 1]))
    write_task(root / "image", {"train": split, "val": split, "test": split}, task="image",
               source="test", num_classes=num_classes, vocab_size=10, max_len=max_len, mini=mini,
               description="fixture", params={})


def batch(root, **data_options):
    cfg = DataConfig(root=str(root), **data_options)
    data = load_task_data("image", cfg, json.loads((root / "image" / "manifest.json").read_text()))
    loader = data.eval_loader("train", 2, Shard(2, Dist()), cfg)
    return next(iter(loader))


def test_masks_come_from_lengths_and_zero_tokens_are_real(tmp_path):
    write_cache(tmp_path)
    tokens, mask, labels = batch(tmp_path)
    assert torch.equal(tokens, torch.from_numpy(TOKENS.astype(np.int64)))
    assert mask.tolist() == [[True] * 6 + [False] * 2] * 2
    assert labels.tolist() == [0, 1]


def test_mask_zero_tokens_as_padding_masks_every_zero(tmp_path):
    """The published harnesses' `token != 0` mask: zeros inside an example are masked too."""
    write_cache(tmp_path)
    _, mask, _ = batch(tmp_path, mask_zero_tokens_as_padding=True)
    expected = (TOKENS != 0) & (np.arange(8) < LENGTHS[:, None])
    assert mask.tolist() == expected.tolist()
    assert mask.sum().item() == 8  # of 12 real tokens


def test_pad_to_batch_cuts_to_the_longest_example(tmp_path):
    write_cache(tmp_path)
    tokens, mask, _ = batch(tmp_path, pad_to="batch")
    assert tokens.shape == (2, 6) and mask.all()


@pytest.mark.parametrize("key, cache_value, expect_value, message", [
    ("num_classes", 3, 2, "says num_classes=3 but task.num_classes=2"),
    ("pair", True, False, "says pair=True but task.pair=False"),
    ("max_len", 8, 4, "up to 8 tokens but task.max_len=4"),
])
def test_a_cache_that_disagrees_with_the_task_config_is_rejected(tmp_path, key, cache_value,
                                                                 expect_value, message):
    write_cache(tmp_path, **{key: cache_value})
    expect = {"num_classes": 2, "pair": False, "max_len": 8, key: expect_value}
    with pytest.raises(DataError, match=message) as err:
        prepare_manifest("image", DataConfig(root=str(tmp_path)), expect=expect)
    assert str(tmp_path / "image" / "manifest.json") in str(err.value)


def test_a_cache_shorter_than_task_max_len_is_accepted(tmp_path):
    write_cache(tmp_path)
    manifest = prepare_manifest("image", DataConfig(root=str(tmp_path)),
                                expect={"num_classes": 2, "pair": False, "max_len": 16})
    assert manifest["max_len"] == 8


@pytest.mark.parametrize("cache_mini, data_name, message", [
    (True, "lra", "holds a mini stand-in, but data=lra"),
    (False, "mini", "holds the LRA benchmark, but data=mini"),
])
def test_mini_and_lra_caches_are_not_mixed(tmp_path, cache_mini, data_name, message):
    write_cache(tmp_path, mini=cache_mini)
    with pytest.raises(DataError, match=message):
        prepare_manifest("image", DataConfig(name=data_name, root=str(tmp_path)),
                         expect={"num_classes": 2, "pair": False, "max_len": 8})


def global_batches(n, global_batch, seed, world, steps, start=0):
    """Per step, the global batch assembled (sorted) from every rank's share."""
    ranks = [iter(StepBatches(n, global_batch, seed, start, Dist(rank=r, world=world)))
             for r in range(world)]
    out = []
    for _ in range(steps):
        shares = [next(r) for r in ranks]
        assert all(len(s) == global_batch // world for s in shares)
        out.append(sorted(sum(shares, [])))
    return out


def test_step_batches_split_one_global_batch_whatever_the_process_count():
    """Each rank gets global/world examples, the ranks' shares are disjoint, and together they
    are the one-process batch of that step: the data order does not depend on the world size."""
    n, gb, steps = 50, 12, 10  # 4 full batches per epoch, 2 examples dropped each epoch
    single = global_batches(n, gb, 7, 1, steps)
    for world in (2, 3, 4):
        for merged, alone in zip(global_batches(n, gb, 7, world, steps), single, strict=True):
            assert merged == alone
            assert len(set(merged)) == gb  # the shares are disjoint
    # An epoch is a permutation: its 4 batches are disjoint; the next epoch reshuffles.
    epoch = sum(single[:4], [])
    assert len(set(epoch)) == 48 and all(0 <= i < n for i in epoch)
    assert sum(single[4:8], []) != epoch
    # The order is a function of (seed, step): starting at step 6 gives steps 6, 7, ...
    later = global_batches(n, gb, 7, 2, 4, start=6)
    assert later == single[6:10]
    assert global_batches(n, gb, 8, 1, 1) != single[:1]


@pytest.mark.parametrize("limit", [None, 13])
def test_shard_covers_the_split_once_whatever_the_process_count(limit):
    """The ranks' shards are disjoint and together cover the split (or the same seeded subset
    of `limit` examples for every world size)."""
    n = 40
    subsets = []
    for world in (1, 2, 3):
        shards = [list(Shard(n, Dist(rank=r, world=world), limit, seed=5)) for r in range(world)]
        merged = sum(shards, [])
        assert len(merged) == len(set(merged)) == (limit or n)
        assert [len(s) for s in shards] == [len(range(r, limit or n, world))
                                            for r in range(world)]
        subsets.append(sorted(merged))
    assert subsets[0] == subsets[1] == subsets[2]
    if limit is None:
        assert subsets[0] == list(range(n))
    else:
        assert subsets[0] != list(range(limit))  # a random subset, not the first examples
        assert sorted(Shard(n, Dist(), limit, seed=6)) != subsets[0]


def test_reseed_gives_each_seed_rank_and_step_its_own_stream_and_repeats_it():
    """The random stream of a step is a function of (seed, rank, step) alone: the same triple
    draws the same numbers whatever was drawn before (a resumed run continues exactly), and
    changing any one of the three changes them (ranks draw their own dropout masks)."""

    def draws(seed, rank, step):
        reseed(seed, rank, step)
        return torch.rand(8)

    with torch.random.fork_rng(devices=[]):
        base = draws(3, 1, 7)
        torch.rand(100)  # an earlier step's draws must not leak into the next reseed
        assert torch.equal(draws(3, 1, 7), base)
        for other in [(4, 1, 7), (3, 0, 7), (3, 1, 8)]:
            assert not torch.equal(draws(*other), base), other
