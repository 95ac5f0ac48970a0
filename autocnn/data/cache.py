"""Images in, cached uint8 arrays and fixed splits out, for a folder, scikit-learn's digits or a
named dataset; and the lineage record (digests, counts) MLflow keeps of them.

Every image is decoded once per input size and kept in memory as one uint8 array, so trials spend
their time training rather than decoding.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autocnn.data.arrays import Dataset, Split
from autocnn.data.decode import load_imagefolder, resized
from autocnn.data.folders import SPLITS, FileIndex, ProgressFn, index_imagefolder, stratified_split
from autocnn.spec.schema import DataSpec


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


def load_named_dataset(name: str, size: int, *, labels: str | None, val: float, seed: int) -> Dataset:
    """A dataset by name: its own test split kept, val drawn stratified from its training images."""
    from autocnn.data.named import fetch_dataset, read_named

    fetch_dataset(name)
    named = read_named(name, labels=labels)
    images, targets = named.train
    parts = stratified_split(targets, val=val, test=0.0, seed=seed, names=named.classes)
    split = {part: Split(resized(images[idx], size), targets[idx]) for part, idx in parts.items()}
    test = Split(resized(named.test[0], size), named.test[1])
    return Dataset(named.classes, split["train"], split["val"], test)


class DataCache:
    """Decoded datasets per input size, shared by every trial of a process."""

    def __init__(self, data: DataSpec, *, seed: int, progress: ProgressFn | None = None) -> None:
        self.data = data  # its paths already absolute: resolved when the spec was loaded
        self.seed = seed  # the study's: the split depends on the file list and this alone
        self.progress = progress
        self._index: FileIndex | None = None
        self._by_size: dict[int, Dataset] = {}

    def index(self) -> FileIndex:
        """The file list and split (imagefolder only): cheap, no decoding."""
        if self._index is None:
            data = self.data
            self._index = index_imagefolder(
                Path(data.root or ""), val=data.split.val, test=data.split.test, seed=self.seed
            )
        return self._index

    def decoded(self) -> list[Dataset]:
        """The datasets decoded so far, without decoding any."""
        return list(self._by_size.values())

    def get(self, size: int | None = None) -> Dataset:
        size = size or self.data.image_size
        if size not in self._by_size:
            self._by_size[size] = self._load(size)
        return self._by_size[size]

    def _load(self, size: int) -> Dataset:
        data = self.data
        if data.source == "digits":
            return load_digits_dataset(size, val=data.split.val, test=data.split.test, seed=self.seed)
        if data.source != "imagefolder":
            return load_named_dataset(data.source, size, labels=data.labels, val=data.split.val, seed=self.seed)
        return load_imagefolder(self.index(), size, progress=self.progress)


DIGEST_CHARS = 10  # MLflow shows dataset digests of about this length


@dataclass(frozen=True)
class DatasetRecord:
    """A study's data as lineage (MLflow's dataset inputs): the runs' Dataset column and its details."""

    name: str
    source: str  # a local folder, or (not local) the function that makes a bundled dataset
    digest: str
    profile: dict[str, Any]  # images per split and per class
    local: bool = True


def dataset_record(cache: DataCache, data: Dataset) -> DatasetRecord:
    """What the study trains on, for MLflow's data lineage: where it comes from, a digest that
    changes when a file is added, removed, renamed, resized or moves to another split, and the
    images per class and split that were decoded."""
    splits = {
        name: split for name, split in zip(SPLITS, (data.train, data.val, data.test), strict=True) if split is not None
    }
    profile = _class_counts(data.classes, splits) | {"skipped": len(data.skipped)}
    if cache.data.source == "digits":
        return DatasetRecord("digits", "sklearn.datasets.load_digits", _content_digest(splits), profile, local=False)
    if cache.data.source != "imagefolder":
        from autocnn.data.named import NAMED, archive_for

        name = cache.data.source + ("-coarse" if cache.data.labels == "coarse" else "")
        loader = f"torchvision.datasets.{NAMED[cache.data.source].torchvision_class} from {archive_for(cache.data.source).url}"
        return DatasetRecord(name, loader, _content_digest(splits), profile, local=False)
    root = Path(cache.data.root or "")
    return DatasetRecord(root.name, str(root), _file_list_digest(cache.index(), root), profile, local=True)


def _class_counts(classes: list[str], splits: dict[str, Any]) -> dict[str, Any]:
    counts = {name: np.bincount(split.labels, minlength=len(classes)) for name, split in splits.items()}
    return {
        "classes": len(classes),
        "images": {name: len(split) for name, split in splits.items()},
        "per_class": {c: {name: int(n[i]) for name, n in counts.items()} for i, c in enumerate(classes)},
    }


def _file_list_digest(index: FileIndex, root: Path) -> str:
    """Names, sizes, classes and splits of the files: cheap for any number of images, unlike
    hashing their bytes, and it changes whenever a file does in practice."""
    digest = hashlib.sha256()
    for split in sorted(index.files):
        for path, label in index.files[split]:
            try:
                size = path.stat().st_size
            except OSError:  # unreadable: the data loader reports it
                size = -1
            digest.update(f"{split}\t{index.classes[label]}\t{os.path.relpath(path, root)}\t{size}\n".encode())
    return digest.hexdigest()[:DIGEST_CHARS]


def _content_digest(splits: dict[str, Any]) -> str:
    """A bundled dataset has no files: its decoded pixels and labels, split by split."""
    digest = hashlib.sha256()
    for name, split in splits.items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(split.labels).tobytes())
        digest.update(np.ascontiguousarray(split.images).tobytes())
    return digest.hexdigest()[:DIGEST_CHARS]
