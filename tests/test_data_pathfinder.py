"""Pathfinder: the generator's geometry, labels and determinism; the release reader on a fixture
tree in the official layout (with the release's empty PNG); the cache builders."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from data_prep import pathfinder as pf
from data_prep.cache import DataError, load_split, permutation, read_manifest

LRA = pf.Settings.level(32, pf.LRA_DIFFICULTY)


@pytest.fixture(scope="module")
def stimuli():
    """2,000 images of the LRA level (about 10 s on one core)."""
    return [pf.stimulus(LRA, 7, i) for i in range(2000)]


def segment_distance(p0, p1, q0, q1, samples: int = 33) -> float:
    """Distance between two segments, by dense sampling (independent of the generator's code)."""
    t = np.linspace(0, 1, samples)[:, None]
    a, b = p0 + t * (p1 - p0), q0 + t * (q1 - q0)
    return float(np.linalg.norm(a[:, None] - b[None], axis=-1).min())


def test_label_balance(stimuli):
    share = np.mean([st.label for st in stimuli])
    assert 0.45 <= share <= 0.55


def test_markers_sit_on_contour_ends(stimuli):
    for st in stimuli[:500]:
        # Which contours have an end (origin or far end) exactly at each marker?
        on = [{(c, end) for c, contour in enumerate(st.contours)
               for end, point in ((0, contour[0, 0]), (1, contour[-1, 1]))
               if np.allclose(point, marker)} for marker in st.markers]
        assert len(on[0]) == 1 and len(on[1]) == 1, "each marker on exactly one contour end"
        (c0, end0), (c1, end1) = on[0].pop(), on[1].pop()
        assert {c0, c1} <= {0, 1}, "markers go on the two target contours"
        if st.label == 1:
            assert c0 == c1 and end0 != end1, "label 1: the two ends of one contour"
        else:
            assert c0 != c1, "label 0: ends of two different contours"
        assert (c0, c1) == st.marked


def test_contours_do_not_overlap(stimuli):
    # The clearance is 2.5 px; the lattice may round it down by at most ~0.35 px. Strokes are
    # 0.5 px wide, so anything above 0.5 px would already mean no two contours touch.
    floor = 0.8 * LRA.clearance
    for st in stimuli[:500]:
        paddles = [(c, k, p) for c, contour in enumerate(st.contours)
                   for k, p in enumerate(contour)]
        mids = np.array([p.mean(axis=0) for _, _, p in paddles])
        near = np.linalg.norm(mids[:, None] - mids[None], axis=-1) < LRA.paddle_length + floor
        for i, j in zip(*np.nonzero(np.triu(near, 1)), strict=True):
            (ci, ki, pi), (cj, kj, pj) = paddles[i], paddles[j]
            if ci == cj and abs(ki - kj) == 1:
                continue  # neighbours within a contour are one dash gap apart by design
            assert segment_distance(pi[0], pi[1], pj[0], pj[1]) >= floor


def test_contour_shapes_follow_the_settings(stimuli):
    s = LRA
    for st in stimuli[:100]:
        assert [len(c) for c in st.contours[:2]] == [s.contour_length] * 2
        assert all(len(c) == s.distractor_length for c in st.contours[2:])
        assert len(st.contours) <= 2 + s.num_distractors
        for contour in st.contours:
            points = contour.reshape(-1, 2)
            assert points.min() >= s.padding - 0.5 and points.max() <= 32 - s.padding + 0.5
            direction = contour[:, 1] - contour[:, 0]
            assert np.allclose(np.linalg.norm(direction, axis=1), s.paddle_length)
            angle = np.arctan2(direction[:, 0], direction[:, 1])
            turn = np.abs((np.diff(angle) + np.pi) % (2 * np.pi) - np.pi)
            assert np.all(turn * s.continuity < np.pi / 2), "turns stay below the limit"
            gap = np.linalg.norm(contour[1:, 0] - contour[:-1, 1], axis=1)
            assert np.all(gap <= 2 * s.margin + 0.75), "each paddle starts a fixed step ahead"
    # The first target seed sits in the central square, the second seed_distance away.
    for st in stimuli[:100]:
        first, second = st.contours[0][0, 0], st.contours[1][0, 0]
        assert np.all((first >= 2 * s.seed_distance - 0.5) & (first <= 32 - 2 * s.seed_distance
                                                                + 0.5))
        assert abs(np.linalg.norm(second - first) - s.seed_distance) <= 0.75


def test_markers_are_drawn_where_recorded(stimuli):
    s = LRA
    yy, xx = np.mgrid[:32, :32] + 0.5  # pixel centres
    for st in stimuli[:500]:
        for y, x in st.markers:
            assert st.image[int(y), int(x)] >= 200
        # Away from the markers (radius, plus 3 px of Lanczos reach and pixel rounding) the image
        # is the contours alone.
        plain = pf.render(np.concatenate(st.contours), np.zeros((0, 2)), s)
        dist = np.min([np.hypot(yy - y, xx - x) for y, x in st.markers], axis=0)
        far = dist > s.marker_radius + 4.5
        assert np.array_equal(st.image[far], plain[far])
        assert plain.max() < 200, "only markers reach full brightness"


def test_images_are_deterministic_and_worker_independent():
    s = pf.Settings.level(32, "curv_baseline")
    a, la = pf.generate(40, s, seed=3, chunk=16)
    b, lb = pf.generate(40, s, seed=3, chunk=40)
    c, _ = pf.generate(40, s, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert np.array_equal(a[5], pf.stimulus(s, 3, 5).image)
    assert a.dtype == np.uint8 and a.shape == (40, 32, 32)


@pytest.mark.parametrize("resolution", [64, 256])
def test_larger_resolutions_scale_the_same_geometry(resolution):
    small = pf.stimulus(pf.Settings.level(32, "curv_contour_length_9"), 1, 0)
    big = pf.stimulus(pf.Settings.level(resolution, "curv_contour_length_9"), 1, 0)
    scale = resolution / 32
    assert big.image.shape == (resolution, resolution)
    assert big.label == small.label and big.marked == small.marked
    assert np.allclose(big.markers, small.markers * scale)
    for a, b in zip(small.contours, big.contours, strict=True):
        assert np.allclose(b, a * scale)
    for y, x in big.markers:
        assert big.image[int(y), int(x)] >= 200


def test_settings_of_every_level():
    for difficulty, length in pf.DIFFICULTIES.items():
        s = pf.Settings.level(32, difficulty)
        assert (s.contour_length, s.distractor_length) == (length, length // 3)
        assert s.num_distractors == 20 // (length // 3)
        assert (s.paddle_length, s.thickness, s.margin, s.marker_radius, s.seed_distance,
                s.continuity, s.antialias) == (2, 0.5, 1, 1.5, 7, 1.0, 2)
    with pytest.raises(ValueError, match="resolution"):
        pf.Settings.level(48)


# pathfinder128 (Path-X) as published, in pixels of the 128x128 image: the generator arguments
# listed by LRA's TFDS builder (lra_benchmarks/data/pathfinder.py), the rest the generator's
# defaults (drewlinsley/pathfinder, snakes2_wrapper.py: paddle_length 5); the distractor count is
# the generator's integer `35 / (contour_length / 3)` under Python 2.
PATHX_PUBLISHED = {"paddle_length": 5, "thickness": 1.5, "margins": (2, 3), "marker_radius": 3,
                   "seed_distance": 20, "continuity": 1.8, "antialias": 2, "padding": 1}
PATHX_CONTOURS = {"curv_baseline": (6, 2, 17), "curv_contour_length_9": (9, 3, 11),
                  "curv_contour_length_14": (14, 4, 8)}


def test_pathx_uses_the_published_pathfinder128_settings():
    for difficulty, (length, distractor, count) in PATHX_CONTOURS.items():
        s = pf.Settings.level(128, difficulty)
        px = {k: getattr(s, k) for k in PATHX_PUBLISHED}  # ours are 32x32 pixels: x4
        px = {k: (tuple(m * 4 for m in v) if k == "margins" else
                  v if k in ("continuity", "antialias") else v * 4) for k, v in px.items()}
        assert px == PATHX_PUBLISHED
        assert (s.contour_length, s.distractor_length, s.num_distractors) == (length,
                                                                              distractor, count)


def test_pathx_geometry_follows_its_settings():
    s = pf.Settings.level(128)
    margins = set()
    for i in range(8):
        st = pf.stimulus(s, 0, i)
        assert [len(c) for c in st.contours[:2]] == [14, 14]
        assert all(len(c) == 4 for c in st.contours[2:]) and len(st.contours) <= 2 + 8
        for contour in st.contours:  # image pixels
            direction = contour[:, 1] - contour[:, 0]
            assert np.allclose(np.linalg.norm(direction, axis=1), 5)
            turn = np.abs((np.diff(np.arctan2(direction[:, 0], direction[:, 1])) + np.pi)
                          % (2 * np.pi) - np.pi)
            assert np.all(turn * 1.8 < np.pi / 2)
            gap = np.linalg.norm(contour[1:, 0] - contour[:-1, 1], axis=1)
            assert np.all(gap <= 2 * 3 + 0.75)  # two margins of at most 3 px, lattice rounding
            margins.add(round(float(np.median(gap)) / 2))
        first, second = st.contours[0][0, 0], st.contours[1][0, 0]
        assert abs(np.linalg.norm(second - first) - 20) <= 0.75
    assert margins == {2, 3}, "each image draws its margin from 2 and 3 pixels"


# ---- the release layout ---------------------------------------------------------------------

def release_level(folder, n=25, per_batch=10, seed=0):
    """A `pathfinder32/curv_contour_length_14` folder as the release has it, with random images
    (black pixels included) and the release's empty PNG as image 3 of batch 0."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32), dtype=np.uint8)
    images[:, :4] = 0
    labels = rng.integers(0, 2, size=n)
    pf.write_tree(folder, images, labels, LRA, per_batch=per_batch)
    (folder / "imgs" / "0" / "sample_3.png").write_bytes(b"")
    return images, labels


def test_metadata_is_the_releases_plain_text(tmp_path):
    level = tmp_path / "pathfinder32" / "curv_contour_length_14"
    release_level(level)
    lines = (level / "metadata" / "0.npy").read_text().splitlines()
    assert lines[3].split()[:4] == ["imgs/0", "sample_3.png", "3", lines[3].split()[3]]
    assert sorted(p.name for p in (level / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy"]


def test_metadata_as_a_true_npy_is_read_too(tmp_path):
    level = tmp_path / "level"
    images, labels = release_level(level, n=10)
    meta = level / "metadata" / "0.npy"
    rows = [line.split() for line in meta.read_text().splitlines()]
    np.save(meta, np.array(rows))
    assert meta.read_bytes().startswith(b"\x93NUMPY")
    entries = pf.read_metadata(level)
    assert [label for _, label in entries] == labels.tolist()
    assert entries[4][0] == level / "imgs" / "0" / "sample_4.png"


def test_reader_skips_the_empty_png_and_reads_the_rest_exactly(tmp_path, caplog):
    level = tmp_path / "pathfinder32" / "curv_contour_length_14"
    images, labels = release_level(level)
    with caplog.at_level(logging.WARNING):
        got, got_labels = pf.read_tree(level, 32)
    keep = np.arange(len(images)) != 3
    assert np.array_equal(got, images[keep]) and np.array_equal(got_labels, labels[keep])
    assert "skipped 1 empty image file(s)" in caplog.text and "sample_3.png" in caplog.text


def test_release_level_to_cache(tmp_path):
    level = tmp_path / "pathfinder32" / "curv_contour_length_14"
    images, labels = release_level(level, n=41)
    out = pf.build_from_release(tmp_path / "cache", level, resolution=32,
                                difficulty=pf.LRA_DIFFICULTY)
    manifest = read_manifest(out, task="pathfinder")
    assert {k: v["size"] for k, v in manifest["splits"].items()} == {"train": 32, "val": 4,
                                                                     "test": 4}
    assert (manifest["vocab_size"], manifest["max_len"], manifest["mini"]) == (256, 1024, False)
    # The cut is 80/10/10 in release order; then each split is stored in its seeded order.
    seed = manifest["params"]["shuffle_seed"]
    keep = np.arange(len(images)) != 3
    train = load_split(out, "train", manifest)
    order = permutation(32, seed)
    assert np.array_equal(train.tokens, images[keep][:32][order].reshape(32, -1))
    assert np.array_equal(train.labels, labels[keep][:32][order])
    assert np.all(train.lengths == 1024), "pixel 0 is a real token: every position counts"
    assert (train.tokens == 0).any()


@pytest.mark.parametrize("problem", ["fields", "label", "missing", "size", "corrupt"])
def test_reader_errors_name_the_file(tmp_path, problem):
    level = tmp_path / "pathfinder32" / "curv_contour_length_14"
    release_level(level)
    meta = level / "metadata" / "1.npy"
    if problem == "fields":
        meta.write_text(meta.read_text() + "imgs/1 sample_99.png\n")
        match = r"1\.npy:11: expected"
    elif problem == "label":
        lines = [line.split() for line in meta.read_text().splitlines()]
        lines[2][3] = "7"
        meta.write_text("\n".join(" ".join(fields) for fields in lines) + "\n")
        match = r"1\.npy:3: label '7' is not 0 or 1"
    elif problem == "missing":
        (level / "imgs" / "1" / "sample_4.png").unlink()
        match = "sample_4.png is listed .* but missing"
    elif problem == "size":
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(level / "imgs" / "2" / "sample_0.png")
        match = "sample_0.png is 16x16, expected 32x32"
    else:  # only an empty file (the release's one) is skipped: a damaged PNG is an error
        png = level / "imgs" / "1" / "sample_5.png"
        png.write_bytes(png.read_bytes()[:40])
        match = "sample_5.png cannot be read as an image .* extract it again"
    with pytest.raises(DataError, match=match):
        pf.read_tree(level, 32)


def test_generated_pathx_cache(tmp_path):
    out = pf.build_generated(tmp_path / "pathx", resolution=128, num_images=10, seed=0,
                             progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["task"], manifest["max_len"], manifest["source"]) == ("pathx", 16384,
                                                                          "generate")
    assert manifest["params"]["difficulty"] == "curv_contour_length_14"
    # Labels are drawn per image, so the generator's order is kept (image i is stimulus i).
    assert "shuffle_seed" not in manifest["params"]
    assert [s["size"] for s in manifest["splits"].values()] == [8, 1, 1]
