"""Spec -> Optuna suggestions -> a TrialConfig of plain values.

One name per hyperparameter: the dotted YAML path (`train.lr`, `models.custom_cnn.depth`) is the
Optuna param name and the MLflow param name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from autocnn.spec.fields import Choices, Range
from autocnn.spec.objectives import primary
from autocnn.spec.schema import Spec
from autocnn.training.config import (
    MODEL_PARAM,
    AugmentConfig,
    StudySettings,
    TrainConfig,
    TrialConfig,
    model_config,
    typed,
)

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class SearchedParam:
    """One row of `autocnn validate`'s table."""

    name: str
    distribution: str
    domain: str


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


def study_settings(spec: Spec) -> StudySettings:
    """The part of the spec every trial's training reads: training is handed this, never the spec."""
    return StudySettings(
        seed=spec.seed,
        image_size=spec.data.image_size,
        native_size="image_size" not in spec.data.model_fields_set,
        objective=primary(spec),
        feature_cache=spec.study.feature_cache,
        feature_folder=spec.base_dir / ".autocnn" / spec.name / "features",
    )
