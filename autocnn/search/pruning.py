"""Pruning that waits for real training and never cuts on a coin flip.

Optuna's pruners compare a trial's intermediate value with other trials' at the same step and
cut it when it falls short by any amount. On small validation sets that amount is often noise:
with 300 images, two models of equal skill differ by several points, and every model sits at
chance for its first few dozen optimizer steps. NoiseAwarePruner wraps one of Optuna's pruners,
which still decides rungs, brackets and percentiles, and adds two rules before a cut stands:

1. the trial has trained for the judge floor (`autocnn.training.budget.judge_floor_steps`), counted in
   optimizer steps from the budget the objective records on the trial;
2. the trial's value is worse than what the inner pruner compared it to by more than the noise
   band of the validation set (`autocnn.training.budget.noise_band`).

Each cut leaves a sentence saying what the trial was compared to and by how much.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, PercentilePruner, SuccessiveHalvingPruner

from autocnn.training.budget import BUDGET_ATTR, judge_floor_steps, noise_band

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from autocnn.spec.objectives import Objective

_RUNG_PREFIX = "completed_rung_"  # Optuna's successive-halving bookkeeping on each trial


class NoiseAwarePruner(BasePruner):
    """An Optuna pruner whose cuts must clear the judge floor and the validation noise band."""

    def __init__(self, inner: BasePruner, *, objective: Objective, n_val: int) -> None:
        self.inner = inner
        self.objective = objective
        self.n_val = n_val
        self.reasons: dict[int, str] = {}  # trial number -> why it was cut

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self._past_floor(trial, step):
            return False
        if not self.inner.prune(study, trial):
            return False
        comparison = self.comparison(study, trial, step)
        if comparison is None:
            self.reasons[trial.number] = f"pruned at epoch {step} by {type(self.inner).__name__}"
            return True
        value, reference, what = comparison
        metric = self.objective.metric
        band = noise_band(metric, value, reference, self.n_val)
        gap = reference - value if self.objective.maximize else value - reference
        if gap <= band:
            return False
        self.reasons[trial.number] = (
            f"pruned at epoch {step}{self._steps_note(trial, step)}: {metric} {value:.4f} against {what} "
            f"{reference:.4f}, {gap:.4f} worse, beyond the noise band of {band:.4f} ({self.n_val} validation images)"
        )
        return True

    def reason(self, number: int) -> str | None:
        return self.reasons.get(number)

    # ------------------------------------------------------------------ the floor

    @staticmethod
    def _past_floor(trial: FrozenTrial, step: int) -> bool:
        budget = trial.user_attrs.get(BUDGET_ATTR)
        if not budget:
            return True
        per_epoch = int(budget["steps_per_epoch"])
        return step * per_epoch >= judge_floor_steps(per_epoch * int(budget["epochs"]))

    @staticmethod
    def _steps_note(trial: FrozenTrial, step: int) -> str:
        budget = trial.user_attrs.get(BUDGET_ATTR)
        return f" ({step * int(budget['steps_per_epoch'])} optimizer steps)" if budget else ""

    # ------------------------------------------------------------------ what the inner pruner compared

    def comparison(self, study: Study, trial: FrozenTrial, step: int) -> tuple[float, float, str] | None:
        """(trial's value, the value it was compared to, what that value is), as the inner pruner saw them."""
        inner = self.inner
        try:
            maximize = self.objective.maximize
            if isinstance(inner, HyperbandPruner):
                bracket = inner._get_bracket_id(study, trial)
                bracket_study = inner._create_bracket_study(study, bracket)
                scope = f"bracket {bracket}'s "
                return _rung_comparison(bracket_study, trial, inner._pruners[bracket], scope, maximize=maximize)
            if isinstance(inner, SuccessiveHalvingPruner):
                return _rung_comparison(study, trial, inner, "", maximize=maximize)
            if isinstance(inner, PercentilePruner):
                return _percentile_comparison(study, trial, step, float(inner._percentile), maximize=maximize)
        except (AttributeError, KeyError, IndexError, TypeError):
            return None
        return None


def _percentile_comparison(
    study: Study, trial: FrozenTrial, step: int, percentile: float, *, maximize: bool
) -> tuple[float, float, str]:
    """A percentile pruner compares the trial's best value so far with completed trials at `step`."""
    import numpy as np

    own = [v for s, v in trial.intermediate_values.items() if s <= step and not math.isnan(v)]
    value = (max if maximize else min)(own)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    at_step = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
    reference = float(np.nanpercentile(np.asarray(at_step, dtype=float), 100 - percentile if maximize else percentile))
    what = "the median" if percentile == 50 else f"the {percentile:g}th percentile"
    return float(value), reference, f"{what} of {len(at_step)} completed trials at epoch {step}"


def _rung_comparison(
    study: Any, trial: FrozenTrial, halving: SuccessiveHalvingPruner, scope: str, *, maximize: bool
) -> tuple[float, float, str]:
    """Successive halving promotes the top 1/eta of a rung: the bar is the last promoted value."""
    current = {t.number: t for t in study.get_trials(deepcopy=False)}[trial.number]
    rungs = [int(k.removeprefix(_RUNG_PREFIX)) for k in current.system_attrs if k.startswith(_RUNG_PREFIX)]
    rung = max(rungs)
    key = f"{_RUNG_PREFIX}{rung}"
    value = float(current.system_attrs[key])
    competing = sorted(
        (float(t.system_attrs[key]) for t in study.get_trials(deepcopy=False) if key in t.system_attrs),
        reverse=maximize,
    )
    promoted = max(len(competing) // int(halving._reduction_factor), 1)
    reference = competing[promoted - 1]
    return value, reference, f"{scope}rung {rung} bar (top {promoted} of {len(competing)})"


# --------------------------------------------------------------------------- several objectives


class DominatedCurvePruner(BasePruner):
    """Pruning for multi-objective studies: cut a trial only when cheaper-or-equal trials beat it.

    Optuna's pruners rank one intermediate value and refuse multi-objective studies. Here every
    cost objective (latency, parameters, size) is known before the first epoch, so a trial is
    compared only with the complete trials that cost no more on every one of them: it is cut when,
    at the same step, their median value beats its best value so far by more than the noise band,
    i.e. when it is dominated on both accuracy and cost. A small, fast model that learns to a lower
    accuracy is never cut for trailing a large one: it may still be the front's cheap end.
    The judge floor and the noise band are NoiseAwarePruner's.
    """

    def __init__(self, *, objective: Objective, costs: list[str], n_val: int, n_startup_trials: int = 3) -> None:
        self.objective = objective
        self.costs = costs
        self.n_val = n_val
        self.n_startup_trials = n_startup_trials
        self.reasons: dict[int, str] = {}

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not NoiseAwarePruner._past_floor(trial, step):
            return False
        own_costs = _costs(trial, self.costs)
        if own_costs is None:
            return False
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(done) < self.n_startup_trials:
            return False
        rivals = [
            t
            for t in done
            if step in t.intermediate_values
            and not math.isnan(t.intermediate_values[step])
            and (costs := _costs(t, self.costs)) is not None
            and all(costs[name] <= own_costs[name] for name in self.costs)
        ]
        own = [v for s, v in trial.intermediate_values.items() if s <= step and not math.isnan(v)]
        if not rivals or not own:
            return False
        import statistics

        maximize = self.objective.maximize
        value = max(own) if maximize else min(own)
        reference = statistics.median(t.intermediate_values[step] for t in rivals)
        metric = self.objective.metric
        band = noise_band(metric, value, reference, self.n_val)
        gap = reference - value if maximize else value - reference
        if gap <= band:
            return False
        cheaper = f"no more costly in {', '.join(self.costs)}" if self.costs else "all"
        self.reasons[trial.number] = (
            f"pruned at epoch {step}{NoiseAwarePruner._steps_note(trial, step)}: {metric} {value:.4f} against "
            f"the median {reference:.4f} of {len(rivals)} complete trials {cheaper}, {gap:.4f} worse, beyond "
            f"the noise band of {band:.4f} ({self.n_val} validation images)"
        )
        return True

    def reason(self, number: int) -> str | None:
        return self.reasons.get(number)


def _costs(trial: FrozenTrial, names: list[str]) -> dict[str, float] | None:
    """The trial's recorded costs, or None when one of `names` is missing (not measured yet)."""
    from autocnn.search.costs import trial_costs

    costs = trial_costs(trial)
    return costs if all(name in costs for name in names) else None


def report_value(trial: Any, value: float, step: int) -> None:
    """`trial.report`, also for a multi-objective trial, whose `report` Optuna refuses.

    The intermediate value goes to the storage exactly where `report` puts it, so Optuna's
    intermediate-value plot and every pruner read it the same way.
    """
    if len(trial.study.directions) == 1:
        trial.report(value, step)
        return
    trial.storage.set_trial_intermediate_value(trial._trial_id, step, float(value))


def should_prune(trial: Any) -> bool:
    """`trial.should_prune`, also for a multi-objective trial: the study's pruner on the stored trial."""
    if len(trial.study.directions) == 1:
        return bool(trial.should_prune())
    return bool(trial.study.pruner.prune(trial.study, trial.study._storage.get_trial(trial._trial_id)))
