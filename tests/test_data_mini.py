"""The mini suite's text, retrieval and image stand-ins: marked as stand-ins, balanced, and
real (windows come from the right package or module and never cross between splits). ListOps and
Pathfinder minis are the generators', tested with them; here only their order is checked: the
first 64 examples of every mini val split (what a capped evaluation reads) hold several classes."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep import mini, pathfinder, tasks
from data_prep.cache import SHUFFLE_SEED, DataError, load_split, read_manifest


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    mini.build(root, ["text", "retrieval", "image"], progress=False)
    return root


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory):
    """The ListOps and Pathfinder minis, smaller (their order does not depend on the size): val
    has 64 examples."""
    root = tmp_path_factory.mktemp("mini_generated")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mini, "SIZES", {"train": 64, "val": 64, "test": 64})
        patch.setattr(pathfinder, "MINI_IMAGES", 640)
        mini.build(root, ["listops", "pathfinder"], progress=False)
    return root


@pytest.fixture(scope="module")
def modules():
    return mini.stdlib_modules()


def load(root, task):
    manifest = read_manifest(root / task, task=task, data="mini")
    return manifest, {s: load_split(root / task, s, manifest) for s in ("train", "val", "test")}


def window_bytes(tokens, length) -> bytes:
    return bytes((np.asarray(tokens[:length]).astype(np.int64) - 1).astype(np.uint8))


def test_builders_cover_the_five_tasks():
    assert tasks.mini_names() == ["listops", "text", "retrieval", "image", "pathfinder"]


@pytest.mark.parametrize("task", tasks.mini_names())
def test_first_val_examples_hold_several_classes(root, generated_root, task):
    folder = generated_root if task in ("listops", "pathfinder") else root
    manifest, splits = load(folder, task)
    assert manifest["splits"]["val"]["size"] >= 64
    assert len(np.unique(splits["val"].labels[:64])) > 1
    if task in ("text", "retrieval"):  # drawn class by class or alternating: stored shuffled
        assert manifest["params"]["shuffle_seed"] == SHUFFLE_SEED
        assert not np.array_equal(splits["val"].labels[:8], np.resize([1, 0], 8))


def test_unknown_mini_task_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"no mini task 'pathx'; the mini tasks are listops, "):
        mini.build(tmp_path, ["pathx"])


@pytest.mark.parametrize("task", ["text", "retrieval", "image"])
def test_manifests_say_stand_in(root, task):
    manifest, _ = load(root, task)
    assert manifest["mini"] is True
    assert "mini stand-in, not the LRA benchmark" in manifest["description"]


def test_text_is_balanced_and_from_the_labelled_packages(root, modules):
    manifest, splits = load(root, "text")
    groups = list(mini.TEXT_CLASSES.values())
    assert manifest["num_classes"] == 2, "binary, like IMDb (the task config says 2 classes)"
    for name, size in mini.SIZES.items():
        assert manifest["splits"][name]["label_counts"] == [size // 2, size // 2]
    test, train = splits["test"], splits["train"]
    assert np.all(test.lengths == mini.WINDOW)
    packages = []
    for tokens, length, label in zip(test.tokens, test.lengths, test.labels, strict=True):
        window = window_bytes(tokens, length)
        home = [p for p in groups[label] if any(window in mini.region(src, "test")
                                                 for _, src in modules[p])]
        assert home, "the window comes from a package of its class"
        packages.append(home[0])
    # Every package is equally represented, and no test text comes from a train region.
    assert len(set(np.unique(packages, return_counts=True)[1])) == 1
    for tokens, length in list(zip(test.tokens, test.lengths, strict=True))[::16]:
        window = window_bytes(tokens, length)
        assert not any(window in mini.region(src, "train") for files in modules.values()
                       for _, src in files)
    assert len({window_bytes(t, n) for t, n in zip(train.tokens, train.lengths,
                                                   strict=True)}) > 0.9 * len(train)


def test_retrieval_pairs_are_same_module_or_not(root, modules):
    manifest, splits = load(root, "retrieval")
    assert manifest["pair"] is True
    for name, size in mini.SIZES.items():
        assert manifest["splits"][name]["label_counts"] == [size // 2, size // 2]
    sources = [(path, src) for files in modules.values() for path, src in files]
    val = splits["val"]
    assert val.tokens.shape == (len(val), 2, mini.WINDOW)
    for tokens, lengths, label in list(zip(val.tokens, val.lengths, val.labels,
                                           strict=True))[::4]:
        u, v = (window_bytes(tokens[j], lengths[j]) for j in range(2))
        home_u = {path for path, src in sources if u in mini.region(src, "val")}
        home_v = {path for path, src in sources if v in mini.region(src, "val")}
        assert home_u and home_v
        assert bool(home_u & home_v) == bool(label)
        if label:  # two different, non-overlapping windows of one module
            assert u != v and u[: mini.WINDOW // 2] not in v


def test_image_digits(root):
    manifest, splits = load(root, "image")
    assert (manifest["num_classes"], manifest["vocab_size"], manifest["max_len"]) == (10, 256,
                                                                                    1024)
    assert sum(s["size"] for s in manifest["splits"].values()) == 1797
    assert all(min(s["label_counts"]) > 0 for s in manifest["splits"].values())
    train = splits["train"]
    assert (train.tokens == 0).any() and train.tokens.max() > 200
    assert np.all(train.lengths == 1024)
