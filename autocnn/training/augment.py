"""Training-time augmentation: spec names -> albumentations 2.x transforms, seeded and logged.

The only module that imports albumentations. Augmentation runs on the cached uint8 HWC images and
returns uint8, so normalisation stays in one place (the batcher): validation and test images never
pass through here, they are only normalised. Imported lazily (by `study.run_trial`), so
`autocnn --help` never pays for torch or albumentations.
"""

from __future__ import annotations

import os

# Set before the import: albumentations otherwise makes a blocking update check over the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import math  # noqa: E402
from collections.abc import Callable, Iterator, Mapping, Sequence  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Sampler  # noqa: E402
from torch.utils.data import Dataset as TorchDataset  # noqa: E402

from autocnn.training.sampling import epoch_order  # noqa: E402

if TYPE_CHECKING:
    from autocnn.data.arrays import Split
    from autocnn.models.catalog import Preprocess

# (every spec value by name, image size) -> the transform, or None when its values mean "off".
Builder = Callable[[Mapping[str, float], int], "A.BasicTransform | None"]

# OpenCV's own thread pool buys nothing on images this small and is not fork-safe: a DataLoader
# worker forked after the pool started deadlocks in its first cv2 call. Sequential cv2 avoids both.
cv2.setNumThreads(0)

# Mirrored borders keep rotated/shifted images free of black wedges the model could learn from.
BORDER = cv2.BORDER_REFLECT_101


def _random_resized_crop(v: Mapping[str, float], size: int) -> A.BasicTransform | None:
    min_area = v["random_resized_crop"]
    return A.RandomResizedCrop(size=(size, size), scale=(min_area, 1.0), p=1.0) if min_area < 1 else None


def _affine(v: Mapping[str, float], _size: int) -> A.BasicTransform | None:
    """rotate and shift_scale as one warp: one interpolation, and half the cost of two Affines."""
    degrees, amount = v["rotate"], v["shift_scale"]
    if degrees <= 0 and amount <= 0:
        return None
    return A.Affine(
        rotate=(-degrees, degrees),
        translate_percent=(-amount, amount),
        scale=(1 - amount, 1 + amount),
        border_mode=BORDER,
        p=1.0,
    )


def _hflip(v: Mapping[str, float], _size: int) -> A.BasicTransform | None:
    return A.HorizontalFlip(p=v["hflip"]) if v["hflip"] > 0 else None


def _vflip(v: Mapping[str, float], _size: int) -> A.BasicTransform | None:
    return A.VerticalFlip(p=v["vflip"]) if v["vflip"] > 0 else None


def _color_jitter(v: Mapping[str, float], _size: int) -> A.BasicTransform | None:
    s = v["color_jitter"]
    return A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=s / 8, p=1.0) if s > 0 else None


def _gamma(v: Mapping[str, float], _size: int) -> A.BasicTransform | None:
    return A.RandomGamma(gamma_limit=(80, 120), p=v["gamma"]) if v["gamma"] > 0 else None


def _blur(v: Mapping[str, float], _size: int) -> A.BasicTransform | None:
    p = v["blur"]
    return A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2), p=p) if p > 0 else None


def _noise(v: Mapping[str, float], _size: int) -> A.BasicTransform | None:
    return A.GaussNoise(std_range=(0.02, 0.1), p=v["noise"]) if v["noise"] > 0 else None


def _cutout(v: Mapping[str, float], _size: int) -> A.BasicTransform | None:
    if v["cutout"] <= 0:
        return None
    return A.CoarseDropout(
        num_holes_range=(1, 4),
        hole_height_range=(0.1, 0.25),
        hole_width_range=(0.1, 0.25),
        fill=0,
        p=v["cutout"],
    )


# One dict per family; the pipeline runs geometry, then colour, then occlusion (cutout last, so
# the holes are not warped or re-coloured). Names sharing a builder share one transform.
GEOMETRIC: dict[str, Builder] = {
    "random_resized_crop": _random_resized_crop,
    "rotate": _affine,
    "shift_scale": _affine,
    "hflip": _hflip,
    "vflip": _vflip,
}
PHOTOMETRIC: dict[str, Builder] = {
    "color_jitter": _color_jitter,
    "gamma": _gamma,
    "blur": _blur,
    "noise": _noise,
}
OCCLUSION: dict[str, Builder] = {"cutout": _cutout}
AUGMENTS: dict[str, Builder] = {**GEOMETRIC, **PHOTOMETRIC, **OCCLUSION}
OFF: dict[str, float] = {"random_resized_crop": 1.0}  # every other name is off at 0


def build_train_transform(augment: dict[str, Any], *, image_size: int, seed: int) -> A.Compose | None:
    """The trial's pipeline (uint8 HWC in, uint8 HWC out), or None when it would do nothing.

    Args:
        augment: `TrialConfig.augment`: resolved values keyed by spec name, plus `enabled`.
        image_size: the side of the cached square images, kept by every op.
        seed: the pipeline's seed; the same seed and values give the same images.
    """
    if not augment or not augment.get("enabled", True):
        return None
    unknown = sorted(set(augment) - set(AUGMENTS) - {"enabled"})
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; supported: {', '.join(AUGMENTS)}")
    values = {name: float(augment.get(name, OFF.get(name, 0.0))) for name in AUGMENTS}
    built = (build(values, image_size) for build in dict.fromkeys(AUGMENTS.values()))
    ops = [op for op in built if op is not None]
    if not ops:
        return None
    # strict=True: an argument albumentations does not know (a 1.x name) fails instead of being
    # silently dropped with a warning.
    pipeline = A.Compose(ops, strict=True, seed=seed)
    reseed(pipeline, seed)
    return pipeline


def reseed(pipeline: A.Compose, seed: int) -> None:
    """Give every op its own random stream derived from `seed`.

    `Compose.set_random_seed` hands every op the *same* seed, so two ops with equal probability
    (hflip 0.5, vflip 0.5) then always fire together; distinct child seeds keep them independent.
    """
    seeds = np.random.SeedSequence(seed).generate_state(len(pipeline.transforms) + 1)
    pipeline.set_random_seed(int(seeds[0]))
    for op, op_seed in zip(pipeline.transforms, seeds[1:], strict=True):
        op.set_random_seed(int(op_seed))


def describe(pipeline: A.Compose) -> dict[str, Any]:
    """albumentations' own serialisation (`A.from_dict` rebuilds it); it omits the seed."""
    return A.to_dict(pipeline)


def augment_batch(pipeline: A.Compose | None, images: np.ndarray, *, seed: int) -> np.ndarray:
    """Augment (N, H, W, 3) uint8 images with the pipeline reseeded to `seed` first."""
    if pipeline is None:
        return images.copy()
    reseed(pipeline, seed)
    out = np.empty_like(images)
    for j, image in enumerate(images):
        out[j] = pipeline(image=image)["image"]
    return out


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """One seed per (trial seed, epoch, batch): identical whichever worker augments the batch."""
    return int(np.random.SeedSequence([seed, epoch, batch]).generate_state(1)[0])


# --------------------------------------------------------------------------- batches

# DataLoader workers for augmentation. benchmarks/augment_loader.py on the 2-core machine: 0, 1
# and 2 workers gave the same data throughput (~700 img/s, heaviest pipeline, 32 and 96 px) and no
# consistent training gain, as a worker competes with training's own 2 threads; so augment
# in-process. Batches are identical for any count, so a machine with spare cores can raise it.
N_WORKERS = 0


class _EpochOrder(Sampler):
    """Yields (epoch, batch number, indices) in the order TensorBatches draws for that epoch."""

    def __init__(self, labels: np.ndarray, *, batch_size: int, seed: int, drop_last: bool, balanced: bool) -> None:
        self.labels = torch.from_numpy(labels)
        self.n, self.batch_size, self.seed, self.drop_last = len(labels), batch_size, seed, drop_last
        self.balanced = balanced
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = epoch_order(self.labels, gen, balanced=self.balanced)
        for b in range(len(self)):
            yield self.epoch, b, order[b * self.batch_size : (b + 1) * self.batch_size]


class _AugmentedImages(TorchDataset):
    """Indexed by a whole batch key, so one call augments a batch: no per-image collate."""

    def __init__(self, split: Split, pipeline: A.Compose | None, *, seed: int) -> None:
        self.images, self.targets = split.images, split.loss_targets
        self.pipeline, self.seed = pipeline, seed

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, batch, idx = key
        index = idx.numpy()
        images = augment_batch(self.pipeline, self.images[index], seed=batch_seed(self.seed, epoch, batch))
        return torch.from_numpy(images), torch.from_numpy(self.targets[index])


def _init_worker(_worker_id: int) -> None:
    # The worker shares the cores with training: more than one thread only oversubscribes.
    # No RNG reseed needed: every batch reseeds the pipeline from its own key.
    torch.set_num_threads(1)


class AugmentedBatches:
    """Training batches like `TensorBatches` (same order and normalisation), augmented on the fly.

    Each batch reseeds the pipeline from (seed, epoch, batch), which avoids the DataLoader trap of
    cloned RNGs (every worker, every epoch augmenting alike): batches differ per epoch and per
    batch, and are identical for 0, 1 or 2 workers, so a trial is reproducible from its seed.
    """

    def __init__(
        self,
        split: Split,
        pre: Preprocess,
        pipeline: A.Compose | None,
        *,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        device: torch.device | None = None,
        balanced: bool = False,
    ) -> None:
        self.device = device or torch.device("cpu")
        drop_last = len(split) > batch_size  # a last batch of 1 breaks BatchNorm in training
        self.order = _EpochOrder(split.labels, batch_size=batch_size, seed=seed, drop_last=drop_last, balanced=balanced)
        self.loader = DataLoader(
            _AugmentedImages(split, pipeline, seed=seed),
            sampler=self.order,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            worker_init_fn=_init_worker if num_workers > 0 else None,
            pin_memory=self.device.type == "cuda",
        )
        mean = torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0
        self.shift, self.scale = mean.to(self.device), (1.0 / std).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Order and augmentation depend on the epoch only (the Trainer sets it before each one),
        so a resumed trial sees the batches an uninterrupted one would have."""
        self.order.epoch = epoch

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            # NHWC uint8 viewed as NCHW is channels_last already, as in TensorBatches.
            x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            yield (x - self.shift) * self.scale, labels.to(self.device, non_blocking=True)


# --------------------------------------------------------------------------- the picture


def grid_figure(split: Split, pipeline: A.Compose, *, classes: Sequence[str], seed: int, n_images: int = 16) -> Any:
    """A 4x4 grid of augmented training images, so a user sees what a trial trained on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autocnn.figures import quiet_figure_class

    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(split), size=min(n_images, len(split)), replace=False))
    images = augment_batch(pipeline, split.images[index], seed=seed)
    cols = math.ceil(math.sqrt(len(index)))
    rows = math.ceil(len(index) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2 * cols, 2 * rows + 0.4), dpi=100, squeeze=False, FigureClass=quiet_figure_class()
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, split.labels[index], strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(str(classes[int(label)]), fontsize=9)
    fig.suptitle(f"Augmented training images (seed {seed})", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig
