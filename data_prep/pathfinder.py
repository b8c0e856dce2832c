"""Pathfinder and Path-X: our stimulus generator, the official release reader, the cache builders.

The generator follows the published procedure (Linsley et al. 2018) with the published settings of
the resolution: Pathfinder-32's and Path-X's (pathfinder128, `Settings.level`). An image holds two
target contours of `contour_length` paddles (short line segments), grown one paddle per contour in
turn from two seeds `seed_distance` apart near the centre. Each new paddle starts a fixed step ahead
of the last one: around the point `margin` beyond the last paddle's far end, one candidate direction
per pixel of arc is weighted by cos(min(|dtheta| * continuity, pi/2))^2 times one minus the
occupancy mask (every placed paddle dilated by the clearance, except the contour's own previous
paddle), so a paddle that would touch another contour is never drawn. If either target contour
reaches a dead end, both are restarted. Then `num_distractors` shorter contours of
`distractor_length` paddles are seeded uniformly at random and grown the same way; one that cannot
be placed is dropped, as in the original. Two circular markers go on the origin end of one target
contour and on the far end of the same contour (label 1) or of the other one (label 0); the label
and the marked contour are drawn first, so they are independent of the geometry. Everything is drawn
antialiased at `antialias` times the size, then downsampled (Lanczos).

The occupancy mask lives on a lattice of half an image pixel for the published levels (finer than
the original's whole pixels), with precomputed stamps and probe points per direction. Candidates are
weighted with the mask already applied, which is the original's sample-then-reject with unlimited
retries. The restarts are rejection sampling, so a batch of independent attempts is grown side by
side with numpy and the first success is kept: the same distribution as trying them one after
another, at a fraction of the interpreter overhead. Lengths are pixels of the 32x32 image and scale
with the resolution. Path-X (the hard level at 128x128) uses the published pathfinder128 settings
(shorter, thinner paddles, narrower margins and more distractors than Pathfinder-32 drawn four times
larger); 64 and 256 draw the 32x32 settings scaled (the same geometry as at 32), not their own
published ones. The paddles' intensity (the original's contrast lists) is not modelled.

Coordinates: a point is (y, x) with pixel (i, j) covering [i, i+1) x [j, j+1).

The release stores each level as `imgs/<batch>/sample_<n>.png` plus `metadata/<batch>.npy`, which
is plain text despite its name: one line per image, `imgs/<batch> sample_<n>.png <n> <label> ...`
(a true .npy string array, as the generator's np.save would write, is read too).

Splits, as LRA's TFDS `hard[:80%]`, `hard[80%:90%]`, `hard[90%:]`: the images in dataset order
are cut into the first 80% (train), the next 10% (val) and the last 10% (test). Dataset order is,
for the release, the metadata files by batch number and their lines in order (empty images
skipped); for our generator, image index order (each label is drawn independently, so that order
is already random). The release's rows are then shuffled within each split (`cache.SHUFFLE_SEED`)
so that a capped evaluation sees a fair sample; which image is in which split does not change.
(The PyTorch harness shuffled the whole set, unseeded, before its 80/10/10 cut.)
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from . import tasks
from .atomic import atomic_dir
from .cache import SHUFFLE_SEED, DataError, Split, write_task

log = logging.getLogger(__name__)

DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
RESOLUTIONS = (32, 64, 128, 256)
LRA_DIFFICULTY = "curv_contour_length_14"
PATHX_RESOLUTION = 128
NUM_CLASSES = 2
VOCAB_SIZE = 256  # pixel values 0-255; 0 (black) is a real token, not padding
RELEASE_IMAGES = 200_000  # per level in the release
LATTICE = 2  # occupancy lattice points per pixel of the 32x32 image
RESTARTS = 2048  # attempts at the two target contours before the settings are called impossible
ATTEMPTS = 32  # target attempts grown side by side


@dataclass(frozen=True)
class Settings:
    """Stimulus settings. Lengths are pixels of the 32x32 image (the notes' values); at a larger
    resolution the drawing is scaled by resolution / 32."""

    resolution: int = 32
    contour_length: int = 14
    paddle_length: float = 2.0
    thickness: float = 0.5
    margin: float = 1.0
    marker_radius: float = 1.5
    seed_distance: float = 7.0
    continuity: float = 1.0
    antialias: int = 2
    padding: float = 1.0  # paddles keep this far from the border (our choice: not in the notes)
    seed_proposals: int = 32  # uniform proposals per seed; the first free one is taken
    distractor_tries: int = 5  # the original's 4 retrials of a distractor contour, plus one
    # The original's num_distractor_snakes = budget // distractor_length (integer division).
    distractor_budget: int = 20
    # The original's paddle_margin_list: when set, each image draws its margin from it.
    margins: tuple[float, ...] = ()
    lattice: int = LATTICE  # occupancy lattice points per 32x32 pixel; also sets the directions

    @classmethod
    def level(cls, resolution: int = 32, difficulty: str = LRA_DIFFICULTY) -> Settings:
        """The settings of one release level."""
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution {resolution} is not one of {RESOLUTIONS}")
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty {difficulty!r} is not one of {list(DIFFICULTIES)}")
        if resolution == PATHX_RESOLUTION:
            # pathfinder128 as LRA made it (its TFDS builder lists the generator's arguments),
            # in pixels of the 128x128 image: paddle_length 5 (the generator's default),
            # thickness 1.5, margin 2 or 3 per image, marker_radius 3, seed_distance 20,
            # padding 1, continuity 1.8, antialias 2, num_distractor_snakes 35 // (length // 3).
            px = 32 / PATHX_RESOLUTION  # one 128x128 pixel in our 32x32 units
            return cls(resolution=resolution, contour_length=DIFFICULTIES[difficulty],
                       paddle_length=5 * px, thickness=1.5 * px, margin=2 * px,
                       margins=(2 * px, 3 * px), marker_radius=3 * px, seed_distance=20 * px,
                       continuity=1.8, antialias=2, padding=1 * px, distractor_budget=35,
                       lattice=LATTICE * PATHX_RESOLUTION // 32)
        return cls(resolution=resolution, contour_length=DIFFICULTIES[difficulty])

    @property
    def scale(self) -> float:
        return self.resolution / 32

    @property
    def distractor_length(self) -> int:
        return self.contour_length // 3

    @property
    def num_distractors(self) -> int:
        return self.distractor_budget // self.distractor_length

    @property
    def clearance(self) -> float:
        """Least distance between the centre lines of paddles that are not neighbours in one
        contour: a paddle's half-thickness and margin on each side."""
        return 2 * self.margin + self.thickness


@dataclass
class Stimulus:
    """One image and the geometry that made it, in pixels of the image (for tests/inspection)."""

    image: np.ndarray  # (resolution, resolution) uint8
    label: int  # 1: both markers on one contour
    contours: list[np.ndarray]  # each (paddles, 2, 2): paddle k runs from [k, 0] to [k, 1], (y, x)
    markers: np.ndarray  # (2, 2): the marker centres (y, x), origin end first
    marked: tuple[int, int]  # the contours the markers sit on; contours 0 and 1 are the targets


# ---- the occupancy lattice -------------------------------------------------------------------

@dataclass(frozen=True)
class _Tables:
    """Precomputed lattice geometry. A lattice point is a flat index y * size + x; a border of
    `border` pixels keeps every probe and stamp inside, so flat offsets never wrap. Occupancy is an
    array of rows (one per attempt) of counts: how many paddle stamps cover each point."""

    size: int  # lattice points per side
    border: int  # pixels of border around the image
    unit: np.ndarray  # (C, 2): (dy, dx) of each direction
    probe: np.ndarray  # (C, P): flat offsets, from a paddle's start, of points along it
    stamp: np.ndarray  # (C, Q): flat offsets of the points within the clearance of a paddle
    # For a paddle in direction c, its K possible successors (the turns of non-zero weight):
    next_dir: np.ndarray  # (C, K): their directions
    weight: np.ndarray  # (C, K): their continuity weights
    next_start: np.ndarray  # (C, K): flat offsets from this paddle's start to theirs
    next_probe: np.ndarray  # (C, K, P): flat offsets of their probe points
    own: np.ndarray  # (C, K, P) uint8: 1 where such a probe lies in this paddle's own stamp
    blank: np.ndarray  # (size * size,) uint8: the empty occupancy, 1 outside the allowed box
    lattice: int  # lattice points per 32x32 pixel

    def flat(self, yx: np.ndarray) -> np.ndarray:
        """Pixel (32x32 scale) positions (..., 2) -> nearest flat lattice indices (...)."""
        lat = np.rint((yx + self.border) * self.lattice).astype(np.int64)
        return lat[..., 0] * self.size + lat[..., 1]

    def pixels(self, flat: np.ndarray) -> np.ndarray:
        """Flat lattice indices (...) -> pixel (32x32 scale) positions (..., 2)."""
        return np.stack(np.divmod(flat, self.size), axis=-1) / self.lattice - self.border


def _offsets(vectors: np.ndarray, size: int) -> np.ndarray:
    """Lattice displacements (..., 2), in lattice units, -> flat offsets (...)."""
    lat = np.rint(vectors).astype(np.int64)
    return lat[..., 0] * size + lat[..., 1]


@functools.lru_cache(maxsize=16)
def _tables(s: Settings) -> _Tables:
    lattice = s.lattice
    length, margin = s.paddle_length * lattice, s.margin * lattice
    clearance = s.clearance * lattice
    border = math.ceil(2 * s.paddle_length + 2 * s.margin + s.clearance)
    size = (32 + 2 * border) * lattice + 1
    # One direction per pixel of arc on the circle of radius paddle + margin, as the original
    # (pixels of the lattice's image: two lattice points per pixel).
    num_dirs = math.ceil(2 * math.pi * (s.paddle_length + s.margin) * lattice / LATTICE)
    angles = 2 * np.pi * np.arange(num_dirs) / num_dirs
    unit = np.stack([np.sin(angles), np.cos(angles)], axis=-1)  # (C, 2)
    turn = np.abs((angles[None] - angles[:, None] + np.pi) % (2 * np.pi) - np.pi)  # (C, C)
    # Only turns below the limit have weight (cos(pi/2)^2 is 4e-33, not 0: exclude it exactly).
    steps = np.flatnonzero(turn[0] * s.continuity < np.pi / 2)
    next_dir = (np.arange(num_dirs)[:, None] + steps[None]) % num_dirs  # (C, K)
    weight = np.cos(turn[np.arange(num_dirs)[:, None], next_dir] * s.continuity) ** 2
    # Probe points along a paddle at most one lattice step (half a pixel) apart.
    along = np.linspace(0, length, math.ceil(length) + 1)
    probe_vec = np.rint(along[None, :, None] * unit[:, None])  # (C, P, 2)
    # The next paddle starts `margin` past the pivot, which is `margin` past this paddle's end.
    next_vec = np.rint((length + margin) * unit[:, None] + margin * unit[next_dir])  # (C, K, 2)
    next_probe = next_vec[:, :, None] + probe_vec[next_dir]  # (C, K, P, 2)

    def within(points, u):
        """Which lattice points (..., 2) lie within the clearance of the paddle from 0 along u."""
        t = np.clip(points @ u / length, 0.0, 1.0)
        return np.linalg.norm(points - t[..., None] * length * u, axis=-1) < clearance

    reach = math.ceil(length + clearance)
    grid = np.stack(np.mgrid[-reach:reach + 1, -reach:reach + 1], axis=-1).reshape(-1, 2)
    stamps = [grid[within(grid, u)] for u in unit]
    # Pad every stamp to one width by repeating its first point: a repeated index in a fancy
    # `+= 1` is incremented once, so the counts stay exact.
    width = max(len(st) for st in stamps)
    stamp = np.stack([np.concatenate([st, st[:1].repeat(width - len(st), 0)]) for st in stamps])
    own = np.stack([within(next_probe[c], u) for c, u in enumerate(unit)]).astype(np.uint8)
    blank = np.ones((size, size), dtype=np.uint8)
    lo, hi = (border + s.padding) * lattice, (border + 32 - s.padding) * lattice
    blank[math.ceil(lo):math.floor(hi) + 1, math.ceil(lo):math.floor(hi) + 1] = 0
    return _Tables(size, border, unit, _offsets(probe_vec, size), _offsets(stamp, size),
                   next_dir, weight, _offsets(next_vec, size), _offsets(next_probe, size), own,
                   blank.ravel(), lattice)


# Each function below works on many rows of the occupancy at once: `occupied` is the flat
# (rows * size**2,) view and `base` (n,) the offset of each row taking part.

def _stamp(t: _Tables, occupied: np.ndarray, base, start, direction) -> None:
    """Add the stamps of paddles (n,) to their rows."""
    occupied[(base + start)[:, None] + t.stamp[direction]] += np.uint8(1)


def _seed(t: _Tables, occupied: np.ndarray, base, starts, directions):
    """Per row, the first free paddle among proposals (n, k): (found (n,), start, direction)."""
    points = occupied[(base[:, None] + starts)[..., None] + t.probe[directions]]  # (n, k, P)
    free = ~np.logical_or.reduce(points > 0, axis=-1)
    first = free.argmax(axis=1)
    rows = np.arange(len(first))
    return free[rows, first], starts[rows, first], directions[rows, first]


def _step(t: _Tables, occupied: np.ndarray, base, start, direction, rng: np.random.Generator):
    """One growth step for paddles (n,): (grown (n,), next start, next direction)."""
    # The contour's previous paddle sits closer than the clearance by design: its own stamp is
    # discounted from the counts at the probes.
    counts = occupied[(base + start)[:, None, None] + t.next_probe[direction]]  # (n, K, P)
    blocked = np.logical_or.reduce(counts > t.own[direction], axis=-1)  # (n, K)
    cumulative = np.add.accumulate(np.where(blocked, 0.0, t.weight[direction]), axis=1)
    total = cumulative[:, -1]
    draw = rng.random(len(total)) * total
    k = np.minimum((cumulative <= draw[:, None]).sum(axis=1), cumulative.shape[1] - 1)
    return total > 0, start + t.next_start[direction, k], t.next_dir[direction, k]


def _grow(t: _Tables, occupied: np.ndarray, rng: np.random.Generator, *, attempts: int,
          length: int, seeders):
    """Add len(seeders) contours of `length` paddles to the occupancy (size**2,), grown one
    paddle each in turn; contour j starts at the first free one of the proposals (n, k) that
    `seeders[j](starts)` returns, given the starts (n, contours, length) so far. A dead end fails.

    `attempts` independent tries run side by side and the first success wins, which is the same
    as trying one after another. Returns the first success as (occupancy, starts (contours,
    length), directions (contours, length)) of flat lattice indices, or None."""
    n, m = attempts, len(seeders)
    rows = np.tile(occupied, n)  # one occupancy row per attempt, flat
    base = np.arange(n) * occupied.size
    starts = np.zeros((n, m, length), dtype=np.int64)
    dirs = np.zeros((n, m, length), dtype=np.int64)
    live = np.arange(n)
    for j, seeder in enumerate(seeders):
        proposals = seeder(starts[live])
        found, start, direction = _seed(t, rows, base[live], proposals,
                                        rng.integers(len(t.unit), size=proposals.shape))
        live, start, direction = live[found], start[found], direction[found]
        starts[live, j, 0], dirs[live, j, 0] = start, direction
        _stamp(t, rows, base[live], start, direction)
    for i in range(1, length):
        for j in range(m):
            grown, start, direction = _step(t, rows, base[live], starts[live, j, i - 1],
                                            dirs[live, j, i - 1], rng)
            live, start, direction = live[grown], start[grown], direction[grown]
            starts[live, j, i], dirs[live, j, i] = start, direction
            _stamp(t, rows, base[live], start, direction)
    if live.size == 0:
        return None
    win = live[0]
    return rows[base[win]:base[win] + occupied.size].copy(), starts[win], dirs[win]


def render(paddles: np.ndarray, markers: np.ndarray, s: Settings) -> np.ndarray:
    """Draw paddles (k, 2, 2) and markers (m, 2), (y, x) image pixels, antialiased: (res, res)."""
    a = s.antialias
    big = Image.new("L", (s.resolution * a, s.resolution * a), 0)
    draw = ImageDraw.Draw(big)
    # A point u of the image is at u * a in the big one, where pixel i's centre is at i + 0.5.
    width = max(1, round(s.thickness * s.scale * a))
    for (y0, x0), (y1, x1) in (paddles * a - 0.5).tolist():
        draw.line([(x0, y0), (x1, y1)], fill=255, width=width)
    r = s.marker_radius * s.scale * a
    for y, x in (markers * a - 0.5).tolist():
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(big.resize((s.resolution, s.resolution), Image.LANCZOS))


def stimulus(s: Settings, seed: int, index: int) -> Stimulus:
    """Image `index` of the stream for `seed`: the same pair always gives the same image."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(2))
    origin = int(rng.integers(2))
    if s.margins:  # the image's margin, as the original draws it from paddle_margin_list
        s = replace(s, margin=s.margins[int(rng.integers(len(s.margins)))])
    t, k = _tables(s), s.seed_proposals

    def centre(starts):
        # The first target seed keeps twice the seed distance from every border, as in the
        # original; one proposal, as the canvas is still empty.
        lo, hi = 2 * s.seed_distance, 32 - 2 * s.seed_distance
        return t.flat(rng.uniform(lo, hi, size=(len(starts), 1, 2)))

    def near_first(starts):
        # The second target seed is `seed_distance` from the first, in a random direction.
        angle = rng.uniform(0, 2 * np.pi, size=(len(starts), k))
        ring = s.seed_distance * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
        return t.flat(t.pixels(starts[:, 0, 0])[:, None] + ring)

    def anywhere(starts):
        return t.flat(rng.uniform(0, 32, size=(len(starts), k, 2)))

    for _ in range(RESTARTS // ATTEMPTS):
        found = _grow(t, t.blank, rng, attempts=ATTEMPTS, length=s.contour_length,
                      seeders=(centre, near_first))
        if found is not None:
            break
    else:
        raise RuntimeError(f"no two target contours fit in {RESTARTS} attempts: {s}")
    occupied, starts, dirs = found
    contours = [(starts[0], dirs[0]), (starts[1], dirs[1])]
    # Distractors: each gets `distractor_tries` tries, then is dropped, as in the original.
    for _ in range(s.num_distractors):
        found = _grow(t, occupied, rng, attempts=s.distractor_tries,
                      length=s.distractor_length, seeders=(anywhere,))
        if found is not None:
            occupied, starts, dirs = found
            contours.append((starts[0], dirs[0]))
    # Geometry in image pixels: starts from the lattice, ends one paddle length along.
    geometry = []
    for start, direction in contours:
        p0 = t.pixels(start) * s.scale
        geometry.append(np.stack([p0, p0 + s.paddle_length * s.scale * t.unit[direction]], 1))
    terminal = origin if label == 1 else 1 - origin
    markers = np.stack([geometry[origin][0, 0], geometry[terminal][-1, 1]])
    image = render(np.concatenate(geometry), markers, s)
    return Stimulus(image, label, geometry, markers, (origin, terminal))


def _generate_range(s: Settings, seed: int, start: int, stop: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((stop - start, s.resolution, s.resolution), dtype=np.uint8)
    labels = np.empty(stop - start, dtype=np.int64)
    for i in range(start, stop):
        st = stimulus(s, seed, i)
        images[i - start], labels[i - start] = st.image, st.label
    return images, labels


def generate(num_images: int, s: Settings, seed: int, *, workers: int = 1, progress: bool = False,
             chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, res, res) uint8 and labels (n,). Image i depends only on (seed, i), so the
    result is the same for any number of worker processes."""
    from tqdm import tqdm

    images = np.empty((num_images, s.resolution, s.resolution), dtype=np.uint8)
    labels = np.empty(num_images, dtype=np.int64)
    bounds = [(lo, min(lo + chunk, num_images)) for lo in range(0, num_images, chunk)]
    with tqdm(total=num_images, desc=f"pathfinder{s.resolution}", unit="img",
              disable=not progress, file=sys.stderr) as bar:
        if workers <= 1 or len(bounds) == 1:
            results = (_generate_range(s, seed, lo, hi) for lo, hi in bounds)
            for (lo, hi), (im, lab) in zip(bounds, results, strict=True):
                images[lo:hi], labels[lo:hi] = im, lab
                bar.update(hi - lo)
        else:
            # Spawned workers: safe even when the caller has imported torch (fork could hang).
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [pool.submit(_generate_range, s, seed, lo, hi) for lo, hi in bounds]
                for (lo, hi), future in zip(bounds, futures, strict=True):
                    images[lo:hi], labels[lo:hi] = future.result()
                    bar.update(hi - lo)
    return images, labels


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


# ---- the official layout -----------------------------------------------------------------------

def write_tree(folder: str | Path, images: np.ndarray, labels: np.ndarray, s: Settings,
               per_batch: int = 1000) -> None:
    """Write images in the release layout (imgs/<batch>/sample_<n>.png, text metadata/<batch>.npy)
    as a whole new `folder`, atomically; used for test fixtures and for inspecting our images next
    to the release's."""
    with atomic_dir(folder) as tmp:
        (tmp / "metadata").mkdir()
        for batch, lo in enumerate(range(0, len(images), per_batch)):
            (tmp / "imgs" / str(batch)).mkdir(parents=True)
            lines = []
            for n, (image, label) in enumerate(zip(images[lo:lo + per_batch],
                                                   labels[lo:lo + per_batch], strict=True)):
                Image.fromarray(image).save(tmp / "imgs" / str(batch) / f"sample_{n}.png")
                # The original's columns after the label: continuity, contour and distractor
                # length, paddle length and thickness, margin, number of contrasts.
                lines.append(f"imgs/{batch} sample_{n}.png {n} {int(label)} {s.continuity} "
                             f"{s.contour_length} {s.distractor_length} {s.paddle_length} "
                             f"{s.thickness} {s.margin} 1")
            (tmp / "metadata" / f"{batch}.npy").write_text("\n".join(lines) + "\n")


def _batch_key(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (sys.maxsize, path.stem)


def read_metadata(folder: Path) -> list[tuple[Path, int]]:
    """(image path, label) for every line of every metadata file, in batch order."""
    files = sorted((folder / "metadata").glob("*.npy"), key=_batch_key)
    if not files:
        raise DataError(f"{folder / 'metadata'} holds no <batch>.npy files; is {folder} a "
                        "pathfinder<res>/<difficulty> folder of the LRA release?")
    entries = []
    for meta in files:
        raw = meta.read_bytes()
        try:
            if raw.startswith(b"\x93NUMPY"):  # a true .npy (string array), as np.save writes
                lines = [" ".join(map(str, row)) for row in np.load(meta, allow_pickle=False)]
            else:
                lines = raw.decode("utf-8").splitlines()
        except (UnicodeDecodeError, ValueError) as err:
            raise DataError(f"{meta} is neither plain-text metadata nor a string .npy "
                            f"({err})") from None
        for line_no, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4:
                raise DataError(f"{meta}:{line_no}: expected 'imgs/<batch> sample_<n>.png <n> "
                                f"<label> ...', got {len(fields)} field(s)")
            if fields[3] not in ("0", "1"):
                raise DataError(f"{meta}:{line_no}: label {fields[3]!r} is not 0 or 1")
            entries.append((folder / fields[0] / fields[1], int(fields[3])))
    return entries


def read_tree(folder: str | Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode a release level into images (n, res, res) uint8 and labels (n,). An empty image file
    (the release holds one) is skipped and counted in the log; a missing one, one that does not
    decode or one of the wrong size is an error."""
    folder = Path(folder)
    entries = read_metadata(folder)
    images = np.empty((len(entries), resolution, resolution), dtype=np.uint8)
    labels = np.empty(len(entries), dtype=np.int64)
    skipped: list[Path] = []
    n = 0
    for path, label in entries:
        if not path.exists():
            raise DataError(f"{path} is listed in {folder / 'metadata'} but missing; the release "
                            "copy is incomplete: extract it again")
        if path.stat().st_size == 0:
            skipped.append(path)
            continue
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("L"))
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise DataError(f"{path} cannot be read as an image ({err}); the release copy is "
                            "damaged: extract it again") from None
        if image.shape != (resolution, resolution):
            raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]}, expected "
                            f"{resolution}x{resolution} for pathfinder{resolution}")
        images[n], labels[n] = image, label
        n += 1
    if skipped:
        log.warning("skipped %d empty image file(s) of %s: %s", len(skipped), folder,
                    ", ".join(str(p) for p in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return images[:n], labels[:n]


# ---- cache builders ------------------------------------------------------------------------

def split_80_10_10(images: np.ndarray, labels: np.ndarray) -> dict[str, Split]:
    """LRA's Pathfinder split, in order: the first 80% train, the next 10% val, the rest test."""
    n = len(labels)
    cuts = {"train": (0, n * 8 // 10), "val": (n * 8 // 10, n * 9 // 10), "test": (n * 9 // 10, n)}
    seq = images.reshape(n, -1)  # (n, res * res), row-major pixels
    return {name: Split(seq[lo:hi], np.full(hi - lo, seq.shape[1], dtype=np.int32), labels[lo:hi])
            for name, (lo, hi) in cuts.items()}


def task_name(resolution: int, difficulty: str) -> str:
    return "pathx" if (resolution, difficulty) == (PATHX_RESOLUTION, LRA_DIFFICULTY) else \
        "pathfinder"


def _write(out_dir, images, labels, *, resolution, difficulty, source, mini, description,
           params, shuffle_seed=None) -> Path:
    return write_task(
        out_dir, split_80_10_10(images, labels), task=task_name(resolution, difficulty),
        source=source, num_classes=NUM_CLASSES, vocab_size=VOCAB_SIZE,
        max_len=resolution * resolution, mini=mini, description=description,
        shuffle_seed=shuffle_seed,
        params={"resolution": resolution, "difficulty": difficulty, "split": "80/10/10 in order",
                "tokens": "grayscale pixel values 0-255, row-major; 0 is a real token",
                **params},
    )


def build_generated(out_dir: str | Path, *, resolution: int = 32,
                    difficulty: str = LRA_DIFFICULTY, num_images: int = RELEASE_IMAGES,
                    seed: int = 0, workers: int = 1, mini: bool = False,
                    progress: bool = True) -> Path:
    """Generate a level with our generator and write it to the cache (split 80/10/10)."""
    s = Settings.level(resolution, difficulty)
    images, labels = generate(num_images, s, seed, workers=workers, progress=progress)
    kind = "mini stand-in, not the LRA benchmark" if mini else "LRA-faithful settings"
    return _write(out_dir, images, labels, resolution=resolution, difficulty=difficulty,
                  source="generate", mini=mini, params={"num_images": num_images, "seed": seed,
                                                       "settings": asdict(s)},
                  description=f"Pathfinder-{resolution} {difficulty} from our generator ({kind})")


def build_from_release(out_dir: str | Path, level_dir: str | Path, *, resolution: int,
                       difficulty: str) -> Path:
    """Read a release level folder (`pathfinder<res>/<difficulty>`) into the cache."""
    images, labels = read_tree(level_dir, resolution)
    return _write(out_dir, images, labels, resolution=resolution, difficulty=difficulty,
                  source="lra_release", mini=False, params={"release_dir": str(level_dir)},
                  shuffle_seed=SHUFFLE_SEED,
                  description=f"Pathfinder-{resolution} {difficulty} from the official LRA "
                              "release")


# ---- the mini stand-in, and the entries of Pathfinder and Path-X in the registry ------------

MINI_IMAGES = 4000


def build_mini(out_dir: Path, progress: bool = True) -> Path:
    """The stand-in: our generator at 32x32, the baseline level (6-paddle contours)."""
    return build_generated(out_dir, resolution=32, difficulty="curv_baseline",
                           num_images=MINI_IMAGES, seed=0, mini=True, progress=progress)


def _generator_flags(p) -> None:
    tasks.seed_flag(p)
    # 80/10/10 of fewer than 10 images would leave val or test empty.
    p.add_argument("--num-images", type=tasks.at_least(10), default=RELEASE_IMAGES,
                   help="images to generate, split 80/10/10 (default %(default)s, as the "
                        "release)")
    p.add_argument("--workers", type=tasks.at_least(1), default=default_workers(),
                   help="generator processes (default %(default)s)")


def _level_flags(p) -> None:
    p.add_argument("--resolution", type=int, default=32, choices=RESOLUTIONS,
                   help="image side in pixels (default %(default)s, LRA's Pathfinder)")
    p.add_argument("--difficulty", default=LRA_DIFFICULTY, choices=list(DIFFICULTIES),
                   help="the level, by contour length in paddles (longer is harder; "
                        "default %(default)s, the level LRA uses)")


def _level_sources(level) -> dict[str, tasks.Source]:
    """The release and the generator, for the level (resolution, difficulty) = level(args)."""
    def generated(args, out: Path) -> Path:
        resolution, difficulty = level(args)
        return build_generated(out, resolution=resolution, difficulty=difficulty,
                               num_images=args.num_images, seed=args.seed, workers=args.workers,
                               progress=not args.quiet)

    def from_release(args, out: Path, folder: Path) -> Path:
        resolution, difficulty = level(args)
        return build_from_release(out, folder, resolution=resolution, difficulty=difficulty)

    return {"lra_release": tasks.release_source(
                lambda args: "pathfinder{}/{}".format(*level(args)), from_release),
            "generate": tasks.Source(tasks.LRA_GENERATOR, generated, _generator_flags)}


def _pathfinder_out(args) -> Path:
    if (args.resolution, args.difficulty) == (32, LRA_DIFFICULTY):
        return tasks.CACHE_ROOT / "pathfinder"
    return tasks.CACHE_ROOT / f"pathfinder{args.resolution}_{args.difficulty}"


tasks.register(tasks.Task(
    name="pathfinder", order=5,
    help="Pathfinder at 32/64/128/256 pixels, any difficulty (release or generator)",
    sources=_level_sources(lambda args: (args.resolution, args.difficulty)),
    flags=_level_flags, mini=build_mini,
    out=_pathfinder_out, out_help=f"{tasks.CACHE_ROOT}/pathfinder<res>_<difficulty> off the "
                                  "LRA level",
))
tasks.register(tasks.Task(
    name="pathx", order=6,
    help="Path-X: Pathfinder-128, curv_contour_length_14, 16,384 tokens",
    sources=_level_sources(lambda args: (PATHX_RESOLUTION, LRA_DIFFICULTY)),
    in_grid=False,  # every model of the LRA paper failed it; `make lra-all` leaves it out
))
