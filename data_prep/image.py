"""Image: grayscale CIFAR-10, pixels as tokens.

CIFAR-10 is not in the LRA release. It comes from tensorflow-datasets (`cifar10`, as the original)
or from the original `cifar-10-python.tar.gz` (archive or extracted `cifar-10-batches-py/`
folder of pickled `data_batch_1..5` and `test_batch`). Images are converted to grayscale exactly
as LRA's `tf.image.rgb_to_grayscale` does on uint8 (`to_gray`) and flattened row-major into 1024
tokens 0-255; value 0 (black) is a real token.

Splits, as LRA (TFDS `train[:90%]`, `train[90%:]`, `test`): train is the first 45,000 training
images in source order, val the last 5,000 (for the raw archive: `data_batch_5`'s second half, as
the training set is batches 1-5 concatenated; TFDS's `train` has its own fixed order, so the two
sources hold the same images in different splits), test the 10,000 test images. No shuffling:
CIFAR-10's batches are already in random order.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from . import mini, tasks
from .cache import DataError, Split, write_task
from .text import load_tfds

NUM_CLASSES = 10
VOCAB_SIZE = 256
SIDE = 32
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)
RAW_ARCHIVE = Path("data/raw/cifar-10-python.tar.gz")
RAW_FOLDER = Path("data/raw/cifar-10-batches-py")
RAW_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
FETCH = "python -m data_prep download cifar10"


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) uint8 RGB -> (n, h, w) uint8 gray, as `tf.image.rgb_to_grayscale`, all in
    float32: convert_image_dtype to float (x * (1/255)), the dot with GRAY_WEIGHTS, and
    convert_image_dtype back, which scales by 255 + 0.5 and casts, truncating toward zero. So gray
    = trunc(255.5 / 255 * weighted sum): not the weighted sum rounded (about 25% of colours come
    out one lower than `rint` would give) nor truncated. Where the weighted sum lands within
    float32 rounding of an integer (235 of the 16.7M colours, against exact arithmetic) the
    last bit decides, and TF's summation order inside its matmul is not pinned here."""
    unit = rgb.astype(np.float32) * np.float32(1 / 255)  # (n, h, w, 3) in [0, 1]
    gray = unit @ GRAY_WEIGHTS  # (n, h, w) float32, at most 0.9999
    return (gray * np.float32(255.5)).astype(np.uint8)  # in [0, 255.5): the cast truncates


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of bytes, lists and numpy arrays) and nothing else:
    a pickle can run code, and these come from a download."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected {module}.{name} in a CIFAR batch")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]  # numpy 2 renamed the package
        return super().find_class(module, name)


def _batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> images (n, 32, 32, 3) uint8 and labels (n,)."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
        pixels = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where} is not a CIFAR-10 python batch ({type(err).__name__}: {err}); "
                        f"fetch the archive again with: {FETCH}") from err
    if pixels.ndim != 2 or pixels.shape[1] != 3 * SIDE * SIDE or len(labels) != len(pixels):
        raise DataError(f"{where}: data is {pixels.shape} with {len(labels)} labels, expected "
                        f"(n, {3 * SIDE * SIDE}) and n labels")
    if labels.size and not 0 <= labels.min() <= labels.max() < NUM_CLASSES:
        raise DataError(f"{where}: labels outside 0-{NUM_CLASSES - 1}")
    # Each row is the red plane, then green, then blue, each row-major.
    return pixels.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1), labels


def read_cifar_raw(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images (n, 32, 32, 3), labels (n,))} from the archive or its extracted folder."""
    path = Path(path)
    wanted = [name for names in BATCHES.values() for name in names]
    blobs: dict[str, tuple[bytes, str]] = {}
    if path.is_dir():
        root = path if (path / "test_batch").exists() else path / "cifar-10-batches-py"
        for name in wanted:
            if (root / name).is_file():
                blobs[name] = ((root / name).read_bytes(), str(root / name))
    elif path.is_file():
        try:
            with tarfile.open(path, "r|*") as tar:
                for member in tar:
                    name = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and name in wanted:
                        blobs[name] = (tar.extractfile(member).read(), f"{path}:{member.name}")
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); "
                            f"fetch it again with: {FETCH}") from err
    else:
        raise DataError(f"no CIFAR-10 archive or folder at {path}; fetch it with: {FETCH}, or "
                        "pass --raw PATH, or use --source tfds")
    missing = [name for name in wanted if name not in blobs]
    if missing:
        raise DataError(f"{path} lacks the CIFAR-10 batches {', '.join(missing)} (expected "
                        "cifar-10-batches-py/data_batch_1..5 and test_batch)")
    out = {}
    for split, names in BATCHES.items():
        parts = [_batch(*blobs[name]) for name in names]
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def read_cifar_tfds(data_dir: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 through tensorflow-datasets (`cifar10`), as the original LRA code."""
    out = {}
    for split in ("train", "test"):
        images, labels = zip(*load_tfds("cifar10", split, data_dir, task="image"), strict=True)
        out[split] = (np.stack(images).astype(np.uint8), np.array(labels, dtype=np.int64))
    return out


def build(out_dir: str | Path, data: dict[str, tuple[np.ndarray, np.ndarray]], *, source: str,
          params: dict | None = None) -> Path:
    """Write grayscale CIFAR-10 to the cache: train[:90%] / train[90%:] / test."""

    def split(images, labels):
        gray = to_gray(images).reshape(len(images), -1)  # (n, 1024)
        return Split(gray, np.full(len(gray), gray.shape[1], dtype=np.int32), labels)

    train_images, train_labels = data["train"]
    cut = len(train_labels) * 9 // 10
    splits = {"train": split(train_images[:cut], train_labels[:cut]),
              "val": split(train_images[cut:], train_labels[cut:]),
              "test": split(*data["test"])}
    return write_task(
        out_dir, splits, task="image", source=source, num_classes=NUM_CLASSES,
        vocab_size=VOCAB_SIZE, max_len=SIDE * SIDE, mini=False,
        params={"tokens": "grayscale pixel values 0-255, row-major; 0 is a real token",
                "grayscale": "tf.image.rgb_to_grayscale: float32 trunc(255.5 * (0.2989 R + "
                             "0.5870 G + 0.1140 B) / 255)",
                "split": "train[:90%] / train[90%:] / test", **(params or {})},
        description="CIFAR-10 in grayscale, 1024 pixel tokens",
    )


# ---- the mini stand-in, and the task's entry in the registry ---------------------------------

def build_mini(out_dir: Path, progress: bool = True) -> Path:
    """The stand-in: scikit-learn's bundled handwritten digits (8x8, 16 gray levels), permuted,
    upscaled to 32x32 grayscale (1024 pixel tokens), 10 classes."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = np.stack([
        np.asarray(Image.fromarray(np.uint8(np.rint(im * 255 / 16))).resize(
            (SIDE, SIDE), Image.BICUBIC)) for im in digits.images[order]
    ]).reshape(len(order), -1)  # (n, 1024)
    labels = digits.target[order].astype(np.int64)
    n_eval = 250
    cuts = {"train": (0, len(order) - 2 * n_eval), "val": (len(order) - 2 * n_eval,
            len(order) - n_eval), "test": (len(order) - n_eval, len(order))}
    splits = {name: Split(images[lo:hi], np.full(hi - lo, SIDE * SIDE, dtype=np.int32),
                          labels[lo:hi]) for name, (lo, hi) in cuts.items()}
    return write_task(
        out_dir, splits, task="image", source="sklearn_digits", num_classes=NUM_CLASSES,
        vocab_size=VOCAB_SIZE, max_len=SIDE * SIDE, mini=True,
        params={"tokens": "grayscale pixel values 0-255, row-major; 0 is a real token",
                "upscale": "8x8 (0-16) -> 32x32 bicubic", "shuffle_seed": 0},
        description=f"scikit-learn's handwritten digits upscaled to 32x32 grayscale "
                    f"({mini.STANDIN} for grayscale CIFAR-10)",
    )


tasks.register(tasks.Task(
    name="image", order=4,
    help="grayscale CIFAR-10 (tensorflow-datasets or cifar-10-python.tar.gz)",
    sources={
        "tfds": tasks.tfds_source(lambda args, out, data_dir: build(
            out, read_cifar_tfds(data_dir), source="tfds")),
        "raw": tasks.raw_source(RAW_ARCHIVE, RAW_FOLDER, lambda args, out, path: build(
            out, read_cifar_raw(path), source="raw")),
    },
    mini=build_mini, downloads={"cifar10": (RAW_URL, RAW_ARCHIVE)},
))
