"""Images in, cached uint8 arrays and fixed splits out.

Every image is decoded once per input size (EXIF orientation honoured, RGB, resized) and kept in
memory as one uint8 array, so trials spend their time training rather than decoding. Splits
depend only on the file list and the spec's seed, so every trial and every resume sees the same
train/val/test images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autocnn.errors import DataError
from autocnn.spec import Spec

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    classes: list[str]
    train: Split
    val: Split
    test: Split | None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def nbytes(self) -> int:
        return sum(s.images.nbytes for s in (self.train, self.val, self.test) if s is not None)


@dataclass(frozen=True)
class FileIndex:
    """Which file goes to which split, decided before any pixel is decoded."""

    classes: list[str]
    files: dict[str, list[tuple[Path, int]]]  # split -> [(path, label)]
    presplit: bool

    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in self.files.items()}


# --------------------------------------------------------------------------- discovery


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(root: Path) -> dict[str, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: holds no class folders (expected one sub-folder of images per class)")
    out: dict[str, list[Path]] = {}
    for folder in folders:
        files = _image_files(folder)
        if not files:
            raise DataError(f"{folder}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        out[folder.name] = files
    return out


def index_imagefolder(root: Path, *, val: float, test: float, seed: int) -> FileIndex:
    """`root/train, root/val[, root/test]` as given, or `root/<class>/` split stratified."""
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (data.root is relative to the spec file)")
    if (root / "train").is_dir():
        return _index_presplit(root)
    by_class = _class_folders(root)
    classes = list(by_class)
    paths = [p for c in classes for p in by_class[c]]
    labels = [i for i, c in enumerate(classes) for _ in by_class[c]]
    parts = stratified_split(np.asarray(labels), val=val, test=test, seed=seed, names=classes)
    files = {name: [(paths[i], labels[i]) for i in idx] for name, idx in parts.items()}
    return FileIndex(classes, files, presplit=False)


def _index_presplit(root: Path) -> FileIndex:
    if not (root / "val").is_dir():
        raise DataError(f"{root / 'val'}: missing (a root with train/ also needs val/; test/ is optional)")
    train = _class_folders(root / "train")
    classes = list(train)
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        by_class = train if split == "train" else _class_folders(folder)
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise DataError(f"{folder}: classes not in train/: {', '.join(unknown)}")
        files[split] = [(p, classes.index(c)) for c, ps in by_class.items() for p in ps]
    return FileIndex(classes, files, presplit=True)


def stratified_split(
    labels: np.ndarray, *, val: float, test: float, seed: int, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Index arrays for train/val[/test], stratified by label and fixed by the seed."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels, minlength=len(names))
    need = 1 + (val > 0) + (test > 0)
    if counts.min() < need:
        small = names[int(counts.argmin())]
        raise DataError(f"class '{small}' has {counts.min()} image(s); a {need}-way split needs at least {need}")
    index = np.arange(len(labels))
    out: dict[str, np.ndarray] = {}
    try:
        if test > 0:
            index, out["test"] = train_test_split(index, test_size=test, stratify=labels, random_state=seed)
        train, out["val"] = train_test_split(
            index, test_size=val / (1 - test), stratify=labels[index], random_state=seed
        )
    except ValueError as exc:  # too few images for the requested fractions
        raise DataError(f"cannot split {len(labels)} images into val={val}, test={test}: {exc}") from None
    out["train"] = train
    return {name: np.sort(out[name]) for name in SPLITS if name in out}


# --------------------------------------------------------------------------- decoding


def decode_image(path: Path, size: int) -> np.ndarray:
    """One file -> (size, size, 3) uint8, upright as its EXIF says, in RGB."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
        upright = ImageOps.exif_transpose(img)
        rgb = upright.convert("RGB")
        resized = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(resized, dtype=np.uint8)


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
    if keep.all():  # the usual case: no second copy of the images, even for a moment (issue 6)
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


def load_digits_dataset(size: int, *, val: float, test: float, seed: int) -> Dataset:
    """scikit-learn's bundled 8x8 digits (0..16), upscaled to `size`, as 3-channel uint8."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in small])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    classes = [str(c) for c in digits.target_names]
    parts = stratified_split(labels, val=val, test=test, seed=seed, names=classes)
    split = {name: Split(np.ascontiguousarray(rgb[idx]), labels[idx]) for name, idx in parts.items()}
    return Dataset(classes, split["train"], split["val"], split.get("test"))


class DataCache:
    """Decoded datasets per input size, shared by every trial of a process."""

    def __init__(self, spec: Spec, *, progress: ProgressFn | None = None) -> None:
        self.spec = spec
        self.progress = progress
        self._index: FileIndex | None = None
        self._by_size: dict[int, Dataset] = {}

    def index(self) -> FileIndex:
        """The file list and split (imagefolder only): cheap, no decoding."""
        if self._index is None:
            data = self.spec.data
            root = self.spec.resolve_path(data.root or "")
            self._index = index_imagefolder(root, val=data.split.val, test=data.split.test, seed=self.spec.seed)
        return self._index

    def get(self, size: int | None = None) -> Dataset:
        size = size or self.spec.data.image_size
        if size not in self._by_size:
            self._by_size[size] = self._load(size)
        return self._by_size[size]

    def _load(self, size: int) -> Dataset:
        data = self.spec.data
        if data.source == "digits":
            return load_digits_dataset(size, val=data.split.val, test=data.split.test, seed=self.spec.seed)
        return load_imagefolder(self.index(), size, progress=self.progress)
