"""Real small-data regimes from Fashion-MNIST, read from Debian's `dataset-fashion-mnist` package.

Synthetic regimes say little about whether a search beats a practitioner on real photos of real
things; Fashion-MNIST is real, offline (an apt package, no download at run time) and hard enough
that 50 or 200 images per class leave room between a fixed recipe and a good search.

Each regime draws its training and validation images per class from the official 60,000-image
training split (disjoint, from one seeded shuffle per class), and scores on the official
10,000-image test set, which no seed ever trains on. Images are 28 x 28 grey, replicated to RGB so
they meet the same (N, H, W, 3) uint8 contract as the synthetic regimes; autocnn resizes them to
the spec's `data.image_size` like any other folder of images.
"""

from __future__ import annotations

import gzip
import os
import zlib
from functools import cache
from pathlib import Path

import numpy as np

from benchmarks.datasets import ImageSet, Regime, draw_per_class

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FOLDER_VARIABLE = "AUTOCNN_FASHION_MNIST"  # another folder holding the same four files
# The official class names in label order, spelled so they can be folder names.
CLASSES = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
SIDE = 28
# (train, val) images per class, both from the official training split.
REGIME_SIZES = {"fmnist-50": (50, 20), "fmnist-200": (200, 50)}

# The idx format's third magic byte names the element type; all of them are stored big-endian.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class FashionMnistMissing(RuntimeError):
    """The dataset files are not on this machine: a setup step for the user, not a bug."""


# --------------------------------------------------------------------------- the idx files


def read_idx(path: Path) -> np.ndarray:
    """One gzipped idx file as an array in native byte order.

    The header is checked against the payload's length, so a truncated or foreign file fails here,
    naming itself, rather than as a reshape error or as silently wrong images later.
    """
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from exc
    dtype, shape = _idx_header(path, raw)
    offset = 4 + 4 * len(shape)
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: idx header promises {shape} ({expected} bytes), file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_header(path: Path, raw: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    """(element type, dimensions) from the magic number: two zero bytes, a type code, a rank."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number {raw[:4].hex() or 'empty'})")
    code, rank = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx element type 0x{code:02x}")
    if rank == 0 or len(raw) < 4 + 4 * rank:
        raise ValueError(f"{path}: idx header cut short (rank {rank}, {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    return IDX_DTYPES[code], shape


# --------------------------------------------------------------------------- the dataset


def fashion_mnist_dir(folder: Path | str | None = None) -> Path:
    """The folder given, else $AUTOCNN_FASHION_MNIST, else where Debian's package puts the files."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ.get(FOLDER_VARIABLE) or FASHION_MNIST_DIR)


def load_fashion_mnist(folder: Path | str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels): (N, 28, 28) uint8 and int64 labels.

    Read once per process and folder (decompressing 60,000 images costs about a second, and every
    seed and regime reads the same files). The arrays are shared, hence read-only.
    """
    return _load_folder(fashion_mnist_dir(folder).resolve())


@cache
def _load_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FashionMnistMissing(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}): "
            f"apt-get install dataset-fashion-mnist, or set {FOLDER_VARIABLE} to a folder holding the four idx files"
        )
    arrays = {key: read_idx(folder / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        _check_split(folder, arrays[f"{split}_images"], arrays[f"{split}_labels"])
    out = (
        arrays["train_images"].astype(np.uint8, copy=False),
        arrays["train_labels"].astype(np.int64, copy=False),
        arrays["test_images"].astype(np.uint8, copy=False),
        arrays["test_labels"].astype(np.int64, copy=False),
    )
    for array in out:
        array.setflags(write=False)
    return out


def _check_split(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Images and labels that do not pair up would train on nonsense without any error."""
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or labels.shape != (len(images),):
        raise ValueError(f"{folder}: images {images.shape} and labels {labels.shape} are not Fashion-MNIST's")
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise ValueError(f"{folder}: labels outside 0..{len(CLASSES) - 1}")


# --------------------------------------------------------------------------- the regimes


def as_rgb(grey: np.ndarray) -> np.ndarray:
    """(N, H, W) grey to (N, H, W, 3): the synthetic regimes' and autocnn's images are RGB."""
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))


def stratified_head(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first images of each class, `limit` in all and as even across classes as it
    divides: a smoke run's small test set keeps every class and is the same on every run."""
    if limit < 1:
        raise ValueError(f"test_limit must be at least 1, got {limit}")
    classes = np.unique(labels)
    per_class, extra = divmod(min(limit, len(labels)), len(classes))
    parts = [np.flatnonzero(labels == c)[: per_class + (i < extra)] for i, c in enumerate(classes)]
    return np.sort(np.concatenate(parts))


def fashion_mnist_regime(
    seed: int,
    *,
    train_per_class: int,
    val_per_class: int,
    test_limit: int | None = None,
    folder: Path | str | None = None,
) -> Regime:
    """Train and val drawn per class from the official training split; test the official test set.

    Validation comes from the training split, never from the test set, so a search that selects on
    validation accuracy has not seen the images it is finally scored on.
    """
    train_images, train_labels, test_images, test_labels = load_fashion_mnist(folder)
    counts = {"train": train_per_class, "val": val_per_class}
    parts = draw_per_class(train_labels, counts, np.random.default_rng([seed, 0]))
    splits = {split: ImageSet(as_rgb(train_images[idx]), train_labels[idx]) for split, idx in parts.items()}
    test = np.arange(len(test_labels)) if test_limit is None else stratified_head(test_labels, test_limit)
    splits["test"] = ImageSet(as_rgb(test_images[test]), test_labels[test])
    return Regime(list(CLASSES), splits)


def fmnist_regime(name: str, seed: int, test_limit: int | None = None) -> Regime:
    """A named regime of REGIME_SIZES, as the benchmarks refer to them."""
    if name not in REGIME_SIZES:
        raise ValueError(f"unknown Fashion-MNIST regime {name!r}; known: {', '.join(REGIME_SIZES)}")
    train, val = REGIME_SIZES[name]
    return fashion_mnist_regime(seed, train_per_class=train, val_per_class=val, test_limit=test_limit)
