"""What a study optimises: a list of (metric, direction), read the same way everywhere.

A spec names one metric today; every reader takes the list, so a second objective adds an entry
here rather than a branch in each module that ranks trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from autocnn.spec import METRICS, Spec

T = TypeVar("T")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "maximize" or "minimize", Optuna's words

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

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


def study_objectives(spec: Spec) -> list[Objective]:
    return [Objective(spec.study.metric, METRICS[spec.study.metric])]


def primary(spec: Spec) -> Objective:
    """The objective that training stops on and pruning judges by: the first one."""
    return study_objectives(spec)[0]
