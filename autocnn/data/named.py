"""Datasets by name (`data.source: cifar10 | cifar100`): downloaded once, then read from a cache.

torchvision's dataset classes download the archive, check its MD5 and every extracted file's,
and read the pickled batches. autocnn adds what a shared cache needs: the download happens in a
private folder that is renamed into place only once every check passed, so an interrupted or
corrupt download leaves nothing behind that a later run could mistake for the dataset; an
offline machine fails in seconds, naming the dataset; and the cache folder is one per machine,
shared by every study (`AUTOCNN_DATA_HOME`, default `~/.cache/autocnn/datasets`).

`AUTOCNN_DATASET_MIRROR` (a base URL) fetches the same archives from a mirror instead of their
home sites; their checksums are still checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from autocnn.downloads import DownloadProgress, megabytes, offline_reason, watch_file
from autocnn.errors import DataError
from autocnn.files import remove_dead_leftovers

DATA_HOME_VARIABLE = "AUTOCNN_DATA_HOME"
MIRROR_VARIABLE = "AUTOCNN_DATASET_MIRROR"
STALL_TIMEOUT_S = 60.0  # a download that receives nothing for this long has failed
LABEL_SETS = ("fine", "coarse")


@dataclass(frozen=True)
class Archive:
    """Where a dataset's archive comes from and what its files must hash to (torchvision's values)."""

    url: str
    filename: str
    md5: str
    folder: str  # what the archive extracts to
    members: tuple[tuple[str, str], ...]  # (file in `folder`, md5): the batches and the meta file
    size: int  # bytes, for the progress bar


@dataclass(frozen=True)
class NamedDataset:
    """One name `data.source` accepts: the torchvision class that knows it, and its label sets."""

    name: str
    torchvision_class: str
    label_keys: dict[str, tuple[str, str]]  # label set -> (key in each batch, key in the meta file)
    about: str


NAMED: dict[str, NamedDataset] = {
    "cifar10": NamedDataset(
        "cifar10",
        "CIFAR10",
        {"fine": ("labels", "label_names")},
        "CIFAR-10: 60,000 32x32 colour images in 10 classes (50,000 train, 10,000 test)",
    ),
    "cifar100": NamedDataset(
        "cifar100",
        "CIFAR100",
        {"fine": ("fine_labels", "fine_label_names"), "coarse": ("coarse_labels", "coarse_label_names")},
        "CIFAR-100: 60,000 32x32 colour images in 100 classes or 20 superclasses (50,000 train, 10,000 test)",
    ),
}
ARCHIVE_BYTES = {"cifar10": 170_498_071, "cifar100": 169_001_437}
# Overrides of torchvision's archive facts by dataset name: a mirror that serves another build.
ARCHIVES: dict[str, Archive] = {}


def _torchvision_class(name: str) -> Any:
    from torchvision import datasets

    return getattr(datasets, NAMED[name].torchvision_class)


def archive_for(name: str) -> Archive:
    """torchvision's URL and checksums for `name` (or an override), with the mirror applied."""
    archive = ARCHIVES.get(name)
    if archive is None:
        cls = _torchvision_class(name)
        members = (*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]])
        archive = Archive(
            url=cls.url,
            filename=cls.filename,
            md5=cls.tgz_md5,
            folder=cls.base_folder,
            members=tuple((str(f), str(m)) for f, m in members),
            size=ARCHIVE_BYTES.get(name, 0),
        )
    mirror = os.environ.get(MIRROR_VARIABLE, "").strip()
    if mirror:
        archive = replace(archive, url=f"{mirror.rstrip('/')}/{archive.filename}")
    return archive


def data_home() -> Path:
    """The machine's dataset cache: AUTOCNN_DATA_HOME, else autocnn's folder in the user cache."""
    explicit = os.environ.get(DATA_HOME_VARIABLE, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "autocnn" / "datasets"


def dataset_dir(name: str) -> Path:
    return data_home() / name


def _pinned_class(name: str, archive: Archive) -> Any:
    """torchvision's class with the archive's URL and checksums: what it downloads and checks."""
    cls = _torchvision_class(name)
    members = [[file, md5] for file, md5 in archive.members]
    n_train = len(cls.train_list)
    meta = {**cls.meta, "filename": members[-1][0], "md5": members[-1][1]}
    attrs = {
        "url": archive.url,
        "filename": archive.filename,
        "tgz_md5": archive.md5,
        "base_folder": archive.folder,
        "train_list": members[:n_train],
        "test_list": members[n_train:-1],
        "meta": meta,
    }
    return type(f"Pinned{cls.__name__}", (cls,), attrs)


# --------------------------------------------------------------------------- the cache


def is_cached(name: str) -> bool:
    """Whether the extracted dataset is in the cache (checksums are checked when it is read)."""
    archive = archive_for(name)
    folder = dataset_dir(name) / archive.folder
    return all((folder / file).is_file() for file, _ in archive.members)


def fetch_dataset(
    name: str, *, say: Callable[[str], None] | None = None, progress: DownloadProgress | None = None
) -> Path:
    """The dataset's cache folder, downloading it first if it is not there yet.

    The download goes into a private folder beside the cache and is renamed into place after
    torchvision checked the archive and every file in it: a second process fetching at the same
    time, an interrupted download or a checksum mismatch never leaves a half-written dataset.
    """
    target = dataset_dir(name)
    remove_dead_leftovers(target.parent, f".{name}-download-")
    if is_cached(name):
        return target
    archive = archive_for(name)
    if reason := offline_reason(archive.url):
        raise DataError(
            f"data.source: {name} is not in the dataset cache ({target}) and cannot be downloaded: {reason}. "
            f"Run `autocnn data fetch {name} DIR` on a connected machine and copy {target} here "
            f"(or set {DATA_HOME_VARIABLE}), or use your own images with source: imagefolder"
        )
    if say is not None:
        say(f"downloading {name} ({megabytes(archive.size)}) from {archive.url} into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-download-{os.getpid()}-", dir=target.parent) as tmp:
        _download_into(name, archive, Path(tmp), progress)
        _move_into_place(Path(tmp) / archive.folder, target / archive.folder)
    return target


def _download_into(name: str, archive: Archive, folder: Path, progress: DownloadProgress | None) -> None:
    """torchvision's download, extraction and checks, in `folder`; any failure is a DataError."""
    cls = _pinned_class(name, archive)
    file = folder / archive.filename
    try:
        with _stall_timeout(), _quiet_stderr(progress is not None):
            with watch_file(file, f"downloading {name}", progress, total=archive.size or None):
                cls(root=str(folder), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - network, archive and checksum errors are all "not fetched"
        raise DataError(_download_failure(name, archive, file, exc)) from None


def _download_failure(name: str, archive: Archive, file: Path, exc: Exception) -> str:
    """What went wrong, in words: torchvision only says 'File not found or corrupted.'"""
    where = f"data.source: {name}: download from {archive.url} failed"
    if file.is_file() and "corrupted" in str(exc):
        received = file.stat().st_size
        if archive.size and received < archive.size:
            return f"{where}: the download stopped after {received} of {archive.size} bytes; nothing was kept"
        got = _md5(file)
        if got != archive.md5:
            return f"{where}: checksum mismatch for {archive.filename} (md5 {got}, expected {archive.md5}); nothing was kept"
    if isinstance(exc, RuntimeError) and "corrupted" in str(exc):
        return f"{where}: the extracted files do not match their checksums ({exc}); nothing was kept"
    return f"{where} ({exc.__class__.__name__}: {exc}); nothing was kept"


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _stall_timeout() -> Iterator[None]:
    """torchvision opens its URL without a timeout: a stalled server would hang the study forever."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(STALL_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


@contextmanager
def _quiet_stderr(quiet: bool) -> Iterator[None]:
    """torchvision draws its own bar on stderr; with a caller drawing ours it would be a second one."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _move_into_place(source: Path, target: Path) -> None:
    """One rename publishes the checked files; if another process got there first, keep theirs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(source, ignore_errors=True)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class NamedImages:
    """A named dataset as published: its train and test images, uint8 (N, 32, 32, 3)."""

    classes: list[str]
    train: tuple[np.ndarray, np.ndarray]  # images, labels
    test: tuple[np.ndarray, np.ndarray]
    archive_md5: str


def check_labels(name: str, labels: str | None) -> str:
    """The label set to use: `fine` unless asked; `coarse` exists for CIFAR-100 only."""
    chosen = labels or "fine"
    if chosen not in NAMED[name].label_keys:
        raise DataError(f"data.labels: {name} has only fine labels; remove labels: {chosen}")
    return chosen


def read_named(name: str, *, labels: str | None = None) -> NamedImages:
    """The cached dataset's images and labels (torchvision reads and checks the batches)."""
    label_set = check_labels(name, labels)
    archive = archive_for(name)
    root = dataset_dir(name)
    cls = _pinned_class(name, archive)
    try:
        train = cls(root=str(root), train=True, download=False)
        test = cls(root=str(root), train=False, download=False)
    except RuntimeError as exc:
        raise DataError(
            f"data.source: {name}: the cached files in {root / archive.folder} fail their checksums ({exc}); "
            f"delete that folder and run again to download it anew"
        ) from None
    batch_key, meta_key = NAMED[name].label_keys[label_set]
    folder = root / archive.folder
    classes = _meta(folder / cls.meta["filename"], meta_key)
    return NamedImages(
        classes=[str(c) for c in classes],
        train=(np.ascontiguousarray(train.data), _labels(folder, cls.train_list, batch_key)),
        test=(np.ascontiguousarray(test.data), _labels(folder, cls.test_list, batch_key)),
        archive_md5=archive.md5,
    )


def _unpickle(path: Path) -> Any:
    # The files passed torchvision's MD5 checks just before: the published batches, nothing else.
    with path.open("rb") as handle:
        return pickle.load(handle, encoding="latin1")  # noqa: S301


def _meta(path: Path, key: str) -> list[str]:
    return list(_unpickle(path)[key])


def _labels(folder: Path, files: list[list[str]], key: str) -> np.ndarray:
    """One label set from the batches, in torchvision's order: CIFAR-100 keeps coarse beside fine."""
    labels: list[int] = []
    for file, _ in files:
        labels.extend(_unpickle(folder / file)[key])
    return np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------- as files


def export_imagefolder(
    name: str,
    out: Path,
    *,
    labels: str | None = None,
    val: float = 0.2,
    seed: int = 0,
    say: Callable[[str], None] | None = None,
    progress: DownloadProgress | None = None,
    written: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """The dataset as PNG files in `out/train|val|test/<class>/`, for people who want the files.

    val is drawn from the training images exactly as a spec with `data.source: NAME`, the same
    `split.val` and seed draws it, so a study on the folder sees the same splits. The files are
    written into a folder beside `out` and renamed into place when all are there.
    """
    from PIL import Image

    from autocnn.data.folders import stratified_split

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not empty; give a new folder")
    fetch_dataset(name, say=say, progress=progress)
    named = read_named(name, labels=labels)
    parts = stratified_split(named.train[1], val=val, test=0.0, seed=seed, names=named.classes)
    splits = {part: (named.train[0][idx], named.train[1][idx], idx) for part, idx in parts.items()}
    splits["test"] = (named.test[0], named.test[1], np.arange(len(named.test[1])))
    total = sum(len(labels_) for _, labels_, _ in splits.values())
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(out.parent, f".{out.name}.partial-")
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    done = 0
    try:
        for part, (images, targets, numbers) in splits.items():
            folders = {c: partial / part / _folder_name(named.classes[c]) for c in range(len(named.classes))}
            for folder in folders.values():
                folder.mkdir(parents=True, exist_ok=True)
            for image, target, number in zip(images, targets, numbers, strict=True):
                Image.fromarray(image).save(folders[int(target)] / f"{int(number):05d}.png")
                done += 1
                if written is not None and (done % 500 == 0 or done == total):
                    written(done, total)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {part: len(targets) for part, (_, targets, _) in splits.items()}


def _folder_name(label: str) -> str:
    """A class name as a folder name: path separators and a leading dot would change its meaning."""
    cleaned = label.replace("/", "_").replace(os.sep, "_").lstrip(".")
    return cleaned or "_"
