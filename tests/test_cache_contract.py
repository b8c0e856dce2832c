"""The cache's contract, value by value, where a mutation run of data_prep/cache.py found no test
noticing a change: dtypes, boundaries, checksums, memory mapping, and every error's full message
(file, problem and the command that fixes it)."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from data_prep import cache
from data_prep.cache import DataError, Split, load_split, read_manifest, write_task

# ListOps comes from the release or our generator: its command lists only those sources.
LRA_FIX = "python -m data_prep listops --source <lra_release|generate>"


def splits(labels=(0, 1, 0), lengths=(3, 0, 5)) -> dict[str, Split]:
    tokens = np.arange(15, dtype=np.uint8).reshape(3, 5)
    return {name: Split(tokens, np.array(lengths, dtype=np.int64),
                        np.array(labels, dtype=np.int32)) for name in cache.SPLITS}


def write(out_dir, data=None, **kwargs):
    options = {"task": "listops", "source": "test", "num_classes": 3, "vocab_size": 20,
               "max_len": 5, "mini": False, "description": "fixture", "params": {}} | kwargs
    return write_task(out_dir, data or splits(), **options)


def test_prepare_command_per_data_kind():
    assert cache.prepare_command("listops", "mini") == "python -m data_prep mini"
    assert cache.prepare_command("listops", "lra") == LRA_FIX


def test_pack_dtypes_and_boundaries():
    """uint8 while every token fits (< 256), int16 from 256; lengths int32; a sequence exactly
    max_len long fits; all-empty input packs to zeros."""
    tokens, lengths = cache.pack([[255, 1], [2]], 2, where=str, fix="")
    assert tokens.dtype == np.uint8 and lengths.dtype == np.int32
    assert tokens.tolist() == [[255, 1], [2, 0]] and lengths.tolist() == [2, 1]
    tokens, _ = cache.pack([[256]], 1, where=str, fix="")
    assert tokens.dtype == np.int16 and tokens.tolist() == [[256]]
    tokens, lengths = cache.pack([[], []], 2, where=str, fix="")
    assert tokens.dtype == np.uint8 and tokens.tolist() == [[0, 0]] * 2
    assert lengths.tolist() == [0, 0]


def test_check_split_boundaries(tmp_path):
    """Label num_classes - 1 and length 0 or max_len are valid; label num_classes is not."""
    write(tmp_path / "ok", splits(labels=(0, 2, 1), lengths=(0, 5, 1)))
    with pytest.raises(DataError, match=r"example 1 has label 3, outside \[0, 3\)"):
        write(tmp_path / "bad", splits(labels=(0, 3, 1)))


def test_check_split_messages_in_full(tmp_path):
    pair = {name: Split(np.stack([s.tokens, s.tokens], 1)[..., :4],
                        np.stack([s.lengths, s.lengths], 1), s.labels)
            for name, s in splits(lengths=(3, 0, 4)).items()}
    fix = "; the source does not match the task's settings$"
    with pytest.raises(DataError, match=r"^listops train: tokens are 4 wide, not max_len=5" + fix):
        write(tmp_path / "c", pair)  # (n, 2, 4): the width is the last axis
    data = splits()
    data["val"] = Split(data["val"].tokens[:, :4], data["val"].lengths, data["val"].labels)
    with pytest.raises(DataError, match=r"^listops val: tokens are 4 wide, not max_len=5" + fix):
        write(tmp_path / "c", data)
    data = splits()
    data["test"] = Split(*(getattr(data["test"], k)[:0] for k in cache.ARRAYS))
    with pytest.raises(DataError, match=re.escape(
            "listops test: no examples (every split needs at least one); the source does not "
            "match the task's settings")):
        write(tmp_path / "c", data)


def test_manifest_and_arrays_as_stored(tmp_path):
    """Labels are stored as int64, the vocabulary as a list, label counts over every class
    (a class with no example counts 0), checksums are the files' sha256."""
    out = write(tmp_path / "c", splits(labels=(0, 0, 1)), vocab=("<pad>", "a"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["vocab"] == ["<pad>", "a"] and manifest["pair"] is False
    assert np.load(out / "train.labels.npy").dtype == np.int64
    assert np.load(out / "train.lengths.npy").dtype == np.int32
    for name, entry in manifest["splits"].items():
        assert entry["label_counts"] == [2, 1, 0]
        for file, digest in entry["sha256"].items():
            assert digest == hashlib.sha256((out / file).read_bytes()).hexdigest(), (name, file)
    assert write(tmp_path / "v", splits()).joinpath("manifest.json").read_text().count(
        '"vocab": null') == 1


FIXES = {"lra": LRA_FIX, "mini": "python -m data_prep mini"}


@pytest.fixture(params=["lra", "mini"])
def kind(request):
    """(kwargs, fix): the lra case passes no `data` (the default), the mini case data="mini"."""
    return ({} if request.param == "lra" else {"data": "mini"}), FIXES[request.param]


def test_load_split_memory_maps_and_verifies_by_default(tmp_path, kind):
    data, fix = kind
    out = write(tmp_path / "c")
    manifest = read_manifest(out, task="listops")
    split = load_split(out, "train", manifest)
    assert all(isinstance(getattr(split, k), np.memmap) for k in cache.ARRAYS)
    labels = np.load(out / "val.labels.npy")
    labels[0] = 2
    np.save(out / "val.labels.npy", labels)
    with pytest.raises(DataError, match=re.escape(
            f"{out / 'val.labels.npy'} does not match the checksum in its manifest (corrupt or "
            f"edited); rebuild with: {fix}")):
        load_split(out, "val", manifest, **data)
    assert load_split(out, "val", manifest, verify=False).labels[0] == 2


def test_load_split_errors_in_full(tmp_path, kind):
    data, fix = kind
    out = write(tmp_path / "c")
    manifest = read_manifest(out, task="listops")
    with pytest.raises(DataError, match=re.escape(
            f"{out / 'manifest.json'} has no split 'dev' (has ['test', 'train', 'val'])")):
        load_split(out, "dev", manifest, **data)
    (out / "test.lengths.npy").unlink()
    with pytest.raises(DataError, match=re.escape(
            f"{out / 'test.lengths.npy'} is missing; rebuild with: {fix}")):
        load_split(out, "test", manifest, **data)
    (out / "val.tokens.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=re.escape(
            f"{out / 'val.tokens.npy'} is not a readable .npy file (") + ".*" + re.escape(
            f"); rebuild with: {fix}")):
        load_split(out, "val", manifest, verify=False, **data)
    manifest["splits"]["train"]["size"] = 4
    with pytest.raises(DataError, match=re.escape(
            f"{out}: train arrays disagree with the manifest size 4; rebuild with: {fix}")):
        load_split(out, "train", manifest, **data)


def test_read_manifest_errors_in_full(tmp_path, kind):
    data, fix = kind
    missing = tmp_path / "none"
    with pytest.raises(DataError, match=re.escape(
            f"no prepared data for task 'listops': {missing / 'manifest.json'} does not exist. "
            f"Prepare it with: {fix}")):
        read_manifest(missing, task="listops", **data)
    out = write(tmp_path / "c")
    path = out / "manifest.json"
    good = json.loads(path.read_text())
    path.write_text("{")
    with pytest.raises(DataError, match=re.escape(f"{path} is not valid JSON (") + ".*"
                       + re.escape(f"); rebuild with: {fix}")):
        read_manifest(out, task="listops", **data)
    path.write_text(json.dumps(good | {"format_version": 0}))
    with pytest.raises(DataError, match=re.escape(
            f"{path} has format_version 0, this code reads 1; rebuild with: {fix}")):
        read_manifest(out, task="listops", **data)
    path.write_text(json.dumps(good))
    with pytest.raises(DataError, match=re.escape(f"{path} holds task 'listops', expected "
                                                  "'text'")):
        read_manifest(out, task="text", **data)
    path.write_text(json.dumps({k: v for k, v in good.items() if k not in ("vocab", "pair")}))
    with pytest.raises(DataError, match=re.escape(
            f"{path} lacks vocab, pair (edited by hand?); rebuild with: {fix}")):
        read_manifest(out, task="listops", **data)
