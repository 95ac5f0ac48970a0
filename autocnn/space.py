"""Spec -> Optuna suggestions -> a concrete TrialConfig of plain values.

One name per hyperparameter: the dotted YAML path (`train.lr`, `models.custom_cnn.depth`) is the
Optuna param name and the MLflow param name. Runtime code only ever sees plain values, never a
Range or Choices.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from autocnn.spec import Choices, Range, Spec

if TYPE_CHECKING:
    import optuna

MODEL_PARAM = "model"


@dataclass(frozen=True)
class SearchedParam:
    """One row of `autocnn validate`'s table."""

    name: str
    distribution: str
    domain: str


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


@dataclass(frozen=True)
class AugmentConfig:
    """augment.*: all off unless the trial turns augmentation on (autocnn.augment reads them)."""

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
    cached_views: int = 0  # frozen backbones: fixed augmented views per image (autocnn.features)

    def as_dict(self) -> dict[str, Any]:
        """What was sampled: a trial without augmentation samples (and logs) only `enabled`."""
        return asdict(self) if self.enabled else {"enabled": False}

    def ops(self) -> dict[str, Any]:
        """The image operations alone, as `autocnn.augment` builds them: how many views are
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
    from autocnn.models import CUSTOM_CNN

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


def _leaves(section: BaseModel, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted name, fixed value | Range | Choices) for every key, nested sections included."""
    for key, value in section:
        name = f"{prefix}.{key}"
        if isinstance(value, (Range, Choices)) or not isinstance(value, BaseModel):
            yield name, value
        else:
            yield from _leaves(value, name)


def _sections(spec: Spec, model: str | None) -> Iterator[tuple[str, BaseModel]]:
    yield "train", spec.train
    for name, space in spec.models.spaces().items():
        if model is None or name == model:
            yield f"models.{name}", space
    augment = getattr(spec, "augment", None)
    if augment is not None:
        yield "augment", augment


def searched_params(spec: Spec) -> list[SearchedParam]:
    """Every searched parameter with its distribution: the table `autocnn validate` prints."""
    names = list(spec.models.spaces())
    rows = [SearchedParam(MODEL_PARAM, "categorical", ", ".join(names))]
    for prefix, section in _sections(spec, None):
        for name, value in _leaves(section, prefix):
            if isinstance(value, Range):
                rows.append(_describe_range(name, value))
            elif isinstance(value, Choices):
                rows.append(SearchedParam(name, "categorical", ", ".join(map(str, value.choices))))
    return rows


def _describe_range(name: str, value: Range) -> SearchedParam:
    kind = "int" if isinstance(value.low, int) and isinstance(value.high, int) else "float"
    scale = "log-uniform" if value.log else "uniform"
    step = f" step {value.step}" if value.step is not None else ""
    return SearchedParam(name, f"{kind} {scale}", f"[{value.low}, {value.high}]{step}")


def suggest(trial: optuna.trial.BaseTrial, name: str, value: Any) -> Any:
    """One spec value -> a fixed value or the matching `trial.suggest_*`."""
    if isinstance(value, Choices):
        return trial.suggest_categorical(name, list(value.choices))
    if isinstance(value, Range):
        if isinstance(value.low, int) and isinstance(value.high, int):
            step = int(value.step) if value.step is not None else 1
            return trial.suggest_int(name, value.low, value.high, step=step, log=value.log)
        return trial.suggest_float(name, value.low, value.high, step=value.step, log=value.log)
    return value


def _resolve(trial: optuna.trial.BaseTrial, section: BaseModel, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section:
        name = f"{prefix}.{key}"
        if isinstance(value, BaseModel) and not isinstance(value, (Range, Choices)):
            out[key] = _resolve(trial, value, name)
        else:
            out[key] = suggest(trial, name, value)
    return out


def sample_config(trial: optuna.trial.BaseTrial, spec: Spec) -> TrialConfig:
    """Pick a model, then sample only that model's keys (a conditional space)."""
    model = trial.suggest_categorical(MODEL_PARAM, list(spec.models.spaces()))
    sections = dict(_sections(spec, model))
    augment = sections.get("augment")
    return TrialConfig(
        model=str(model),
        model_config=model_config(str(model), _resolve(trial, sections[f"models.{model}"], f"models.{model}")),
        train=typed(TrainConfig, _resolve(trial, spec.train, "train"), "train"),
        augment=typed(AugmentConfig, _resolve_augment(trial, augment), "augment")
        if augment is not None
        else AugmentConfig(),
    )


def _resolve_augment(trial: optuna.trial.BaseTrial, section: BaseModel) -> dict[str, Any]:
    """`enabled` first: a trial without augmentation samples (and logs) none of its knobs."""
    if not suggest(trial, "augment.enabled", section.enabled):  # type: ignore[attr-defined]
        return {"enabled": False}
    return _resolve(trial, section, "augment")


def config_from_params(spec: Spec, params: dict[str, Any]) -> TrialConfig:
    """Rebuild a finished trial's config from its Optuna params (for reports, export, retries)."""
    import optuna

    return sample_config(optuna.trial.FixedTrial(params), spec)
