"""The methods a practitioner would use instead of a search, each given the same images and budget.

Every baseline learns from train + val (the searches' finalize refits on both, so the baselines
see the same labelled images) and trains in plain fp32 PyTorch, as a hand-written recipe on a
CPU would. They share autocnn's decoded images, its augmentation pipeline and its training loop,
so a difference in the table comes from what each method decides, not from another data path.

- fixed CNN: the seeds' hand recipe (a 6-block CNN, AdamW, cosine, 15 epochs) with a standard
  augmentation (horizontal flip where the images allow it, small shifts);
- linear probe: scikit-learn's logistic regression on the pretrained backbone's pooled features,
  C chosen on val, then refitted on train + val;
- fixed fine-tune: the pretrained backbone with a new head, all layers trained with AdamW for a
  fixed number of epochs at the largest input size the budget allows, ImageNet normalisation.

A fixed recipe's epochs are fixed numbers, cut to what the budget allows: a few batches are
timed first, and no recipe plans more epochs than fit in its budget.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from autocnn.data.arrays import Dataset, Split
    from autocnn.models.catalog import Preprocess

Log = Callable[[str], None]
DataAt = Callable[[int], "Dataset"]  # the regime's images decoded at a given side, train/val/test

FIXED_CHANNELS = (64, 128, 256, 320, 256, 128)
FIXED_DROPOUT = 0.34
FIXED_HIDDEN = 128
FIXED_LEAK = 0.1
FIXED_EPOCHS = 15
FIXED_BATCH = 32
FIXED_LR = 1e-3
FIXED_WEIGHT_DECAY = 1e-2

FINETUNE_EPOCHS = 10
FINETUNE_MIN_EPOCHS = 5  # an input size is affordable when this many epochs fit in the budget
FINETUNE_BATCH = 32
FINETUNE_LR = 1e-3  # of 3e-4 and 1e-3, the better on seed 0's val images (train only, 128 px, 5 epochs), before any run
FINETUNE_WEIGHT_DECAY = 1e-2
FINETUNE_SIZES = (64, 96, 128, 160, 224)  # ascending; 224 is efficientnet_lite0's pretrained size

PROBE_C = (0.01, 0.1, 1.0, 10.0)
PROBE_EXTRACT_SHARE = 0.5  # the probe's size is the largest whose train + val features take this share of the budget
TIMED_BATCHES = 3  # after one untimed batch


@dataclass(frozen=True)
class BaselineOutcome:
    """One baseline on one regime and seed; test accuracy is what the method ships."""

    test_accuracy: float
    seconds: float  # within the budget: calibration, feature extraction and training
    epochs: int | None = None
    image_size: int | None = None
    choice: str = ""  # what the method decided (C, epochs cut by the budget, ...)


# --------------------------------------------------------------------------- shared parts


def pooled_blocks(image_size: int, blocks: int) -> list[bool]:
    """Max-pool after a block only while the pooled map keeps >= 2 px: one pool more would leave
    1 px, where a 3x3 conv sees nothing but its centre tap. At 28 px: after blocks 1-3."""
    out, side = [], image_size
    for _ in range(blocks):
        out.append(side // 2 >= 2)
        side = side // 2 if out[-1] else side
    return out


def fixed_cnn_model(num_classes: int, image_size: int) -> nn.Module:
    """The hand recipe a practitioner would try first: deep and wide, regularised, no search."""
    from torch import nn

    layers: list[nn.Module] = []
    channels_in = 3
    for channels, pool in zip(FIXED_CHANNELS, pooled_blocks(image_size, len(FIXED_CHANNELS)), strict=True):
        layers += [
            nn.Conv2d(channels_in, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(FIXED_LEAK),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        channels_in = channels
    head = [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(FIXED_DROPOUT),
        nn.Linear(channels_in, FIXED_HIDDEN),
        nn.LeakyReLU(FIXED_LEAK),
        nn.Linear(FIXED_HIDDEN, num_classes),
    ]
    return nn.Sequential(*layers, *head)


def train_and_val(data: Dataset) -> Split:
    """The images every method may learn from once its choices are made."""
    from autocnn.data.arrays import Split

    return Split(
        np.concatenate([data.train.images, data.val.images]), np.concatenate([data.train.labels, data.val.labels])
    )


def augmented_batches(
    split: Split, pre: Preprocess, augment: dict[str, Any], *, image_size: int, batch_size: int, seed: int
) -> Any:
    """autocnn's own augmenting loader, so a recipe's augmentation is the searches' at the same values."""
    from autocnn.training.augment import AugmentedBatches, build_train_transform

    pipeline = build_train_transform(augment, image_size=image_size, seed=seed)
    return AugmentedBatches(split, pre, pipeline, batch_size=batch_size, seed=seed)


def fp32_settings(epochs: int, lr: float, weight_decay: float) -> Any:
    from autocnn.training.loop import TrainSettings

    return TrainSettings(epochs=epochs, lr=lr, weight_decay=weight_decay, scheduler="cosine", precision="fp32")


def seconds_per_epoch(model: nn.Module, batches: Any, *, lr: float, weight_decay: float) -> float:
    """One untimed and TIMED_BATCHES timed training steps on a copy, scaled to a whole epoch."""
    from autocnn.training.loop import Trainer, pick_device

    trainer = Trainer(
        copy.deepcopy(model), fp32_settings(1, lr, weight_decay), steps_per_epoch=len(batches), device=pick_device()
    )
    batches.set_epoch(0)
    taken: list[Any] = []
    for i, batch in enumerate(batches):
        taken.append(batch)
        if i >= TIMED_BATCHES:
            break
    trainer.train_one_epoch(taken[:1])
    started = time.perf_counter()
    trainer.train_one_epoch(taken[1:])
    per_batch = (time.perf_counter() - started) / max(len(taken) - 1, 1)
    return per_batch * len(batches)


def epochs_within(budget_s: float, spent_s: float, epoch_s: float, planned: int) -> int:
    """The planned epochs, or as many as the rest of the budget holds (at least one)."""
    return max(1, min(planned, int((budget_s - spent_s) // max(epoch_s, 1e-9))))


def test_accuracy(model: nn.Module, data: Dataset, pre: Preprocess) -> float:
    from autocnn.training.loop import TensorBatches, Trainer, pick_device

    assert data.test is not None  # every benchmark regime has a test split
    device = pick_device()
    trainer = Trainer(model, fp32_settings(1, 1e-3, 0.0), steps_per_epoch=1, device=device)
    evaluation = trainer.evaluate(TensorBatches(data.test, pre, batch_size=256, shuffle=False, device=device))
    return float((evaluation.preds == evaluation.labels).mean())


def train_fixed_epochs(model: nn.Module, batches: Any, settings: Any) -> None:
    """Every planned epoch, no validation: a fixed recipe ships the weights training ends with."""
    from autocnn.training.loop import Trainer, pick_device

    trainer = Trainer(model, settings, steps_per_epoch=len(batches), device=pick_device())
    for epoch in range(settings.epochs):
        batches.set_epoch(epoch)
        trainer.train_one_epoch(batches)


# --------------------------------------------------------------------------- the fixed CNN


def run_fixed_cnn(
    data_at: DataAt, image_size: int, *, augment: dict[str, Any], seed: int, budget_s: float, log: Log
) -> BaselineOutcome:
    """The seeds' CNN recipe with a standard augmentation, on train + val, epochs cut to the budget."""
    import torch

    from autocnn.models.catalog import Preprocess

    started = time.perf_counter()
    torch.manual_seed(seed)
    data = data_at(image_size)
    pre = Preprocess(image_size=image_size)
    split = train_and_val(data)
    batches = augmented_batches(split, pre, augment, image_size=image_size, batch_size=FIXED_BATCH, seed=seed)
    model = fixed_cnn_model(data.num_classes, image_size)
    epoch_s = seconds_per_epoch(model, batches, lr=FIXED_LR, weight_decay=FIXED_WEIGHT_DECAY)
    epochs = epochs_within(budget_s, time.perf_counter() - started, epoch_s, FIXED_EPOCHS)
    log(f"    fixed CNN: {epochs} epochs of ~{epoch_s:.1f} s at {image_size} px")
    train_fixed_epochs(model, batches, fp32_settings(epochs, FIXED_LR, FIXED_WEIGHT_DECAY))
    seconds = time.perf_counter() - started
    cut = "" if epochs == FIXED_EPOCHS else f" (budget cut {FIXED_EPOCHS})"
    return BaselineOutcome(test_accuracy(model, data, pre), seconds, epochs, image_size, f"{epochs} epochs{cut}")


# --------------------------------------------------------------------------- the backbone baselines


def pretrained_backbone(name: str, num_classes: int) -> nn.Module:
    """timm's model with its ImageNet weights from the local hub cache and a new head."""
    import timm

    from autocnn.models.hub import use_offline_hub

    use_offline_hub()
    return timm.create_model(name, pretrained=True, num_classes=num_classes)


def imagenet_preprocess(name: str, image_size: int) -> Preprocess:
    """The backbone's own mean/std (timm's data config), at the chosen side."""
    from autocnn.models.build import preprocess_for

    return preprocess_for(name, {"image_size": image_size}, image_size=image_size)


def largest_affordable(sizes: Sequence[int], seconds_at: Callable[[int], float], limit_s: float) -> int:
    """The largest size whose cost fits `limit_s`; sizes are tried in ascending order and the
    first that does not fit ends the search (cost grows with the side), the smallest always fits."""
    chosen = sizes[0]
    for size in sizes:
        if seconds_at(size) > limit_s and size != sizes[0]:
            break
        chosen = size
    return chosen


def run_fixed_finetune(
    data_at: DataAt, backbone: str, *, augment: dict[str, Any], seed: int, budget_s: float, log: Log
) -> BaselineOutcome:
    """All layers of the pretrained backbone, AdamW, cosine, fixed epochs, at the largest
    affordable input size: the recipe the seeds used to reach their best results."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(seed)
    num_classes = data_at(FINETUNE_SIZES[0]).num_classes
    model = pretrained_backbone(backbone, num_classes)
    epoch_seconds: dict[int, float] = {}

    def epoch_cost(size: int) -> float:
        split = train_and_val(data_at(size))
        pre = imagenet_preprocess(backbone, size)
        batches = augmented_batches(split, pre, augment, image_size=size, batch_size=FINETUNE_BATCH, seed=seed)
        epoch_seconds[size] = seconds_per_epoch(model, batches, lr=FINETUNE_LR, weight_decay=FINETUNE_WEIGHT_DECAY)
        return epoch_seconds[size] * FINETUNE_MIN_EPOCHS

    size = largest_affordable(FINETUNE_SIZES, epoch_cost, budget_s - (time.perf_counter() - started))
    data, pre = data_at(size), imagenet_preprocess(backbone, size)
    split = train_and_val(data)
    batches = augmented_batches(split, pre, augment, image_size=size, batch_size=FINETUNE_BATCH, seed=seed)
    epochs = epochs_within(budget_s, time.perf_counter() - started, epoch_seconds[size], FINETUNE_EPOCHS)
    log(f"    fixed fine-tune: {epochs} epochs of ~{epoch_seconds[size]:.1f} s at {size} px")
    train_fixed_epochs(model, batches, fp32_settings(epochs, FINETUNE_LR, FINETUNE_WEIGHT_DECAY))
    seconds = time.perf_counter() - started
    cut = "" if epochs == FINETUNE_EPOCHS else f" (budget cut {FINETUNE_EPOCHS})"
    return BaselineOutcome(test_accuracy(model, data, pre), seconds, epochs, size, f"{epochs} epochs at {size} px{cut}")


def pooled_features(body: nn.Module, split: Split, pre: Preprocess) -> np.ndarray:
    """The backbone's pooled pre-logits features of every image, in eval mode, fp32."""
    import torch

    from autocnn.training.loop import TensorBatches

    out = []
    body.eval()
    with torch.no_grad():
        for x, _ in TensorBatches(split, pre, batch_size=128, shuffle=False):
            out.append(body(x.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(out)


def extraction_seconds(body: nn.Module, split: Split, pre: Preprocess, images: int) -> float:
    """Seconds to extract `images` images' features, timed on one batch after an untimed one."""
    from autocnn.data.arrays import Split as SplitType

    head = SplitType(split.images[:32], split.labels[:32])
    pooled_features(body, head, pre)
    started = time.perf_counter()
    pooled_features(body, head, pre)
    return (time.perf_counter() - started) / len(head) * images


def fit_probe(train: tuple[np.ndarray, np.ndarray], c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(*train)


def choose_c(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(C, val accuracy): the best of PROBE_C on val; a tie goes to the stronger regularisation."""
    scores = [(float(fit_probe(train, c).score(*val)), -i) for i, c in enumerate(PROBE_C)]
    best_score, neg_index = max(scores)
    return PROBE_C[-neg_index], best_score


def run_linear_probe(data_at: DataAt, backbone: str, *, seed: int, budget_s: float, log: Log) -> BaselineOutcome:
    """Logistic regression on the frozen pretrained features at the largest affordable size;
    C is chosen on val, then the probe is refitted on train + val."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(seed)
    body = pretrained_backbone(backbone, 0).to(memory_format=torch.channels_last)

    def extraction_cost(size: int) -> float:
        data = data_at(size)
        images = len(data.train) + len(data.val)
        return extraction_seconds(body, data.train, imagenet_preprocess(backbone, size), images)

    limit = budget_s * PROBE_EXTRACT_SHARE - (time.perf_counter() - started)
    size = largest_affordable(FINETUNE_SIZES, extraction_cost, limit)
    data, pre = data_at(size), imagenet_preprocess(backbone, size)
    train = (pooled_features(body, data.train, pre), data.train.labels)
    val = (pooled_features(body, data.val, pre), data.val.labels)
    c, val_accuracy = choose_c(train, val)
    probe = fit_probe((np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])), c)
    seconds = time.perf_counter() - started
    log(f"    linear probe: {size} px features, C {c:g} (val accuracy {val_accuracy:.3f}), {seconds:.0f} s")
    assert data.test is not None
    accuracy = float(probe.score(pooled_features(body, data.test, pre), data.test.labels))
    return BaselineOutcome(accuracy, seconds, None, size, f"C {c:g} at {size} px")


def outcome_fields(outcome: BaselineOutcome) -> dict[str, Any]:
    """What a run record keeps of a baseline's outcome."""
    return {
        "test_accuracy": outcome.test_accuracy,
        "train_seconds": outcome.seconds,
        "epochs": outcome.epochs,
        "image_size": outcome.image_size,
        "choice": outcome.choice,
    }
