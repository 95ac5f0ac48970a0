"""What a study optimises: a list of (metric, direction), read the same way everywhere.

A spec names one `metric` or several `objectives`; every reader takes the list. The first
validation metric is the *primary* objective: training stops on it, keeps its best epoch by it,
and pruning judges its curve. Costs (latency, parameters, size) are known before the first epoch;
`int8_accuracy` only once the trained model is quantized.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from autocnn.spec.fields import COSTS, OBJECTIVES
from autocnn.spec.schema import Spec

T = TypeVar("T")


class Scored(Protocol):
    """What `Objective.of` reads of a finished trial (Optuna's FrozenTrial), without importing Optuna."""

    @property
    def values(self) -> list[float] | None: ...


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "maximize" or "minimize", Optuna's words
    index: int = 0  # position in the Optuna study's values

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def is_cost(self) -> bool:
        return self.metric in COSTS

    def better(self, value: float, than: float | None) -> bool:
        """Strictly better; anything beats no value at all."""
        if than is None:
            return True
        return value > than if self.maximize else value < than

    def rank(self, value: float | None) -> float:
        """A sort key that puts the best value first and a missing or non-finite one last."""
        if value is None or not math.isfinite(value):
            return math.inf
        return -value if self.maximize else value

    def best(self, items: Iterable[T], value: Callable[[T], float]) -> T:
        """The best item; ties go to the first, as the caller ordered them."""
        return min(items, key=lambda item: self.rank(value(item)))

    def of(self, trial: Scored) -> float | None:
        """This objective's value for a finished trial (a multi-objective trial has several)."""
        values = trial.values
        if values is None or not 0 <= self.index < len(values):
            return None
        return float(values[self.index])


def study_objectives(spec: Spec) -> list[Objective]:
    return [Objective(name, OBJECTIVES[name], i) for i, name in enumerate(spec.study.objective_names)]


def primary(spec: Spec) -> Objective:
    """The objective that training stops on and pruning judges by: the first validation metric.

    With `objectives: [int8_accuracy, latency_ms]` none is a validation metric; trials then train
    on `study.metric` (val_accuracy by default), which is not one of the study's values.
    """
    metric = spec.study.training_metric
    found = [o for o in study_objectives(spec) if o.metric == metric]
    return found[0] if found else Objective(metric, OBJECTIVES[metric], -1)


def is_multi_objective(spec: Spec) -> bool:
    return len(spec.study.objective_names) > 1


def cost_objectives(spec: Spec) -> list[Objective]:
    return [o for o in study_objectives(spec) if o.is_cost]


def constraint_values(costs: dict[str, float], constraints: dict[str, float]) -> dict[str, float]:
    """Optuna's convention: value - bound, feasible when every one is <= 0."""
    return {name: float(costs[name]) - float(bound) for name, bound in constraints.items()}
