"""Readers of the official formats on small fixtures in their layouts: AAN TSVs (Retrieval), the
aclImdb tree and archive (Text), the CIFAR-10 python archive (Image), and the tfds route through a
stand-in module. Tokens, labels and split sizes are checked exactly."""

from __future__ import annotations

import io
import pickle
import sys
import tarfile
import types

import numpy as np
import pytest

from data_prep import image, retrieval, text
from data_prep.cache import DataError, load_split, permutation, read_manifest


def tar_gz(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def byte_tokens(data: bytes) -> list[int]:
    return [b + 1 for b in data]


# ---- Retrieval (AAN) ---------------------------------------------------------------------------

AAN = {
    "train": [("1.0", "P01-1001", "P02-2002", b"b'Graph methods for parsing.'",
               "b'Citing caf\u00e9 work \\xc3\\xa9'".encode()),
              ("0.0", "P03-3003", "P04-4004", b"b'A short one'", b"b'" + b"x" * 50 + b"'"),
              ("1", "P05-5005", "P06-6006", "n\u00e4ive".encode(), b"plain")],
    "val": [("0.0", "E1", "E2", b"eval text one", b"eval text two")],
    "test": [("1.0", "T1", "T2", b"test a", b"test b"), ("0.0", "T3", "T4", b"c", b"d")],
}


def write_aan(folder, rows=AAN):
    folder.mkdir(parents=True, exist_ok=True)
    for split, file in retrieval.FILES.items():
        lines = [b"\t".join([label.encode(), a.encode(), b.encode(), t1, t2])
                 for label, a, b, t1, t2 in rows[split]]
        (folder / file).write_bytes(b"\n".join(lines) + b"\n")


def test_aan_pairs_tokens_labels_and_sizes(tmp_path):
    write_aan(tmp_path / "tsv_data")
    out = retrieval.build_from_release(tmp_path / "cache", tmp_path / "tsv_data", max_len=32)
    manifest = read_manifest(out, task="retrieval")
    assert manifest["pair"] is True and manifest["vocab_size"] == 257
    assert manifest["params"]["max_len"] == 32
    assert {k: v["size"] for k, v in manifest["splits"].items()} == {"train": 3, "val": 1,
                                                                     "test": 2}
    train = load_split(out, "train", manifest)
    assert train.tokens.shape == (3, 2, 32) and train.lengths.shape == (3, 2)
    # Stored in the seeded order: row i of the cache is file row order[i].
    order = permutation(3, manifest["params"]["shuffle_seed"])
    assert train.labels.tolist() == [[1, 0, 1][k] for k in order]
    for i, k in enumerate(order):
        for j, doc in enumerate(AAN["train"][k][3:]):
            n = min(len(doc), 32)
            assert train.lengths[i, j] == n
            assert train.tokens[i, j, :n].tolist() == byte_tokens(doc[:32])
            assert not train.tokens[i, j, n:].any()


@pytest.mark.parametrize("line,match", [
    (b"1.0\tA\tB\tonly four", r"new_aan_pairs\.eval\.tsv:2: expected 5 tab-separated columns"),
    (b"1.0\tA\tB\tx\ty\tz", r"new_aan_pairs\.eval\.tsv:2: expected 5 .* got 6"),
    (b"yes\tA\tB\tx\ty", r"new_aan_pairs\.eval\.tsv:2: label b'yes' is not 0 or 1"),
])
def test_aan_bad_rows_name_the_file_and_line(tmp_path, line, match):
    write_aan(tmp_path)
    path = tmp_path / retrieval.FILES["val"]
    path.write_bytes(path.read_bytes() + line + b"\n")
    with pytest.raises(DataError, match=match):
        retrieval.build_from_release(tmp_path / "cache", tmp_path)
    assert not (tmp_path / "cache").exists()


def test_aan_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"new_aan_pairs\.train\.tsv does not exist.*"
                                        r"python -m data_prep retrieval"):
        retrieval.build_from_release(tmp_path / "cache", tmp_path)


# ---- Text (IMDb) -------------------------------------------------------------------------------

REVIEWS = {
    ("train", "pos", 10, 9): b"A wonderful film.<br /><br />Loved it",
    ("train", "pos", 2, 8): "Tr\u00e8s bien".encode(),
    ("train", "neg", 7, 1): b"Dull.",
    ("test", "neg", 3, 2): b"Bad",
    ("test", "pos", 5, 10): b"Great " * 10,
}


def imdb_files() -> dict[str, bytes]:
    files = {f"aclImdb/{split}/{pol}/{rid}_{stars}.txt": body
             for (split, pol, rid, stars), body in REVIEWS.items()}
    files["aclImdb/train/unsup/0_0.txt"] = b"unlabelled, ignored"
    files["aclImdb/imdb.vocab"] = b"the\nand\n"
    return files


def check_imdb(out, max_len):
    manifest = read_manifest(out, task="text")
    assert manifest["params"]["max_len"] == max_len and manifest["max_len"] == max_len
    assert "both val and test" in manifest["description"]
    assert {k: v["size"] for k, v in manifest["splits"].items()} == {"train": 3, "val": 2,
                                                                     "test": 2}
    train = load_split(out, "train", manifest)
    # Read sorted by label (neg first), then review id; stored in the seeded order.
    expected = [REVIEWS[("train", "neg", 7, 1)], REVIEWS[("train", "pos", 2, 8)],
                REVIEWS[("train", "pos", 10, 9)]]
    order = permutation(3, manifest["params"]["shuffle_seed"])
    assert train.labels.tolist() == [[0, 1, 1][k] for k in order]
    for row, length, k in zip(train.tokens, train.lengths, order, strict=True):
        assert length == min(len(expected[k]), max_len)
        assert row[:length].tolist() == byte_tokens(expected[k][:max_len])
    val, test = load_split(out, "val", manifest), load_split(out, "test", manifest)
    assert np.array_equal(val.tokens, test.tokens), "one test set, one order, as val and test"
    assert sorted(test.labels.tolist()) == [0, 1]


def test_imdb_archive_and_folder(tmp_path):
    tar_gz(tmp_path / "aclImdb_v1.tar.gz", imdb_files())
    examples = text.read_imdb_raw(tmp_path / "aclImdb_v1.tar.gz")
    check_imdb(text.build(tmp_path / "a", examples, source="raw", max_len=16), 16)
    for name, data in imdb_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    for folder in (tmp_path, tmp_path / "aclImdb"):
        assert text.read_imdb_raw(folder) == examples
    check_imdb(text.build(tmp_path / "b", examples, source="raw"), 4000)


def test_imdb_reviews_are_stripped_as_tfds_reads_them(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "aclImdb" / split / "pos").mkdir(parents=True)
        (tmp_path / "aclImdb" / split / "pos" / "1_9.txt").write_bytes(b" \tGood film.\n\n")
    assert text.read_imdb_raw(tmp_path)["train"] == [(b"Good film.", 1)]


def test_imdb_corrupt_or_wrong_archive(tmp_path):
    tar_gz(tmp_path / "ok.tar.gz", {**imdb_files(), "aclImdb/pad.bin": bytes(100_000)})
    data = (tmp_path / "ok.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.tar\.gz is truncated or corrupt"):
        text.read_imdb_raw(tmp_path / "cut.tar.gz")
    tar_gz(tmp_path / "other.tar.gz", {"something/else.txt": b"x"})
    with pytest.raises(DataError, match=r"holds no aclImdb/train"):
        text.read_imdb_raw(tmp_path / "other.tar.gz")


def test_byte_tokens_use_int16_only_for_0xff():
    tokens, lengths = text.encode_bytes([b"\x00ab", b""], 4)
    assert tokens.dtype == np.uint8 and tokens.tolist() == [[1, 98, 99, 0], [0, 0, 0, 0]]
    assert lengths.tolist() == [3, 0]
    tokens, _ = text.encode_bytes([b"\xff\xfe"], 3)
    assert tokens.dtype == np.int16 and tokens.tolist() == [[256, 255, 0]]


# ---- Image (CIFAR-10) --------------------------------------------------------------------------

def cifar_batch(rng, n, first_label=0) -> tuple[bytes, np.ndarray, np.ndarray]:
    rgb = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    rgb[0] = 0  # a black image: all its pixels are real tokens
    labels = [(first_label + i) % 10 for i in range(n)]
    planes = rgb.transpose(0, 3, 1, 2).reshape(n, -1)  # red plane, green, blue
    batch = {b"batch_label": b"fixture", b"labels": labels, b"data": planes,
             b"filenames": [b"f%d.png" % i for i in range(n)]}
    return pickle.dumps(batch, protocol=2), rgb, np.array(labels)


def cifar_files(rng):
    files, images, labels = {}, {"train": [], "test": []}, {"train": [], "test": []}
    for split, names in image.BATCHES.items():
        for k, name in enumerate(names):
            data, rgb, lab = cifar_batch(rng, 4, first_label=k)
            files[f"cifar-10-batches-py/{name}"] = data
            images[split].append(rgb)
            labels[split].append(lab)
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": []})
    return files, {s: (np.concatenate(images[s]), np.concatenate(labels[s])) for s in images}


def expected_gray(rgb):
    """tf.image.rgb_to_grayscale in exact integer arithmetic: trunc(255.5/255 * sum), the sum
    0.2989 R + 0.5870 G + 0.1140 B = n / 10000, so gray = n * 511 // (10000 * 510)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    n = 2989 * r + 5870 * g + 1140 * b
    return (n * 511 // 5_100_000).astype(np.uint8).reshape(len(rgb), -1)


# (R, G, B) -> tf.image.rgb_to_grayscale, by hand: s = 0.2989 R + 0.587 G + 0.114 B, then
# trunc(s * 255.5 / 255). The first three have s's fraction >= 0.5 yet TF gives the lower value,
# so no rint of s (in any precision) passes; the next two are above trunc(s), so no floor does.
GRAY_BY_HAND = [
    ((0, 0, 5), 0),  # s = 0.57, 0.5711 -> 0 (rint 1)
    ((2, 0, 0), 0),  # s = 0.5978, 0.5990 -> 0 (rint 1)
    ((0, 1, 0), 0),  # s = 0.587, 0.5882 -> 0 (rint 1)
    ((10, 200, 30), 124),  # s = 123.809, 124.0518 -> 124 (floor 123)
    ((200, 200, 200), 200),  # s = 199.98, 200.3721 -> 200 (floor 199)
    ((128, 64, 32), 79),  # s = 79.4752, 79.6310 -> 79
    ((255, 255, 255), 255),  # s = 254.9745, 255.4745 -> 255
    ((0, 0, 0), 0),
]


def test_grayscale_is_tensorflows_not_a_rounding():
    rgb = np.array([[[px for px, _ in GRAY_BY_HAND]]], dtype=np.uint8)  # (1, 1, 8, 3)
    assert image.to_gray(rgb).ravel().tolist() == [gray for _, gray in GRAY_BY_HAND]
    # On random colours (a stand-in for CIFAR) against the exact integer formula: equal but for
    # colours within float32 rounding of an integer (measured: 235 of all 16.7M).
    colours = np.random.default_rng(0).integers(0, 256, size=(1, 256, 256, 3), dtype=np.uint8)
    assert np.mean(image.to_gray(colours).reshape(1, -1) != expected_gray(colours)) < 1e-4


def test_cifar_archive_and_folder(tmp_path):
    files, truth = cifar_files(np.random.default_rng(0))
    tar_gz(tmp_path / "cifar-10-python.tar.gz", files)
    data = image.read_cifar_raw(tmp_path / "cifar-10-python.tar.gz")
    for split in ("train", "test"):
        assert np.array_equal(data[split][0], truth[split][0])
        assert np.array_equal(data[split][1], truth[split][1])
    out = image.build(tmp_path / "cache", data, source="raw")
    manifest = read_manifest(out, task="image")
    assert {k: v["size"] for k, v in manifest["splits"].items()} == {"train": 18, "val": 2,
                                                                     "test": 4}
    assert (manifest["vocab_size"], manifest["max_len"]) == (256, 1024)
    train, val = load_split(out, "train", manifest), load_split(out, "val", manifest)
    gray = expected_gray(truth["train"][0])
    assert np.array_equal(train.tokens, gray[:18]) and np.array_equal(val.tokens, gray[18:])
    assert np.array_equal(train.labels, truth["train"][1][:18])
    assert np.all(train.lengths == 1024) and not train.tokens[0].any()
    for name, blob in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blob)
    for folder in (tmp_path, tmp_path / "cifar-10-batches-py"):
        assert np.array_equal(image.read_cifar_raw(folder)["test"][0], truth["test"][0])


def test_cifar_bad_batches(tmp_path):
    files, _ = cifar_files(np.random.default_rng(1))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 python batch"):
        image.read_cifar_raw(folder)

    class Evil:
        def __reduce__(self):
            return (print, ("this would run",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match=r"unexpected builtins\.print"):
        image.read_cifar_raw(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks the CIFAR-10 batches data_batch_3"):
        image.read_cifar_raw(folder)


# ---- the tfds route ------------------------------------------------------------------------------

def fake_tfds(datasets: dict):
    """A stand-in for tensorflow_datasets: load() returns lists, as_numpy() passes them on."""
    module = types.ModuleType("tensorflow_datasets")
    module.load = lambda name, split, as_supervised, data_dir: datasets[name][split]
    module.as_numpy = lambda ds: iter(ds)
    return module


def test_tfds_route(tmp_path, monkeypatch):
    rgb = np.random.default_rng(2).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds({
        "imdb_reviews": {"train": [(b"good", 1), (b"bad", 0)], "test": [(b"ok", 1)]},
        "cifar10": {"train": [(im, i % 10) for i, im in enumerate(rgb)],
                    "test": [(rgb[0], 3)]},
    }))
    examples = text.read_imdb_tfds()
    assert examples == {"train": [(b"good", 1), (b"bad", 0)], "test": [(b"ok", 1)]}
    out = text.build(tmp_path / "text", examples, source="tfds")
    assert read_manifest(out, task="text")["source"] == "tfds"
    out = image.build(tmp_path / "image", image.read_cifar_tfds(), source="tfds")
    manifest = read_manifest(out, task="image")
    assert [s["size"] for s in manifest["splits"].values()] == [9, 1, 1]
    assert np.array_equal(load_split(out, "val", manifest).tokens, expected_gray(rgb[9:]))


def test_tfds_failure_is_one_data_error(monkeypatch):
    module = fake_tfds({})  # load() of anything raises KeyError, as a missing dataset would fail
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    with pytest.raises(DataError, match=r"could not load imdb_reviews \(train, data_dir default\)"
                                        r": KeyError.*--source raw"):
        text.read_imdb_tfds()
    with pytest.raises(DataError, match=r"could not load cifar10 .*data_prep image --source raw"):
        image.read_cifar_tfds()


def test_missing_tfds_says_how_to_install_or_avoid_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match=r"pip install -e '\.\[tfds\]'.*--source raw"):
        text.read_imdb_tfds()
    with pytest.raises(DataError, match="python -m data_prep image --source raw"):
        image.read_cifar_tfds()
