"""What the README promises about the data the trainer reads, checked by value: masks (and
`data.mask_zero_tokens_as_padding`), a cache that disagrees with the task config, the data
order of `StepBatches` / `Shard` across process counts, and the dropout stream of `reseed`."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch

from data_prep.cache import DataError, Split, write_task
from lra.checks import ConfigError
from lra.data import DataConfig, load_task_data, manifest_digest, prepare_manifest
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
    # Embedding lookups and the loss take int64 indices (torch.equal ignores the dtype).
    assert tokens.dtype == labels.dtype == torch.int64 and mask.dtype == torch.bool


def test_mask_zero_tokens_as_padding_masks_every_zero(tmp_path):
    """The published harnesses' `token != 0` mask: zeros inside an example are masked too."""
    write_cache(tmp_path)
    _, mask, _ = batch(tmp_path, mask_zero_tokens_as_padding=True)
    expected = (TOKENS != 0) & (np.arange(8) < LENGTHS[:, None])
    assert mask.tolist() == expected.tolist()
    assert mask.sum().item() == 8  # of 12 real tokens


def test_zero_token_masking_keeps_the_length_mask(tmp_path):
    """The zero-token mask is taken with the length mask, not instead of it: a nonzero token
    past an example's length (a cache may pad with any token) stays padding."""
    split = Split(np.array([[3, 0, 5, 2], [0, 4, 0, 0]], dtype=np.uint8), np.array([2, 2]),
                  np.array([0, 1]))
    write_task(tmp_path / "image", {"train": split, "val": split, "test": split}, task="image",
               source="test", num_classes=2, vocab_size=10, max_len=4, mini=True,
               description="fixture", params={})
    _, mask, _ = batch(tmp_path, mask_zero_tokens_as_padding=True)
    assert mask.tolist() == [[True, False, False, False], [False, True, False, False]]


def test_pair_masks_come_from_each_sequence_length(tmp_path):
    """Retrieval-style pairs: tokens (batch, 2, max_len) and one mask row per sequence."""
    write_cache(tmp_path, pair=True)
    tokens, mask, _ = batch(tmp_path)
    assert tokens.shape == mask.shape == (2, 2, 8)
    assert mask.tolist() == [[[True] * 6 + [False] * 2] * 2] * 2


def test_pad_to_batch_cuts_to_the_longest_example(tmp_path):
    write_cache(tmp_path)
    tokens, mask, _ = batch(tmp_path, pad_to="batch")
    assert tokens.shape == (2, 6) and mask.all()


def test_pad_to_batch_keeps_one_position_for_empty_examples(tmp_path):
    """A batch whose longest example has one token is one position long; an all-empty batch
    keeps one (masked) position rather than none."""
    split = Split(np.array([[4, 0, 0], [0, 0, 0]], dtype=np.uint8), np.array([1, 0]),
                  np.array([0, 1]))
    write_task(tmp_path / "image", {"train": split, "val": split, "test": split}, task="image",
               source="test", num_classes=2, vocab_size=10, max_len=3, mini=True,
               description="fixture", params={})
    cfg = DataConfig(root=str(tmp_path), pad_to="batch")
    data = load_task_data("image", cfg, json.loads((tmp_path / "image" / "manifest.json")
                                                   .read_text()))
    tokens, mask, _ = next(iter(data.eval_loader("train", 2, Shard(2, Dist()), cfg)))
    assert tokens.tolist() == [[4], [0]] and mask.tolist() == [[True], [False]]
    tokens, mask, _ = next(iter(data.eval_loader("train", 1, [1], cfg)))
    assert tokens.tolist() == [[0]] and mask.tolist() == [[False]]


def loaded(root, **data_options):
    cfg = DataConfig(root=str(root), **data_options)
    return load_task_data("image", cfg, json.loads((root / "image" / "manifest.json")
                                                   .read_text())), cfg


def test_the_train_loader_follows_its_batch_sampler(tmp_path):
    write_cache(tmp_path)
    data, cfg = loaded(tmp_path)
    out = [(t.tolist(), y.tolist()) for t, _, y in data.train_loader([[1], [0, 1]], cfg)]
    assert out == [(TOKENS[[1]].tolist(), [1]), (TOKENS.tolist(), [0, 1])]


def test_the_eval_loader_batches_its_split_in_the_sampler_order(tmp_path):
    write_cache(tmp_path)
    data, cfg = loaded(tmp_path)
    out = [(t.tolist(), y.tolist()) for t, _, y in data.eval_loader("val", 1, [1, 0], cfg)]
    assert out == [(TOKENS[[1]].tolist(), [1]), (TOKENS[[0]].tolist(), [0])]


def test_loaders_leave_the_global_rng_alone(tmp_path):
    """A loader seeds its workers from its own generator: iterating it draws nothing from the
    global RNG, so dropout after a resume does not depend on how many loaders ran before."""
    write_cache(tmp_path)
    data, cfg = loaded(tmp_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expected = torch.rand(4)
        torch.manual_seed(0)
        list(data.train_loader([[0, 1]], cfg))
        list(data.eval_loader("val", 2, [0, 1], cfg))
        assert torch.equal(torch.rand(4), expected)


def test_data_num_workers_sets_the_loader_processes(tmp_path):
    """data.num_workers worker processes load the batches (the default: none, the main
    process), and the batches are the same."""
    write_cache(tmp_path)
    data, cfg = loaded(tmp_path)
    alone = data.eval_loader("val", 1, [1, 0], cfg)
    assert alone.num_workers == 0
    data, cfg = loaded(tmp_path, num_workers=1)
    workers = data.eval_loader("val", 1, [1, 0], cfg)
    assert workers.num_workers == 1
    for a, b in zip(alone, workers, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_checksums_are_verified_by_default_and_skipped_when_disabled(tmp_path):
    write_cache(tmp_path)
    manifest = json.loads((tmp_path / "image" / "manifest.json").read_text())
    manifest["splits"]["val"]["sha256"]["val.labels.npy"] = "0" * 64
    path = tmp_path / "image" / "val.labels.npy"
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))} does not match the checksum "
                                        r"in its manifest \(corrupt or edited\); rebuild with: "
                                        r"python -m data_prep mini$"):
        load_task_data("image", DataConfig(root=str(tmp_path)), manifest)
    data = load_task_data("image", DataConfig(root=str(tmp_path), verify_checksums=False),
                          manifest)
    assert data.splits["val"][1][2] == 1 and data.manifest is manifest


def test_a_missing_mini_task_is_built_only_when_allowed(tmp_path, monkeypatch, caplog):
    """data.build_missing (off by default) builds a missing mini task once, with a log line;
    a task already there is read as it is; without it the error names the build command."""
    from data_prep import mini

    calls = []

    def build(root, names):
        calls.append((root, names))
        write_cache(tmp_path)

    monkeypatch.setattr(mini, "build", build)
    expect = {"num_classes": 2, "pair": False, "max_len": 8}
    with pytest.raises(DataError, match=r"^no prepared data for task 'image': .* Prepare it with: "
                                        r"python -m data_prep mini$"):
        prepare_manifest("image", DataConfig(root=str(tmp_path)), expect=expect)
    assert calls == []
    with caplog.at_level(logging.INFO, logger="lra.data"):
        manifest = prepare_manifest("image", DataConfig(root=str(tmp_path), build_missing=True),
                                    expect=expect)
    assert calls == [(str(tmp_path), ["image"])] and manifest["description"] == "fixture"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"building the mini image task in {tmp_path / 'image'} (first use)")]
    prepare_manifest("image", DataConfig(root=str(tmp_path), build_missing=True), expect=expect)
    assert len(calls) == 1


def test_data_config_names_a_bad_value_with_its_key():
    with pytest.raises(ConfigError, match=r"^data.pad_to='btach' is not one of max, batch "
                                          r"\(did you mean batch\?\)$"):
        DataConfig(pad_to="btach")
    with pytest.raises(ConfigError, match=r"^data.name='lar' is not one of mini, lra"):
        DataConfig(name="lar")
    with pytest.raises(ConfigError, match=r"^data.num_workers=-1 must be >= 0$"):
        DataConfig(num_workers=-1)


def test_the_digest_does_not_depend_on_the_manifest_key_order(tmp_path):
    write_cache(tmp_path)
    manifest = json.loads((tmp_path / "image" / "manifest.json").read_text())
    reordered = dict(reversed(manifest.items()))
    reordered["splits"] = dict(reversed(manifest["splits"].items()))
    reordered["params"] = {"b": 1, "a": 2}
    manifest["params"] = {"a": 2, "b": 1}
    assert manifest_digest(reordered) == manifest_digest(manifest)


@pytest.mark.parametrize("name", ["train", "val", "test"])
def test_the_digest_follows_every_split_checksum(tmp_path, name):
    """Rebuilt arrays (new checksums, every other field the same) are new data."""
    write_cache(tmp_path)
    manifest = json.loads((tmp_path / "image" / "manifest.json").read_text())
    base = manifest_digest(manifest)
    manifest["splits"][name]["sha256"][f"{name}.tokens.npy"] = "0" * 64
    assert manifest_digest(manifest) != base


@pytest.mark.parametrize("key, cache_value, expect_value, message", [
    ("num_classes", 3, 2, " says num_classes=3 but task.num_classes=2; fix the task config or "
                          "rebuild the data"),
    ("pair", True, False, " says pair=True but task.pair=False; fix the task config or rebuild "
                          "the data"),
    ("max_len", 8, 4, " holds sequences of up to 8 tokens but task.max_len=4; raise "
                      "task.max_len, or set data.truncate_to_max_len=true to cut every "
                      "example to it"),
])
def test_a_cache_that_disagrees_with_the_task_config_is_rejected(tmp_path, key, cache_value,
                                                                 expect_value, message):
    write_cache(tmp_path, **{key: cache_value})
    expect = {"num_classes": 2, "pair": False, "max_len": 8, key: expect_value}
    with pytest.raises(DataError) as err:
        prepare_manifest("image", DataConfig(root=str(tmp_path)), expect=expect)
    assert str(err.value) == str(tmp_path / "image" / "manifest.json") + message


@pytest.mark.parametrize("max_len", [8, 16])
def test_a_cache_as_long_as_or_shorter_than_task_max_len_is_accepted(tmp_path, max_len):
    write_cache(tmp_path)
    manifest = prepare_manifest("image", DataConfig(root=str(tmp_path)),
                                expect={"num_classes": 2, "pair": False, "max_len": max_len})
    assert manifest["max_len"] == 8


@pytest.mark.parametrize("pair", [False, True])
def test_truncate_to_max_len_reads_each_example_s_first_tokens(tmp_path, pair):
    """Data prepared at 8 tokens read at task.max_len 4 (the original LRA's Text at 1,000 from
    4,000): tokens cut to 4 positions, lengths 6 clipped to 4, both documents of a pair."""
    write_cache(tmp_path, pair=pair)
    cfg = DataConfig(root=str(tmp_path), truncate_to_max_len=True)
    manifest = prepare_manifest("image", cfg, expect={"num_classes": 2, "pair": pair,
                                                      "max_len": 4})
    data = load_task_data("image", cfg, manifest, max_len=4)
    tokens, mask, _ = next(iter(data.eval_loader("train", 2, Shard(2, Dist()), cfg)))
    want = np.stack([TOKENS, TOKENS], 1) if pair else TOKENS
    assert torch.equal(tokens, torch.from_numpy(want[..., :4].astype(np.int64)))
    assert mask.all() and mask.shape == tokens.shape


@pytest.mark.parametrize("name", ["train", "val", "test"])
def test_an_empty_split_is_rejected(tmp_path, name):
    write_cache(tmp_path)
    path = tmp_path / "image" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"][name]["size"] = 0
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as err:
        prepare_manifest("image", DataConfig(root=str(tmp_path)),
                         expect={"num_classes": 2, "pair": False, "max_len": 8})
    assert str(err.value) == f"{path}: split {name!r} is missing or empty; rebuild the data"


@pytest.mark.parametrize("cache_mini, data_name, message", [
    (True, "lra", " holds a mini stand-in, but data=lra; point data.root elsewhere"),
    (False, "mini", " holds the LRA benchmark, but data=mini; point data.root elsewhere"),
])
def test_mini_and_lra_caches_are_not_mixed(tmp_path, cache_mini, data_name, message):
    write_cache(tmp_path, mini=cache_mini)
    with pytest.raises(DataError) as err:
        prepare_manifest("image", DataConfig(name=data_name, root=str(tmp_path)),
                         expect={"num_classes": 2, "pair": False, "max_len": 8})
    assert str(err.value) == str(tmp_path / "image" / "manifest.json") + message


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
