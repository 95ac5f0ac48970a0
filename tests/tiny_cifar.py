"""Tiny CIFAR archives in the real format: the tar.gz layout and pickled batches torchvision reads."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile

import numpy as np

from autocnn.data.named import Archive

COARSE = [f"super{i}" for i in range(2)]


def _pickled(value: dict) -> bytes:
    return pickle.dumps(value, protocol=2)


def _images(n: int, labels: list[int], seed: int) -> np.ndarray:
    """(n, 3072) rows in CIFAR's channel-first order; each class a distinct colour."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, label % 3] += 150
    return images.reshape(n, 3072)


def _members(kind: str, per_class: int, n_classes: int) -> dict[str, bytes]:
    train_labels = [c for c in range(n_classes) for _ in range(per_class)]
    test_labels = [c for c in range(n_classes) for _ in range(max(1, per_class // 2))]
    if kind == "cifar10":
        names = [f"class{c}" for c in range(n_classes)]
        members = {"batches.meta": _pickled({"label_names": names})}
        chunks = np.array_split(np.arange(len(train_labels)), 5)
        data = _images(len(train_labels), train_labels, 0)
        for i, chunk in enumerate(chunks, start=1):
            members[f"data_batch_{i}"] = _pickled({"data": data[chunk], "labels": [train_labels[j] for j in chunk]})
        members["test_batch"] = _pickled({"data": _images(len(test_labels), test_labels, 1), "labels": test_labels})
        return members
    fine = [f"fine{c}" for c in range(n_classes)]
    meta = _pickled({"fine_label_names": fine, "coarse_label_names": COARSE})

    def batch(labels: list[int], seed: int) -> bytes:
        coarse = [label % len(COARSE) for label in labels]
        return _pickled({"data": _images(len(labels), labels, seed), "fine_labels": labels, "coarse_labels": coarse})

    return {"meta": meta, "train": batch(train_labels, 0), "test": batch(test_labels, 1)}


ORDER = {
    "cifar10": [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    ],
    "cifar100": ["train", "test", "meta"],
}
FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
FILENAME = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def tiny_archive(kind: str, *, per_class: int = 6, n_classes: int = 4) -> tuple[bytes, Archive]:
    """The archive's bytes and its facts (URL as torchvision has it, checksums of this build)."""
    members = _members(kind, per_class, n_classes)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ORDER[kind]:
            info = tarfile.TarInfo(f"{FOLDER[kind]}/{name}")
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    data = buffer.getvalue()
    archive = Archive(
        url=f"https://www.cs.toronto.edu/~kriz/{FILENAME[kind]}",
        filename=FILENAME[kind],
        md5=hashlib.md5(data).hexdigest(),
        folder=FOLDER[kind],
        members=tuple((name, hashlib.md5(members[name]).hexdigest()) for name in ORDER[kind]),
        size=len(data),
    )
    return data, archive
