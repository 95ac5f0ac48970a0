"""What `autocnn validate` says about the data itself: images per class and split, class
imbalance, and the same image in two splits.

An image that is both in train and in val or test makes every score on it a measure of memory,
not of generalisation, and folders assembled by hand (scraped, merged, re-exported) often hold
such copies. Exact copies are found by their bytes; re-encoded, resized or slightly recoloured
ones by a perceptual hash (imagehash's pHash): two images whose 64-bit hashes differ in at most
NEAR_BITS bits look the same to a person. Each pair is named by both files.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from autocnn.data.arrays import Dataset
from autocnn.data.cache import DataCache
from autocnn.data.folders import SPLITS, FileIndex

NEAR_BITS = 8  # of pHash's 64: re-saved, resized or lightly edited copies (imagededup allows 10)
IMBALANCE_WARN = 3.0  # largest / smallest class in train
PAIRS_NAMED = 20  # the rest are counted
ROWS_PER_CHUNK = 512  # of one split's hashes compared against another's at once (memory)


@dataclass(frozen=True)
class Duplicate:
    """One image found in two splits."""

    first: tuple[str, Path, int]  # (split, file, label)
    second: tuple[str, Path, int]
    distance: int  # pHash bits that differ
    identical: bool  # the same bytes


@dataclass(frozen=True)
class DataChecks:
    """Images per class and split, and what is worth a warning."""

    classes: list[str]
    counts: dict[str, list[int]]  # split -> images per class
    warnings: list[str] = field(default_factory=list)


def class_counts(data: Dataset) -> dict[str, list[int]]:
    """Decoded images per class for each split (what trains, not what was listed)."""
    splits = {"train": data.train, "val": data.val, "test": data.test}
    return {
        name: np.bincount(split.labels, minlength=data.num_classes).tolist()
        for name, split in splits.items()
        if split is not None
    }


def imbalance_warning(classes: list[str], train: list[int], *, metric: str) -> str | None:
    """Accuracy on imbalanced classes rewards predicting the large ones: say so, with the numbers."""
    largest, smallest = int(np.argmax(train)), int(np.argmin(train))
    ratio = train[largest] / max(train[smallest], 1)
    if ratio < IMBALANCE_WARN:
        return None
    hint = "; study.metric: val_macro_f1 weighs every class equally" if metric == "val_accuracy" else ""
    return (
        f"train: classes are imbalanced {ratio:.1f}x (largest '{classes[largest]}' {train[largest]} images, "
        f"smallest '{classes[smallest]}' {train[smallest]}){hint}"
    )


# --------------------------------------------------------------------------- duplicates across splits


def _fingerprint(path: Path) -> tuple[str, int] | None:
    """(SHA-256 of the bytes, 64-bit pHash) of one file; None if it cannot be read (named elsewhere)."""
    import imagehash
    from PIL import Image

    try:
        content = path.read_bytes()
        with Image.open(path) as img:
            img.draft("L", (64, 64))  # JPEG: decode small, the hash looks at 32x32 anyway
            bits = imagehash.phash(img).hash.flatten()
    except Exception:  # noqa: BLE001 - unreadable images are reported by the decoder
        return None
    return hashlib.sha256(content).hexdigest(), int.from_bytes(np.packbits(bits).tobytes(), "big")


def _fingerprints(files: list[tuple[str, Path, int]]) -> list[tuple[tuple[str, Path, int], str, int]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        prints = list(pool.map(lambda item: _fingerprint(item[1]), files))
    return [(item, fp[0], fp[1]) for item, fp in zip(files, prints, strict=True) if fp is not None]


def find_duplicates(index: FileIndex) -> list[Duplicate]:
    """Pairs of files in different splits that are the same image, closest first."""
    files = [(split, path, label) for split in SPLITS for path, label in index.files.get(split, [])]
    prints = _fingerprints(files)
    by_split = {split: [p for p in prints if p[0][0] == split] for split in SPLITS}
    found: list[Duplicate] = []
    for a, b in combinations(SPLITS, 2):
        found += _pairs(by_split[a], by_split[b])
    return sorted(found, key=lambda d: (not d.identical, d.distance, str(d.first[1])))


def _pairs(left: list[tuple[tuple[str, Path, int], str, int]], right: list) -> list[Duplicate]:
    """Every (left, right) pair within NEAR_BITS, compared in chunks on the hashes' bits."""
    if not left or not right:
        return []
    hashes = np.asarray([h for _, _, h in right], dtype=np.uint64)
    out: list[Duplicate] = []
    for start in range(0, len(left), ROWS_PER_CHUNK):
        chunk = left[start : start + ROWS_PER_CHUNK]
        mine = np.asarray([h for _, _, h in chunk], dtype=np.uint64)
        distances = np.bitwise_count(mine[:, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(distances <= NEAR_BITS), strict=True):
            (item, digest, _), (other, other_digest, _) = chunk[i], right[j]
            out.append(Duplicate(item, other, int(distances[i, j]), digest == other_digest))
    return out


def duplicate_lines(duplicates: list[Duplicate], classes: list[str], root: Path) -> list[str]:
    """One warning per pair (the first PAIRS_NAMED), naming both files relative to the data root."""

    def shown(item: tuple[str, Path, int]) -> str:
        split, path, _ = item
        try:
            return str(path.relative_to(root))
        except ValueError:
            return f"{path} ({split})"

    lines = []
    for dup in duplicates[:PAIRS_NAMED]:
        how = (
            "identical files"
            if dup.identical
            else f"near-duplicates: perceptual hashes {dup.distance} of 64 bits apart"
        )
        labels = {dup.first[2], dup.second[2]}
        if len(labels) > 1:
            how += f"; labelled {classes[dup.first[2]]} and {classes[dup.second[2]]}"
        lines.append(
            f"same image in {dup.first[0]} and {dup.second[0]}: {shown(dup.first)} and {shown(dup.second)} ({how})"
        )
    if len(duplicates) > PAIRS_NAMED:
        lines.append(f"{len(duplicates) - PAIRS_NAMED} more image pairs appear in two splits")
    if duplicates:
        lines.append(
            f"{len(duplicates)} image(s) appear in two splits: scores on them measure memory, not generalisation; "
            "remove one file of each pair"
        )
    return lines


def run_data_checks(cache: DataCache, *, metric: str) -> DataChecks:
    """Counts and imbalance (against the study's `metric`) for any source; duplicates across
    splits for image folders (files to name)."""
    data = cache.get()
    counts = class_counts(data)
    warnings: list[str] = []
    if warning := imbalance_warning(data.classes, counts["train"], metric=metric):
        warnings.append(warning)
    if cache.data.source == "imagefolder":
        root = Path(cache.data.root or "")
        warnings += duplicate_lines(find_duplicates(cache.index()), data.classes, root)
    return DataChecks(data.classes, counts, warnings)
