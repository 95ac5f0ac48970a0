"""Learnable synthetic images that stand in for a user's photo folder, made offline from a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_images(n: int, size: int, classes: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 images and int64 labels: a colour, a stripe frequency and an angle
    per class, plus noise, so a small CNN has something to learn; the same seed, the same images."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    colours = rng.uniform(40, 215, (classes, 3))
    freq = rng.uniform(1.0, 6.0, classes)
    angle = rng.uniform(0, np.pi, classes)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, k in enumerate(labels):
        wave = np.sin(2 * np.pi * freq[k] * (xx * np.cos(angle[k]) + yy * np.sin(angle[k])) + rng.uniform(0, 6.3))
        pixel = colours[k] + 40 * wave[..., None] + rng.normal(0, 12, (size, size, 3))
        images[i] = np.clip(pixel, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_class_folders(root: Path, n: int, size: int, classes: int, *, seed: int = 0) -> Path:
    """`root/class_XX/NNNNN.png`: one folder per class, the layout autocnn splits itself."""
    from PIL import Image

    images, labels = synthetic_images(n, size, classes, seed=seed)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png", compress_level=1)
    return root
