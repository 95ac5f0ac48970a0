"""Imbalanced classes: the order a training epoch draws images in, and the loss's class weights.

A rare class that appears in one batch of twenty teaches the model little and costs it little;
both answers here give it the weight of a common one. `train.sampler: balanced` draws each epoch's
images with replacement, every class equally likely, so the epoch keeps its length (and the
budget its step count); `train.class_weights: balanced` keeps the images and weighs each class's
loss by n / (classes x count), scikit-learn's "balanced" rule. Either way validation is untouched:
its loss and metrics judge the model as it will be used.
"""

from __future__ import annotations

import numpy as np
import torch

from autocnn.training.config import BALANCED


def class_counts(labels: np.ndarray | torch.Tensor, num_classes: int | None = None) -> np.ndarray:
    """Images per class, classes absent from `labels` included as 0 up to `num_classes`."""
    values = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return np.bincount(values.astype(np.int64), minlength=num_classes or 0)


def epoch_order(labels: torch.Tensor, generator: torch.Generator, *, balanced: bool) -> torch.Tensor:
    """Indices of one epoch's images: a permutation, or with `balanced` a class-even draw.

    The permutation is the plain shuffle every batch source has always used, so a study that does
    not balance sees exactly the batches it saw before; the balanced draw comes from the same
    seeded generator, so it is reproducible and a resumed trial sees the same batches.
    """
    n = len(labels)
    if not balanced:
        return torch.randperm(n, generator=generator)
    counts = torch.from_numpy(class_counts(labels)).double()
    per_image = 1.0 / counts[labels.cpu().long()]
    return torch.multinomial(per_image, n, replacement=True, generator=generator)


def loss_weights(mode: str, labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """The training loss's per-class weights: None for `none`, inverse frequency for `balanced`.

    A class with no training image gets weight 0 rather than infinity: it has nothing to weigh.
    """
    if mode != BALANCED:
        return None
    counts = class_counts(labels, num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)
