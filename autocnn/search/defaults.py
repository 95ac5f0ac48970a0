"""The first trials of a new study: one known-good configuration per model family.

TPE learns from what it has seen; a study whose first trials are random draws (a learning rate
of 1e-2, strong augmentation, a two-block CNN) can spend its whole startup phase on models that
never leave chance. Starting from a sensible baseline per family gives the sampler a good point
to improve on and the user a reference row. The values (README, "How autocnn spends a budget"):

- custom CNN: deep enough that the last block sees a 2 px map (log2(size) - 1 blocks, at least
  3), 32 channels doubling per block, dropout 0.3, ReLU;
- AdamW at lr 1e-3, weight decay 1e-2, batch 32, cosine schedule, label smoothing 0.1;
- light augmentation: rotation up to 10 degrees, shift/zoom 0.1, mild colour jitter, nothing else;
- timm backbones: fine-tuned as a whole, backbone at a tenth of the head's learning rate.

Each value is moved inside the spec's range (the nearest choice, the nearest grid point), and
keys the spec fixes are not touched: a default never leaves the space the user wrote.
"""

from __future__ import annotations

import math
from typing import Any

from autocnn.models.catalog import CUSTOM_CNN, max_depth
from autocnn.search.space import sample_config
from autocnn.spec.schema import Spec
from autocnn.training.config import MODEL_PARAM

DEFAULT_ATTR = "autocnn.default"  # Optuna user attr and MLflow tag of an enqueued default trial

TRAIN = {
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "batch_size": 32,
    "scheduler": "cosine",
    "label_smoothing": 0.1,
    "early_stopping": 0,
    "precision": "auto",
}
CUSTOM_CNN_PARAMS = {"width": 32, "dropout": 0.3, "activation": "relu"}
BACKBONE = {
    "freeze": "none",
    "unfreeze_last": 1,
    "backbone_lr_mult": 0.1,
    "layer_decay": 1.0,
    "probe_first": True,
    "norm_stats": "pretrained",
    "dropout": 0.2,
    "hidden": 0,
    "activation": "relu",
}
AUGMENT = {
    "enabled": True,
    "rotate": 10.0,
    "shift_scale": 0.1,
    "color_jitter": 0.1,
    "random_resized_crop": 1.0,
    "hflip": 0.0,
    "vflip": 0.0,
    "gamma": 0.0,
    "blur": 0.0,
    "noise": 0.0,
    "cutout": 0.0,
}


def custom_cnn_depth(image_size: int) -> int:
    """Blocks that bring the image down to a 2 px map: as deep as the hand recipes that win."""
    return min(max(max_depth(image_size) - 1, 3), max_depth(image_size))


def wanted(name: str, spec: Spec) -> Any:
    """The default for one dotted parameter name; None: no opinion (the spec's first value)."""
    section, _, key = name.rpartition(".")
    if name == "train.epochs":
        return math.inf  # the longest the spec allows: too few steps is the usual failure
    if section == "train":
        return TRAIN.get(key)
    if section == "augment":
        return AUGMENT.get(key)
    if section == f"models.{CUSTOM_CNN}":
        return custom_cnn_depth(spec.data.image_size) if key == "depth" else CUSTOM_CNN_PARAMS.get(key)
    if section.startswith("models."):
        return BACKBONE.get(key)
    return None


class DefaultsTrial:
    """Answers the search space's suggestions with the defaults, moved inside the spec's ranges.

    Duck-types the three `suggest_*` calls of an Optuna trial, so the spec's conditional space
    (model, then that model's keys; augmentation only when enabled) is walked by the same code
    that samples real trials, and `params` comes out exactly as Optuna would record it.
    """

    def __init__(self, spec: Spec, model: str) -> None:
        self.spec = spec
        self.model = model
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        value = self.model if name == MODEL_PARAM else nearest_choice(wanted(name, self.spec), choices)
        self.params[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        value = int(round(within(wanted(name, self.spec), low, high, step)))
        self.params[name] = value
        return value

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        value = float(within(wanted(name, self.spec), low, high, step))
        self.params[name] = value
        return value


def nearest_choice(value: Any, choices: list[Any]) -> Any:
    if value in choices:
        return choices[choices.index(value)]
    numbers = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and numbers:
        if math.isinf(value):
            return max(numbers) if value > 0 else min(numbers)
        return min(numbers, key=lambda c: abs(math.log(c / value)) if c > 0 and value > 0 else abs(c - value))
    return choices[0]


def within(value: Any, low: float, high: float, step: float | None) -> float:
    """`value` clipped to [low, high] and snapped to the grid; no opinion means low."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return low
    clipped = min(max(float(value), low), high)
    if step:
        clipped = low + round((clipped - low) / step) * step
        clipped = min(clipped, high)
    return clipped


def default_trials(spec: Spec) -> list[dict[str, Any]]:
    """Optuna params of one default configuration per model family, in the spec's model order."""
    out = []
    for model in spec.models.spaces():
        trial = DefaultsTrial(spec, model)
        sample_config(trial, spec)  # type: ignore[arg-type]
        out.append(trial.params)
    return out


def enqueue_defaults(study: Any, spec: Spec) -> int:
    """Queue the defaults as a new study's first trials; a study that has trials is left alone."""
    if study.get_trials(deepcopy=False):
        return 0
    params = default_trials(spec)
    for p in params:
        study.enqueue_trial(p, user_attrs={DEFAULT_ATTR: p[MODEL_PARAM]})
    return len(params)
