"""Decoding: EXIF orientation honoured, transparency composited on white, 16-bit stretched, 8-bit
RGB at the asked size; files that cannot be read are skipped and named.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autocnn.data.arrays import Dataset, Split
from autocnn.data.folders import FileIndex, ProgressFn
from autocnn.errors import DataError

if TYPE_CHECKING:
    from PIL import Image


# Transparent pixels are composited on white: the background of scans, product photos and icons,
# and what a viewer shows. Dropping alpha instead exposes whatever colour lies under it.
BACKGROUND = (255, 255, 255)

# 16-bit (and 32-bit integer or float) single-channel modes: stretched to 8 bits, never clipped.
HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def decode_image(path: Path, size: int) -> np.ndarray:
    """One file -> (size, size, 3) uint8, upright as its EXIF says, in RGB."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
        upright = ImageOps.exif_transpose(img)
        rgb = to_rgb(upright)
        resized = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(resized, dtype=np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB without losing what the file shows: high bit depths are stretched (PIL's
    `convert` clips them, so 16-bit data turns white) and transparency is composited on
    BACKGROUND (PIL drops alpha, exposing the colour stored under transparent pixels)."""
    from PIL import Image

    if img.mode in HIGH_BIT_MODES:
        img = Image.fromarray(stretch_to_8bit(np.asarray(img)))
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def stretch_to_8bit(values: np.ndarray) -> np.ndarray:
    """An image's own darkest..brightest values -> 0..255.

    The range, not the type's: 12-bit sensor data in a 16-bit file (0..4095) and a scan that
    uses 1000..3000 both keep their contrast. A flat image has no range and becomes black.
    """
    data = values.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, dtype=np.uint8)
    low, high = float(data[finite].min()), float(data[finite].max())
    scaled = (data - low) * (255.0 / (high - low)) if high > low else np.zeros_like(data)
    return np.rint(np.where(finite, scaled, 0.0)).clip(0, 255).astype(np.uint8)


def decode_files(
    files: Sequence[tuple[Path, int]], size: int, *, progress: ProgressFn | None = None
) -> tuple[Split, list[tuple[str, str]]]:
    """Decode in threads (PIL releases the GIL); unreadable files are skipped and returned."""
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    keep = np.ones(len(files), dtype=bool)
    skipped: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            images[i] = decode_image(files[i][0], size)
        except Exception as exc:  # noqa: BLE001 - any undecodable file is skipped, not fatal
            keep[i] = False
            skipped.append((str(files[i][0]), f"{exc.__class__.__name__}: {exc}"))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for done, _ in enumerate(pool.map(work, range(len(files))), start=1):
            if progress is not None:
                progress(done, len(files))
    labels = np.asarray([label for _, label in files], dtype=np.int64)
    if keep.all():  # the usual case: no second copy of the images, even for a moment
        return Split(images, labels), sorted(skipped)
    return Split(images[keep], labels[keep]), sorted(skipped)


def load_imagefolder(index: FileIndex, size: int, *, progress: ProgressFn | None = None) -> Dataset:
    total = sum(index.counts().values())
    done_before = 0
    splits: dict[str, Split] = {}
    skipped: list[tuple[str, str]] = []

    for name, files in index.files.items():
        offset = done_before

        def report(done: int, _total: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done, total)

        splits[name], bad = decode_files(files, size, progress=report)
        skipped += bad
        done_before += len(files)
    _check_classes_survived(index, splits)
    return Dataset(index.classes, splits["train"], splits["val"], splits.get("test"), skipped)


def _check_classes_survived(index: FileIndex, splits: dict[str, Split]) -> None:
    counts = np.bincount(splits["train"].labels, minlength=len(index.classes))
    empty = [index.classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"no readable training images for class(es): {', '.join(empty)}")


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w, 3) uint8 -> (N, size, size, 3), each image resized as files are when decoded."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return out
