"""The cache writer: atomic (a failed build keeps the previous cache, nothing temporary is left),
readable by others under the umask, checked before writing (errors name the task, split and
example), and shuffled once, by a recorded seed, where a builder asks for it."""

from __future__ import annotations

import contextlib
import os
import stat

import numpy as np
import pytest

from data_prep import cache
from data_prep.cache import DataError, Split, load_split, read_manifest, write_task


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(folder) -> dict[str, int]:
    """Permission bits of a folder and everything under it, by path relative to its parent."""
    paths = [folder, *folder.rglob("*")]
    return {p.relative_to(folder.parent).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in paths}


def splits(n: int = 6, label_offset: int = 0, max_len: int = 5) -> dict[str, Split]:
    rng = np.random.default_rng(n + label_offset)
    out = {}
    for name in cache.SPLITS:
        tokens = rng.integers(1, 20, size=(n, max_len)).astype(np.uint8)
        lengths = rng.integers(1, max_len + 1, size=n).astype(np.int32)
        out[name] = Split(tokens, lengths, (np.arange(n) + label_offset) % 3)
    return out


def write(out_dir, data, **kwargs):
    return write_task(out_dir, data, task="listops", source="test", num_classes=3, vocab_size=20,
                      max_len=5, mini=True, description="fixture", params={"n": 1}, **kwargs)


def test_cache_is_readable_by_others_under_umask_022(tmp_path):
    with umask(0o022):
        write(tmp_path / "cache", splits())
    found = modes(tmp_path / "cache")
    assert found.pop("cache") == 0o755
    assert len(found) == 10 and set(found.values()) == {0o644}  # 9 arrays and the manifest


def test_failed_build_keeps_the_previous_cache(tmp_path, monkeypatch):
    out = tmp_path / "cache"
    write(out, splits())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Rejected before anything is written: a label outside the classes.
    bad = splits(label_offset=1)
    bad["val"].labels[4] = 7
    with pytest.raises(DataError, match=r"listops val: example 4 has label 7, outside \[0, 3\)"):
        write(out, bad)
    # Killed halfway through writing the arrays.
    real_save, calls = np.save, []

    def save_then_die(path, array):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(cache.np, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        write(out, splits(label_offset=2))
    monkeypatch.undo()
    assert len(calls) == 4
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["cache"], "no temporary folder left behind"
    manifest = read_manifest(out, task="listops")
    assert load_split(out, "val", manifest).labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_rebuild_replaces_the_cache(tmp_path):
    out = tmp_path / "cache"
    write(out, splits())
    write(out, splits(n=4, label_offset=1))
    manifest = read_manifest(out, task="listops")
    assert load_split(out, "test", manifest).labels.tolist() == [1, 2, 0, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


@pytest.mark.parametrize("problem, match", [
    ("empty", r"listops test: no examples"),
    ("width", r"listops train: tokens are 4 wide, not max_len=5"),
    ("count", r"listops val: 6 token rows, 5 lengths and 6 labels"),
    ("length", r"listops val: example 2 has length \[6\], outside \[0, 5\]"),
    ("label", r"listops train: example 0 has label -1, outside \[0, 3\) \(1 such\)"),
])
def test_write_task_errors_name_task_split_and_example(tmp_path, problem, match):
    data = splits()
    if problem == "empty":
        data["test"] = Split(data["test"].tokens[:0], data["test"].lengths[:0],
                             data["test"].labels[:0])
    elif problem == "width":
        data["train"] = Split(data["train"].tokens[:, :4], data["train"].lengths,
                              data["train"].labels)
    elif problem == "count":
        data["val"] = Split(data["val"].tokens, data["val"].lengths[:5], data["val"].labels)
    elif problem == "length":
        data["val"].lengths[2] = 6
    else:
        data["train"].labels[0] = -1
    with pytest.raises(DataError, match=match):
        write(tmp_path / "cache", data)
    assert not any(tmp_path.iterdir())


def test_pack_names_the_example_and_the_fix():
    tokens, lengths = cache.pack([[1, 2], [], [3]], 3, where=str, fix="unused")
    assert tokens.tolist() == [[1, 2, 0], [0, 0, 0], [3, 0, 0]] and lengths.tolist() == [2, 0, 1]
    with pytest.raises(DataError, match=r"^data\.tsv:4: 4 tokens, more than max_len=3; "
                                        r"pass --max-len 4$"):
        cache.pack([[1], [1, 2], [1, 2, 3, 4]], 3, where=lambda i: f"data.tsv:{i + 2}",
                   fix="pass --max-len 4")


def test_shuffle_keeps_rows_together_and_is_recorded(tmp_path):
    data = splits(n=50)
    for split in data.values():  # a class-sorted source
        split.labels.sort()
    out = write(tmp_path / "cache", data, shuffle_seed=3)
    manifest = read_manifest(out, task="listops")
    assert manifest["params"] == {"n": 1, "shuffle_seed": 3}
    order = cache.permutation(50, 3)
    for name, source in data.items():
        got = load_split(out, name, manifest)
        assert np.array_equal(got.tokens, source.tokens[order])
        assert np.array_equal(got.lengths, source.lengths[order])
        assert np.array_equal(got.labels, source.labels[order])
        assert len(set(got.labels[:10].tolist())) > 1
        assert manifest["splits"][name]["label_counts"] == np.bincount(source.labels).tolist()
    # The same seed gives the same bytes: the cache is reproducible.
    again = write(tmp_path / "again", data, shuffle_seed=3)
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in
               ("train.tokens.npy", "val.labels.npy"))
    unshuffled = read_manifest(write(tmp_path / "plain", data), task="listops")
    assert "shuffle_seed" not in unshuffled["params"]


def test_manifest_missing_keys_is_a_data_error(tmp_path):
    out = write(tmp_path / "cache", splits())
    path = out / "manifest.json"
    path.write_text(path.read_text().replace('"splits"', '"splitz"'))
    with pytest.raises(DataError, match=r"manifest\.json lacks splits .*python -m data_prep"):
        read_manifest(out, task="listops")


def edit_manifest(out, edit) -> None:
    import json

    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m.update(splits="train"), r"field splits is 'train', not dict"),
    (lambda m: m.update(vocab_size="20"), r"field vocab_size is '20', not int"),
    (lambda m: m.update(mini=1), r"field mini is 1, not bool"),
    (lambda m: m.update(max_len=True), r"field max_len is True, not int"),
    (lambda m: m.update(num_classes=0), r"field num_classes is 0, not a positive int"),
    (lambda m: m["splits"].pop("val"), r"field splits\.val is None, not an object"),
    (lambda m: m["splits"]["train"].update(size="6"), r"field splits\.train\.size is '6'"),
    (lambda m: m["splits"]["test"].pop("sha256"), r"field splits\.test\.sha256 is None"),
    (lambda m: m["splits"]["train"]["sha256"].pop("train.labels.npy"),
     r"field splits\.train\.sha256\['train\.labels\.npy'\] is None, not str"),
])
def test_manifest_schema_faults_are_one_data_error_naming_file_and_field(tmp_path, edit, match):
    out = write(tmp_path / "cache", splits())
    edit_manifest(out, edit)
    with pytest.raises(DataError, match=rf"^{out}/manifest\.json: {match}.*; rebuild with: "
                                        r"python -m data_prep") as err:
        read_manifest(out, task="listops")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("edit", "file", "match"), [
    (lambda m: m.update(vocab_size=5), "train.tokens.npy",
     r"example \d+ holds token \d+, outside \[0, vocab_size=5\)"),
    (lambda m: m.update(num_classes=2), "train.labels.npy",
     r"example 2 has label 2, outside \[0, 2\) \(2 such\) of num_classes=2"),
    (lambda m: m.update(max_len=4), "train.tokens.npy", r"tokens are 5 wide, not max_len=4"),
    (lambda m: m.update(pair=True), "train.tokens.npy",
     r"tokens have shape \(6, 5\), not .* as pair=True says"),
])
def test_arrays_are_checked_against_the_manifest_fields(tmp_path, edit, file, match):
    """Checksums pass (the arrays are intact) but the manifest's fields do not describe them."""
    out = write(tmp_path / "cache", splits())
    edit_manifest(out, edit)
    manifest = read_manifest(out, task="listops")
    fix = rf"; the arrays disagree with {out}/manifest\.json; rebuild with: python -m data_prep"
    with pytest.raises(DataError, match=rf"^{out}/{file}: {match}{fix}"):
        load_split(out, "train", manifest)


def test_every_field_the_model_sees_is_in_the_data_digest(tmp_path):
    from lra.data import manifest_digest

    out = write(tmp_path / "cache", splits())
    base = manifest_digest(read_manifest(out, task="listops"))
    for key, value in (("vocab_size", 500), ("num_classes", 4), ("max_len", 6), ("pair", True)):
        edit_manifest(out, lambda m, key=key, value=value: m.update({key: value}))
        assert manifest_digest(read_manifest(out, task="listops")) != base, key
        write(out, splits())
