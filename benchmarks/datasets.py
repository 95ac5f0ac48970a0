"""Small image-classification regimes, made offline and reproducibly from a seed.

Users bring a few dozen images per class, not ImageNet; these regimes stand in for such folders.
Each maker returns train/val/test splits in memory; `write_imagefolder` lays them out as the
pre-split `train/ val/ test/` class folders that autocnn reads with `data.source: imagefolder`.

- digits-small: scikit-learn's bundled digits, few per class, the test images a disjoint draw.
- digits-shifted: the same digits, fewer per class, training images clean while validation and
  test images come from a shifted source (moved, tilted, resized, thicker or thinner strokes, grainy
  unevenly lit paper), as a user's own held-out photos differ from a tidy training set. The fixed
  recipe of search_quality.py reached 0.53 test accuracy on seed 0.
- shapes20: 5 shapes x 4 fill patterns on cluttered, noisy backgrounds. Test images come from
  another generator stream *and* another style (background, clutter, palette), so a model is
  scored on a shifted source, as a user's photos taken elsewhere would be. Calibrated so that it
  is neither trivial nor hopeless: the fixed recipe of search_quality.py (15 epochs) reached 0.57
  test accuracy (0.67 val) on seed 0, autocnn's default configuration at 20 epochs 0.90.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 64  # every regime's image side, in pixels
SUPERSAMPLE = 2  # shapes are drawn this much larger, then averaged down: smooth edges without a rasteriser
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageSet:
    """One split in memory: (N, SIZE, SIZE, 3) uint8 images and their int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Regime:
    """A dataset's class names and its three splits."""

    classes: list[str]
    splits: dict[str, ImageSet]


def write_imagefolder(root: Path, regime: Regime) -> Path:
    """`root/<split>/<class>/NNNN.png`, the pre-split layout autocnn indexes as given."""
    from PIL import Image

    for split, images in regime.splits.items():
        for i, (image, label) in enumerate(zip(images.images, images.labels, strict=True)):
            folder = root / split / regime.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png", compress_level=1)
    return root


# --------------------------------------------------------------------------- digits-small


DIGITS_COUNTS = {"train": 30, "val": 10, "test": 50}  # per class; the rarest digit has 174 images


def draw_per_class(labels: np.ndarray, counts: Mapping[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Index arrays per split: each class shuffled once and cut in consecutive runs, so the
    splits can never share an image, whatever the seed."""
    out: dict[str, list[np.ndarray]] = {split: [] for split in counts}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < sum(counts.values()):
            raise ValueError(f"class {label} has {len(members)} images, {sum(counts.values())} requested")
        start = 0
        for split, n in counts.items():
            out[split].append(members[start : start + n])
            start += n
    return {split: np.sort(np.concatenate(parts)) for split, parts in out.items()}


def upscaled_digits(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (N, size, size, 3) uint8, enlarged bilinearly from 8x8 (0..16 ink)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = np.round(digits.images * (255 / 16)).astype(np.uint8)
    resample = Image.Resampling.BILINEAR
    grey = np.stack([np.asarray(Image.fromarray(im).resize((size, size), resample)) for im in ink])
    return np.repeat(grey[..., None], 3, axis=-1), digits.target.astype(np.int64)


def digits_small(seed: int, counts: Mapping[str, int] = DIGITS_COUNTS) -> Regime:
    images, labels = upscaled_digits()
    parts = draw_per_class(labels, counts, np.random.default_rng([seed, 0]))
    splits = {split: ImageSet(np.ascontiguousarray(images[idx]), labels[idx]) for split, idx in parts.items()}
    return Regime([str(d) for d in range(10)], splits)


# --------------------------------------------------------------------------- digits-shifted


DIGITS_SHIFTED_COUNTS = {"train": 20, "val": 10, "test": 50}  # per class
# How the shifted source's digits differ from the clean ones: placement, stroke and paper.
SHIFT_ROTATE_DEGREES = 15.0
SHIFT_SCALE = (0.75, 1.05)
SHIFT_OFFSET = 0.12  # of the image side
SHIFT_NOISE = 18.0  # grey levels, one standard deviation


def distorted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One digit as another scanner and another hand would give it: off-centre, tilted, smaller or
    larger, strokes thicker or thinner, on grainy, unevenly lit paper."""
    from PIL import Image, ImageFilter

    grey = Image.fromarray(image[..., 0])
    side = grey.size[0]
    scale = rng.uniform(*SHIFT_SCALE)
    angle = rng.uniform(-SHIFT_ROTATE_DEGREES, SHIFT_ROTATE_DEGREES)
    dx, dy = rng.uniform(-SHIFT_OFFSET, SHIFT_OFFSET, 2) * side
    grey = grey.rotate(angle, resample=Image.Resampling.BILINEAR, translate=(dx, dy))
    resized = grey.resize((round(side * scale),) * 2, Image.Resampling.BILINEAR)
    margin = (resized.size[0] - side) // 2  # negative when the digit shrank
    canvas = resized.crop((margin, margin, margin + side, margin + side))  # PIL pads outside with black
    stroke = rng.choice([ImageFilter.MaxFilter(5), ImageFilter.MinFilter(3), None])
    if stroke is not None:
        canvas = canvas.filter(stroke)
    ink = np.asarray(canvas, dtype=np.float64)
    ramp = np.linspace(0, rng.uniform(0, 60), side)
    paper = ramp[None, :] if rng.random() < 0.5 else ramp[:, None]
    noisy = ink + paper + rng.normal(0, SHIFT_NOISE, ink.shape)
    return np.repeat(np.clip(np.round(noisy), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def digits_shifted(seed: int, counts: Mapping[str, int] = DIGITS_SHIFTED_COUNTS) -> Regime:
    """Clean training digits; validation and test digits from the shifted source, disjoint draws.
    Validation shares the test's source, as a user's own held-out photos would."""
    images, labels = upscaled_digits()
    parts = draw_per_class(labels, counts, np.random.default_rng([seed, 0]))
    shift = np.random.default_rng([seed, 3])
    splits = {}
    for split, idx in parts.items():
        chosen = images[idx] if split == "train" else np.stack([distorted(im, shift) for im in images[idx]])
        splits[split] = ImageSet(np.ascontiguousarray(chosen), labels[idx])
    return Regime([str(d) for d in range(10)], splits)


# --------------------------------------------------------------------------- shapes20


SHAPES = ("circle", "square", "triangle", "star", "cross")
PATTERNS = ("solid", "stripes", "checker", "dots")
SHAPES20_COUNTS = {"train": 40, "val": 15, "test": 30}
# Near-upright objects. At any angle (and with denser clutter) the fixed recipe of search_quality.py
# reached 0.31 test accuracy: a regime no small CNN can learn from 40 images says nothing about search.
MAX_TILT_DEGREES = 15.0
# The fill pattern stays inside this fraction of the object: a solid rim keeps the outline whole
# where the pattern's dark colour meets a dark background.
PATTERN_CORE = 0.8


@dataclass(frozen=True)
class Style:
    """What a source looks like apart from the object: the part a shifted test set changes."""

    background: str  # "gradient" (two colours, linear) or "blotches" (coarse random colour field)
    clutter: str  # "lines" (straight strokes) or "rings" (circle outlines)
    saturation: tuple[float, float]  # of the object's colour
    value: tuple[float, float]


TRAIN_STYLE = Style("gradient", "lines", saturation=(0.55, 1.0), value=(0.55, 1.0))
TEST_STYLE = Style("blotches", "rings", saturation=(0.3, 0.65), value=(0.45, 0.85))


def shapes20_classes() -> list[str]:
    return [f"{shape}-{pattern}" for shape in SHAPES for pattern in PATTERNS]


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the object's own frame (unit circumradius, already rotated)."""
    if shape == "circle":
        return u**2 + v**2 < 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if shape == "triangle":  # equilateral: inside all three edges, each 0.5 from the centre
        normals = np.deg2rad([270.0, 30.0, 150.0])
        return np.all([u * np.cos(a) + v * np.sin(a) < 0.5 for a in normals], axis=0)
    if shape == "star":  # five sharp points: the radius swings linearly between 0.4 and 1 with the angle
        rho, phi = np.hypot(u, v), np.arctan2(v, u)
        return rho < 1.0 - 0.6 * np.abs((phi * 5 / (2 * np.pi)) % 1.0 - 0.5) * 2
    if shape == "cross":
        return ((np.abs(u) < 0.28) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.28) & (np.abs(u) < 0.95))
    raise ValueError(f"unknown shape {shape!r}")


def pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Where the fill takes its second colour; u, v in pixels along the pattern's own axes."""
    if pattern == "solid":
        return np.zeros(u.shape, dtype=bool)
    if pattern == "stripes":
        return np.sin(2 * np.pi * u / period) > 0
    if pattern == "checker":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 1
    if pattern == "dots":
        du, dv = u / period % 1.0 - 0.5, v / period % 1.0 - 0.5
        return du**2 + dv**2 < 0.32**2
    raise ValueError(f"unknown pattern {pattern!r}")


def rotated(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value)) * 255.0


def contrasting(colour: np.ndarray) -> np.ndarray:
    """The pattern's second colour: much darker than a light fill, much lighter than a dark one."""
    return colour * 0.3 if colour.mean() > 110 else colour + (255.0 - colour) * 0.7


def background(style: Style, rng: np.random.Generator, side: int, avoid_hue: float) -> np.ndarray:
    """A (side, side, 3) float canvas, darker than objects and off their hue, so they stay visible."""
    hues = avoid_hue + rng.uniform(0.2, 0.8, 2)
    colours = [hsv(h, rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.55)) for h in hues]
    if style.background == "gradient":
        y, x = np.mgrid[0:side, 0:side] / side
        u, _ = rotated(x - 0.5, y - 0.5, rng.uniform(0, 2 * np.pi))
        t = np.clip(u + 0.5, 0, 1)[..., None]
        return colours[0] * (1 - t) + colours[1] * t
    if style.background == "blotches":
        from PIL import Image

        cells = rng.uniform(0, 1, (4, 4, 1))
        coarse = (colours[0] * (1 - cells) + colours[1] * cells).astype(np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64)
    raise ValueError(f"unknown background {style.background!r}")


def clutter_masks(style: Style, rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Thin distractor strokes, one mask each; coordinates and widths in fractions of the side."""
    masks = []
    for _ in range(rng.integers(1, 4)):
        width = rng.uniform(0.006, 0.018)
        if style.clutter == "lines":
            p, q = rng.uniform(-0.1, 1.1, 2), rng.uniform(-0.1, 1.1, 2)
            d = q - p
            t = np.clip(((x - p[0]) * d[0] + (y - p[1]) * d[1]) / (d @ d + 1e-9), 0, 1)
            masks.append(np.hypot(x - p[0] - t * d[0], y - p[1] - t * d[1]) < width)
        elif style.clutter == "rings":
            centre, radius = rng.uniform(0, 1, 2), rng.uniform(0.05, 0.3)
            masks.append(np.abs(np.hypot(x - centre[0], y - centre[1]) - radius) < width)
        else:
            raise ValueError(f"unknown clutter {style.clutter!r}")
    return masks


def render_shape(shape: str, pattern: str, style: Style, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One (size, size, 3) uint8 image: the object at a random place, scale, angle and colour."""
    side = size * SUPERSAMPLE
    y, x = np.mgrid[0:side, 0:side] / side
    hue = rng.uniform(0, 1)
    canvas = background(style, rng, side, avoid_hue=hue)
    for mask in clutter_masks(style, rng, x, y):
        canvas[mask] = hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.2, 1.0))
    radius = rng.uniform(0.25, 0.36)
    centre = rng.uniform(radius * 0.8, 1 - radius * 0.8, 2)
    tilt = np.deg2rad(rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES))
    u, v = rotated((x - centre[0]) / radius, (y - centre[1]) / radius, tilt)
    pu, pv = rotated(x * side, y * side, rng.uniform(0, np.pi))
    fill = hsv(hue, rng.uniform(*style.saturation), rng.uniform(*style.value))
    inside = shape_mask(shape, u, v)
    core = shape_mask(shape, u / PATTERN_CORE, v / PATTERN_CORE)
    second = core & pattern_mask(pattern, pu, pv, period=rng.uniform(6.0, 8.0) * SUPERSAMPLE)
    canvas[inside] = fill
    canvas[second] = contrasting(fill)
    canvas += rng.normal(0, 10, canvas.shape)
    small = canvas.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def render_split(n_per_class: int, style: Style, rng: np.random.Generator) -> ImageSet:
    classes = [(shape, pattern) for shape in SHAPES for pattern in PATTERNS]
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    images = np.stack([render_shape(*classes[k], style, rng) for k in labels])
    return ImageSet(images, labels.astype(np.int64))


def shapes20(seed: int, counts: Mapping[str, int] = SHAPES20_COUNTS) -> Regime:
    """Train and val share one generator stream and style; test has its own stream and TEST_STYLE."""
    source = np.random.default_rng([seed, 1])
    shifted = np.random.default_rng([seed, 2])
    splits = {
        "train": render_split(counts["train"], TRAIN_STYLE, source),
        "val": render_split(counts["val"], TRAIN_STYLE, source),
        "test": render_split(counts["test"], TEST_STYLE, shifted),
    }
    return Regime(shapes20_classes(), splits)


REGIMES = {"digits-small": digits_small, "digits-shifted": digits_shifted, "shapes20": shapes20}
