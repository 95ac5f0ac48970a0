"""Finding the images: an image folder (by class, or pre-split into train/val/test) listed once,
every file that is not loaded named with its reason, and the stratified split by the spec's seed.

Splits depend only on the file list and the seed, so every trial and every resume sees the same
train/val/test images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autocnn.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
ProgressFn = Callable[[int, int], None]

# Why a file found under the data root is not loaded. Ignored: a rule says it is no image of a
# class. Skipped: it should have been one but cannot be read.
HIDDEN = "hidden"
NOT_AN_IMAGE = "not an image suffix"  # IMAGE_SUFFIXES: named in the error for a class folder without images
OUTSIDE_CLASSES = "not inside a class folder"
NOT_A_SPLIT = "not train/, val/ or test/"
NOT_A_FILE = "not a regular file"
SYMLINKED_FOLDER = "symlinked sub-folder, not followed"
NAMES_PER_NOTE = 20


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
