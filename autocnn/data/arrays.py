"""Decoded images as the rest of autocnn sees them: uint8 arrays with labels, per split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    # (N, classes) float32 probabilities that training's loss aims at instead of `labels` (a
    # teacher's soft labels when distilling); everything else (sampling, weights, scores) reads `labels`.
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def loss_targets(self) -> np.ndarray:
        """What the training loss compares predictions with: soft targets if any, else the labels."""
        return self.labels if self.targets is None else self.targets


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
