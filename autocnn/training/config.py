"""One trial's configuration as plain values: what training reads, never a Range or Choices.

The search fills it from Optuna's suggestions (autocnn.search.space); finalize rebuilds it from a
trial's stored params. A sampled key that no field takes fails loudly here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from autocnn.spec.objectives import Objective

MODEL_PARAM = "model"
BALANCED = "balanced"  # train.class_weights and train.sampler: every class counts the same
Section = TypeVar("Section")


def typed(cls: type[Section], values: dict[str, Any], where: str) -> Section:
    """A sampled section as its dataclass: a key the spec accepts but no field takes fails here,
    loudly, instead of being sampled, logged and then ignored."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"{where}: {', '.join(unknown)} sampled but not read by {cls.__name__}")
    return cls(**values)


@dataclass(frozen=True)
class TrainConfig:
    """train.*: epochs and patience go to the budget, batch_size to the batches, the rest to the Trainer."""

    epochs: int | str  # a number, or "auto"
    batch_size: int
    lr: float
    weight_decay: float
    scheduler: str
    early_stopping: int
    label_smoothing: float
    precision: str
    class_weights: str = "none"  # "balanced": the loss weighs classes by inverse frequency
    sampler: str = "shuffle"  # "balanced": batches draw every class equally often


@dataclass(frozen=True)
class AugmentConfig:
    """augment.*: all off unless the trial turns augmentation on (autocnn.training.augment reads them)."""

    enabled: bool = False
    hflip: float = 0.0
    vflip: float = 0.0
    rotate: float = 0.0
    shift_scale: float = 0.0
    random_resized_crop: float = 1.0
    color_jitter: float = 0.0
    gamma: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    cutout: float = 0.0
    cached_views: int = 0  # frozen backbones: fixed augmented views per image (autocnn.training.features)

    def as_dict(self) -> dict[str, Any]:
        """What was sampled: a trial without augmentation samples (and logs) only `enabled`."""
        return asdict(self) if self.enabled else {"enabled": False}

    def ops(self) -> dict[str, Any]:
        """The image operations alone, as `autocnn.training.augment` builds them: how many views are
        cached is no operation on an image."""
        return {key: value for key, value in self.as_dict().items() if key != "cached_views"}


@dataclass(frozen=True)
class CustomCNNConfig:
    """models.custom_cnn.*: the arguments of autocnn.models.custom_cnn.CustomCNN."""

    depth: int
    width: int
    dropout: float
    activation: str


@dataclass(frozen=True)
class HeadConfig:
    """models.<backbone>.head.*: an MLP head on the backbone's pooled features."""

    hidden: int
    activation: str
    dropout: float


@dataclass(frozen=True)
class TimmConfig:
    """models.<backbone>.*: what autocnn.models.backbones builds, freezes and resizes."""

    pretrained: bool | str
    freeze: str
    unfreeze_last: int
    backbone_lr_mult: float
    dropout: float
    head: HeadConfig | None = None
    image_size: int | None = None
    layer_decay: float = 1.0
    probe_first: bool = True
    norm_stats: str = "pretrained"


ModelConfig = CustomCNNConfig | TimmConfig


def model_config(model: str, values: dict[str, Any]) -> ModelConfig:
    from autocnn.models.catalog import CUSTOM_CNN

    where = f"models.{model}"
    if model == CUSTOM_CNN:
        return typed(CustomCNNConfig, values, where)
    head = values.get("head")
    head_config = typed(HeadConfig, head, f"{where}.head") if head is not None else None
    return typed(TimmConfig, {**values, "head": head_config}, where)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs, resolved: what `autocnn` trains and what MLflow records."""

    model: str
    model_config: ModelConfig
    train: TrainConfig
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def model_params(self) -> dict[str, Any]:
        """The model's values as plain data: what build_model takes and an exported bundle stores."""
        return asdict(self.model_config)

    def flat(self) -> dict[str, Any]:
        """All values under their dotted names, the form logged as MLflow params."""
        out: dict[str, Any] = {MODEL_PARAM: self.model}
        out.update(_flatten(asdict(self.train), "train"))
        out.update(_flatten(self.model_params, f"models.{self.model}"))
        out.update(_flatten(self.augment.as_dict(), "augment"))
        return out

    def as_yaml_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "models": {self.model: self.model_params},
            "train": asdict(self.train),
            "augment": self.augment.as_dict(),
        }


def _flatten(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class StudySettings:
    """What every trial of one study shares beyond its own TrialConfig: the part of the spec that
    training reads, handed down by the search (autocnn.search.space.study_settings) so that
    training never holds the whole spec."""

    seed: int
    image_size: int  # data.image_size: the custom CNN's side, and a backbone's unless it sets its own
    native_size: bool  # data.image_size unset: a backbone without its own size takes timm's pretrained one
    objective: Objective  # the primary objective: what training stops on and keeps its best epoch by
    feature_cache: bool  # study.feature_cache: frozen backbones' features computed once and kept
    feature_folder: Path  # where they are kept
