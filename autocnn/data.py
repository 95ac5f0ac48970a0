"""Images in, cached uint8 arrays and fixed splits out.

Every image is decoded once per input size (EXIF orientation honoured, 8-bit RGB, resized) and
kept in memory as one uint8 array, so trials spend their time training rather than decoding.
Splits depend only on the file list and the spec's seed, so every trial and every resume sees the
same train/val/test images. Files that are not loaded are named, with the reason, by
`FileIndex.notes` (found while listing) and `Dataset.skipped` (found while decoding).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autocnn.errors import DataError
from autocnn.spec import Spec

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
ProgressFn = Callable[[int, int], None]

# Transparent pixels are composited on white: the background of scans, product photos and icons,
# and what a viewer shows. Dropping alpha instead exposes whatever colour lies under it.
BACKGROUND = (255, 255, 255)
# 16-bit (and 32-bit integer or float) single-channel modes: stretched to 8 bits, never clipped.
HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# Why a file found under the data root is not loaded. Ignored: a rule says it is no image of a
# class. Skipped: it should have been one but cannot be read.
HIDDEN = "hidden"
NOT_AN_IMAGE = "not an image suffix"  # IMAGE_SUFFIXES: named in the error for a class folder without images
OUTSIDE_CLASSES = "not inside a class folder"
NOT_A_SPLIT = "not train/, val/ or test/"
NOT_A_FILE = "not a regular file"
SYMLINKED_FOLDER = "symlinked sub-folder, not followed"
NAMES_PER_NOTE = 20


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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): found while decoding

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def nbytes(self) -> int:
        return sum(s.images.nbytes for s in (self.train, self.val, self.test) if s is not None)


@dataclass
class Scan:
    """What listing the data root found besides images: each file or folder once, with its reason."""

    root: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why it cannot be read)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, the rule that leaves it out)
    nested: dict[str, int] = field(default_factory=dict)  # sub-folder of a class folder -> images loaded

    def ignore(self, path: Path, rule: str, *, folder: bool = False) -> None:
        self.ignored.append((str(path) + (os.sep if folder else ""), rule))

    def skip(self, path: Path, why: str) -> None:
        self.skipped.append((str(path), why))

    def shown(self, path: str) -> str:
        """Paths relative to the data root: the root itself is in validate's table."""
        try:
            return str(Path(path).relative_to(self.root)) + (os.sep if path.endswith(os.sep) else "")
        except ValueError:
            return path

    def notes(self, limit: int = NAMES_PER_NOTE) -> list[str]:
        """One line per skipped file (up to `limit`), one per ignore rule (naming up to `limit` files),
        and one for the sub-folders loaded as their class folder's class.

        The limits keep a folder of sidecar files (`x.json` beside every `x.jpg`) from burying
        the one line that matters; the count of the rest is always given.
        """
        lines = [f"skipped {self.shown(path)} ({why})" for path, why in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"skipped {len(self.skipped) - limit} more files or folders")
        by_rule: dict[str, list[str]] = {}
        for path, rule in self.ignored:
            by_rule.setdefault(rule, []).append(self.shown(path))
        lines += [f"ignored ({rule}): {_names(paths, limit)}" for rule, paths in by_rule.items()]
        if self.nested:
            folders = [f"{self.shown(path)}{os.sep} ({n})" for path, n in sorted(self.nested.items())]
            lines.append(f"loaded images in sub-folders as their class folder's class: {_names(folders, limit)}")
        return lines


def _names(items: list[str], limit: int) -> str:
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class FileIndex:
    """Which file goes to which split, decided before any pixel is decoded."""

    classes: list[str]
    files: dict[str, list[tuple[Path, int]]]  # split -> [(path, label)]
    presplit: bool
    scan: Scan | None = None

    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in self.files.items()}

    def notes(self) -> list[str]:
        return self.scan.notes() if self.scan is not None else []


# --------------------------------------------------------------------------- discovery


def _listing(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


_FOLDER, _LINKED_FOLDER, _FILE = "folder", "linked folder", "file"


def _classified(entries: list[os.DirEntry[str]], scan: Scan) -> list[tuple[Path, str]]:
    """(path, kind) of the entries worth a look; hidden ones, dangling symlinks, special files and
    entries that cannot even be examined (`/proc`'s, for one) are noted in `scan` instead."""
    out: list[tuple[Path, str]] = []
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.name.startswith("."):
                scan.ignore(path, HIDDEN, folder=entry.is_dir())
            elif entry.is_dir(follow_symlinks=False):
                out.append((path, _FOLDER))
            elif entry.is_dir():
                out.append((path, _LINKED_FOLDER))
            elif entry.is_file():
                out.append((path, _FILE))
            elif entry.is_symlink():  # to nothing: it names an image that is not there
                scan.skip(path, f"dangling symlink to {os.readlink(path)}")
            else:
                scan.ignore(path, NOT_A_FILE)
        except OSError as exc:
            scan.skip(path, f"cannot be examined: {exc.strerror or exc}")
    return out


def _class_images(folder: Path, scan: Scan) -> list[Path]:
    """Every image under a class folder, sub-folders included, as torchvision's ImageFolder reads them.

    Sub-folders (`cat/2019/`, `cat/indoor/`) hold images of their class folder's class; hidden
    files and folders (`.DS_Store`, macOS `._x.jpg`, `.ipynb_checkpoints/`) hold none. Symlinks
    to sub-folders are not followed: one pointing at `/` or at its own parent would walk the disk
    or loop. A class folder may itself be a symlink.
    """
    try:
        entries = _listing(folder)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list class folder ({exc.strerror or exc})") from None
    images: list[Path] = []
    pending: list[tuple[Path, list[os.DirEntry[str]]]] = [(folder, entries)]
    while pending:
        here, entries = pending.pop()
        found = 0
        for path, kind in _classified(entries, scan):
            if kind == _FOLDER:
                pending += _sub_folder(path, scan)
            elif kind == _LINKED_FOLDER:
                scan.ignore(path, SYMLINKED_FOLDER, folder=True)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
                found += 1
            else:
                scan.ignore(path, NOT_AN_IMAGE)
        if found and here != folder:
            scan.nested[str(here)] = found
    return sorted(images)


def _sub_folder(path: Path, scan: Scan) -> list[tuple[Path, list[os.DirEntry[str]]]]:
    """A sub-folder to walk with its listing; one that cannot be listed is skipped, and said so."""
    try:
        return [(path, _listing(path))]
    except OSError as exc:
        scan.skip(path, f"folder cannot be listed: {exc.strerror or exc}")
        return []


def _root_listing(root: Path) -> list[os.DirEntry[str]]:
    try:
        return _listing(root)
    except OSError as exc:
        raise DataError(f"{root}: cannot list folder ({exc.strerror or exc})") from None


def _class_folders(root: Path, scan: Scan) -> dict[str, list[Path]]:
    folders: list[Path] = []
    for path, kind in _classified(_root_listing(root), scan):
        if kind == _FILE:
            scan.ignore(path, OUTSIDE_CLASSES)
        else:
            folders.append(path)
    if not folders:
        raise DataError(f"{root}: holds no class folders (expected one sub-folder of images per class)")
    out: dict[str, list[Path]] = {}
    for folder in folders:
        files = _class_images(folder, scan)
        if not files:
            raise DataError(f"{folder}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        out[folder.name] = files
    return out


def _is_folder(path: Path) -> bool:
    """`Path.is_dir`, with a name the OS refuses (too long, a NUL byte) as a user's error."""
    try:
        return path.is_dir()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be used as a data folder ({getattr(exc, 'strerror', None) or exc})") from None


def index_imagefolder(root: Path, *, val: float, test: float, seed: int) -> FileIndex:
    """`root/train, root/val[, root/test]` as given, or `root/<class>/` split stratified."""
    if not _is_folder(root):
        raise DataError(f"{root}: data root not found (data.root is relative to the spec file)")
    if _is_folder(root / "train"):
        return _index_presplit(root)
    scan = Scan(root)
    by_class = _class_folders(root, scan)
    classes = list(by_class)
    paths = [p for c in classes for p in by_class[c]]
    labels = [i for i, c in enumerate(classes) for _ in by_class[c]]
    parts = stratified_split(np.asarray(labels), val=val, test=test, seed=seed, names=classes)
    files = {name: [(paths[i], labels[i]) for i in idx] for name, idx in parts.items()}
    return FileIndex(classes, files, presplit=False, scan=scan)


def _index_presplit(root: Path) -> FileIndex:
    if not _is_folder(root / "val"):
        raise DataError(f"{root / 'val'}: missing (a root with train/ also needs val/; test/ is optional)")
    scan = Scan(root)
    _note_beside_splits(root, scan)
    train = _class_folders(root / "train", scan)
    classes = list(train)
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        folder = root / split
        if not _is_folder(folder):
            continue
        by_class = train if split == "train" else _class_folders(folder, scan)
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise DataError(f"{folder}: classes not in train/: {', '.join(unknown)}")
        files[split] = [(p, classes.index(c)) for c, ps in by_class.items() for p in ps]
    return FileIndex(classes, files, presplit=True, scan=scan)


def _note_beside_splits(root: Path, scan: Scan) -> None:
    """Anything at the top of a pre-split root other than the split folders is left out, and said so."""
    for path, kind in _classified(_root_listing(root), scan):
        if kind == _FILE:
            scan.ignore(path, OUTSIDE_CLASSES)
        elif path.name not in SPLITS:
            scan.ignore(path, NOT_A_SPLIT, folder=True)


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


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w, 3) uint8 -> (N, size, size, 3), each image resized as files are when decoded."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return out


def load_named_dataset(name: str, size: int, *, labels: str | None, val: float, seed: int) -> Dataset:
    """A dataset by name: its own test split kept, val drawn stratified from its training images."""
    from autocnn.datasets import fetch_dataset, read_named

    fetch_dataset(name)
    named = read_named(name, labels=labels)
    images, targets = named.train
    parts = stratified_split(targets, val=val, test=0.0, seed=seed, names=named.classes)
    split = {part: Split(resized(images[idx], size), targets[idx]) for part, idx in parts.items()}
    test = Split(resized(named.test[0], size), named.test[1])
    return Dataset(named.classes, split["train"], split["val"], test)


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

    def decoded(self) -> list[Dataset]:
        """The datasets decoded so far, without decoding any."""
        return list(self._by_size.values())

    def get(self, size: int | None = None) -> Dataset:
        size = size or self.spec.data.image_size
        if size not in self._by_size:
            self._by_size[size] = self._load(size)
        return self._by_size[size]

    def _load(self, size: int) -> Dataset:
        data = self.spec.data
        if data.source == "digits":
            return load_digits_dataset(size, val=data.split.val, test=data.split.test, seed=self.spec.seed)
        if data.source != "imagefolder":
            return load_named_dataset(data.source, size, labels=data.labels, val=data.split.val, seed=self.spec.seed)
        return load_imagefolder(self.index(), size, progress=self.progress)


# --------------------------------------------------------------------------- lineage

DIGEST_CHARS = 10  # MLflow shows dataset digests of about this length


@dataclass(frozen=True)
class DatasetRecord:
    """A study's data as lineage (MLflow's dataset inputs): the runs' Dataset column and its details."""

    name: str
    source: str  # a local folder, or (not local) the function that makes a bundled dataset
    digest: str
    profile: dict[str, Any]  # images per split and per class
    local: bool = True


def dataset_record(spec: Spec, cache: DataCache, data: Dataset) -> DatasetRecord:
    """What the study trains on, for MLflow's data lineage: where it comes from, a digest that
    changes when a file is added, removed, renamed, resized or moves to another split, and the
    images per class and split that were decoded."""
    splits = {
        name: split for name, split in zip(SPLITS, (data.train, data.val, data.test), strict=True) if split is not None
    }
    profile = _class_counts(data.classes, splits) | {"skipped": len(data.skipped)}
    if spec.data.source == "digits":
        return DatasetRecord("digits", "sklearn.datasets.load_digits", _content_digest(splits), profile, local=False)
    if spec.data.source != "imagefolder":
        from autocnn.datasets import NAMED, archive_for

        name = spec.data.source + ("-coarse" if spec.data.labels == "coarse" else "")
        loader = (
            f"torchvision.datasets.{NAMED[spec.data.source].torchvision_class} from {archive_for(spec.data.source).url}"
        )
        return DatasetRecord(name, loader, _content_digest(splits), profile, local=False)
    root = spec.resolve_path(spec.data.root or "")
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
