"""ListOps: the generator against an independent evaluator, length bounds, and the TSV reader."""

from __future__ import annotations

import random
import re
import statistics

import numpy as np
import pytest

from data_prep import listops
from data_prep.__main__ import main
from data_prep.cache import DataError, load_split, read_manifest


def evaluate_tokens(tokens: list[str]) -> int:
    """An independent evaluator over the token stream (no tree): a stack of open operators."""
    stack: list[tuple[str, list[int]]] = []
    result = None
    for tok in tokens:
        if tok.startswith("["):
            stack.append((tok, []))
        elif tok == "]":
            op, args = stack.pop()
            value = {"[MIN": min, "[MAX": max,
                     "[MED": lambda a: int(statistics.median(a)),
                     "[SM": lambda a: sum(a) % 10}[op](args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            if stack:
                stack[-1][1].append(int(tok))
            else:
                result = int(tok)
    assert not stack
    return result


def test_generator_labels_match_independent_evaluator_on_1000_trees():
    examples = listops.generate({"train": 1000}, seed=3, max_depth=10, max_args=10, min_length=20,
                                max_length=300, progress=False)["train"]
    assert len(examples) == 1000
    assert len({src for src, _ in examples}) == 1000  # duplicates dropped
    for source, label in examples:
        tokens = listops.tokenize(source)
        assert evaluate_tokens(tokens) == label
        assert 20 < len(tokens) < 300  # strict bounds on the token length


def test_generator_is_seeded_and_splits_in_order():
    a = listops.generate({"train": 30, "val": 5, "test": 5}, seed=9, max_depth=6, max_args=5,
                         min_length=5, max_length=80, progress=False)
    b = listops.generate({"train": 30, "val": 5, "test": 5}, seed=9, max_depth=6, max_args=5,
                         min_length=5, max_length=80, progress=False)
    assert a == b
    assert [len(a[s]) for s in ("train", "val", "test")] == [30, 5, 5]
    sources = [src for split in a.values() for src, _ in split]
    assert len(set(sources)) == 40


def test_tree_length_counts_tokens():
    rng = random.Random(0)
    for _ in range(200):
        tree, length = listops.generate_tree(rng, max_depth=6, max_args=6)
        assert len(listops.tokenize(listops.to_string(tree))) == length


def test_string_form_and_tokenisation():
    tree = ("[MAX", [2, 9])
    assert listops.to_string(tree) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert listops.tokenize("( ( [MAX 2 9 ) ] )") == ["[MAX", "2", "9", "]"]
    ids = listops.encode("( [SM 3 ( [MIN 4 5 ] ) ] )")
    assert [listops.VOCAB[i] for i in ids] == ["[SM", "3", "[MIN", "4", "5", "]", "]"]
    assert listops.evaluate(("[SM", [3, ("[MIN", [4, 5])])) == 7


def test_tsv_reader_on_official_format(tmp_path):
    folder = tmp_path / "listops-1000"
    folder.mkdir()
    rows = {"train": [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( [MED 1 ) 4 ) ] )", 2)],
            "val": [("( ( ( [SM 7 ) 8 ) ] )", 5)], "test": [("( ( ( [MIN 3 ) 6 ) ] )", 3)]}
    for split, examples in rows.items():
        # Written by hand, header included, exactly as the release has it.
        text = "Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in examples)
        (folder / f"basic_{split}.tsv").write_text(text)
    assert listops.read_tsv(folder / "basic_train.tsv") == rows["train"]
    out = listops.build_from_release(tmp_path / "cache", folder)
    manifest = read_manifest(out, task="listops")
    assert manifest["source"] == "lra_release" and manifest["mini"] is False
    assert {s: manifest["splits"][s]["size"] for s in rows} == {"train": 2, "val": 1, "test": 1}
    train = load_split(out, "train", manifest)
    assert train.labels.tolist() == [9, 2]
    assert train.lengths.tolist() == [4, 4]
    expected = [listops.TOKEN_ID[t] for t in ("[MAX", "2", "9", "]")]
    assert train.tokens[0, :4].tolist() == expected
    assert (train.tokens[0, 4:] == 0).all()


@pytest.mark.parametrize("text, message", [
    ("Source\tTarget\n( [MAX 2 ] )\t2\textra\n", r"basic_train.tsv:2: expected 2"),
    ("src\ttgt\n", "header"),
    ("Source\tTarget\n( [MAX 2 ] )\tx\n", "not an integer"),
    ("Source\tTarget\n( [MAX 2 ] )\t12\n", "target 12 is outside 0-9"),
    ("Source\tTarget\n( [MAX \xff ] )\t2\n", r"basic_train.tsv is not UTF-8 text"),
])
def test_tsv_reader_rejects_bad_rows(tmp_path, text, message):
    path = tmp_path / "basic_train.tsv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match=message):
        listops.read_tsv(path)


@pytest.mark.parametrize("token", ["[MUL", "<unk>", "<pad>", "10"])
def test_unknown_token_names_file_line_and_token(tmp_path, token):
    path = tmp_path / "basic_val.tsv"
    path.write_text(f"Source\tTarget\n( ( [MAX 2 ) 9 ] )\t9\n( ( {token} 2 ) 9 ] )\t9\n")
    with pytest.raises(DataError, match=rf"basic_val\.tsv:3: unknown token '{re.escape(token)}'"):
        listops.read_tsv(path)
    # `<unk>` keeps its id, for earlier caches, but nothing is ever encoded to it.
    assert listops.VOCAB[1] == listops.UNK
    with pytest.raises(KeyError):
        listops.encode(f"( {token} 2 ] )")


def release_folder(root, rows):
    folder = root / "listops-1000"
    folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        listops.write_tsv(folder / f"basic_{split}.tsv", rows.get(split, [("( [MAX 2 ] )", 2)]))
    return folder


def test_too_long_source_is_one_cli_error_line(tmp_path, capsys):
    long = "( [SM " + " ".join(["1"] * 2000) + " ] )"  # 2,002 tokens
    release_folder(tmp_path, {"test": [("( [MAX 2 ] )", 2), (long, 0)]})
    with pytest.raises(DataError, match=r"basic_test\.tsv:3: 2002 tokens, more than "
                                        r"max_len=2000; .* listops-1000 file"):
        listops.build_from_release(tmp_path / "cache", tmp_path / "listops-1000")
    code = main(["listops", "--source", "lra_release", "--release", str(tmp_path), "--out",
                 str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "basic_test.tsv:3: 2002 tokens" in err
    assert not (tmp_path / "cache").exists()


def test_corrupt_or_missing_cache_is_rejected(tiny_data_root, tmp_path):
    import shutil

    task_dir = tmp_path / "listops"
    shutil.copytree(tiny_data_root / "listops", task_dir)
    manifest = read_manifest(task_dir, task="listops")
    labels = task_dir / "train.labels.npy"
    arr = np.load(labels)
    arr[0] = (arr[0] + 1) % 10
    np.save(labels, arr)
    with pytest.raises(DataError, match="checksum"):
        load_split(task_dir, "train", manifest)
    (task_dir / "manifest.json").unlink()
    with pytest.raises(DataError, match="python -m data_prep"):
        read_manifest(task_dir, task="listops")


def test_generator_fails_with_the_settings_when_they_admit_too_few_trees():
    # Depth 2 with 2 arguments has few distinct trees: asking for more must fail, never spin.
    with pytest.raises(DataError, match=r"max_depth=2, max_args=2, 0 < length < 16"):
        listops.generate({"train": 5000}, seed=0, max_depth=2, max_args=2, min_length=0,
                         max_length=16, progress=False)
