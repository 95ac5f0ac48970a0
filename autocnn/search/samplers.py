"""Optuna samplers whose random draws for trial n depend only on the study's seed and n.

Optuna seeds a sampler once per process, so two workers started with the same seed suggest the
same first configurations, and a resumed study replays the draws of its first run. Trial numbers
are unique within a study's storage, across processes and machines: seeding each trial's draws
from (seed, trial number) keeps a study reproducible and gives every worker, and every resume,
draws of its own. TPE's model of the finished trials is unchanged; only its random parts (the
startup trials, the candidates it scores) are reseeded.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from optuna.samplers import RandomSampler, TPESampler
from optuna.trial import TrialState

if TYPE_CHECKING:
    from optuna.samplers._lazy_random_state import LazyRandomState
    from optuna.study import Study
    from optuna.trial import FrozenTrial

SEED_SPACE = 2**32  # numpy's RandomState takes seeds below this


def trial_seed(seed: int, number: int) -> int:
    """Distinct for every (seed, trial number) pair a study can hold."""
    return (seed * 1_000_003 + number) % SEED_SPACE


def _reseed(state: LazyRandomState, seed: int) -> None:
    # Optuna keeps the generator in a private LazyRandomState; reseeding it is what the samplers'
    # own `reseed_rng` does, with a seed of ours instead of fresh entropy.
    state.rng.seed(seed)


class TrialSeededRandomSampler(RandomSampler):
    def __init__(self, *, seed: int) -> None:
        super().__init__(seed=seed)
        self.study_seed = seed

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        super().before_trial(study, trial)
        _reseed(self._rng, trial_seed(self.study_seed, trial.number))


PRUNED_CONSTRAINT = "constraints:autocnn.pruned"  # Optuna's key for a constraint named autocnn.pruned


class _PrunedAsInfeasible:
    """A view of a multi-objective study in which each pruned trial reads as infeasible.

    Optuna's TPE ranks pruned trials by one objective's direction, which a multi-objective study
    does not have (it raises). autocnn prunes such studies (DominatedCurvePruner); a pruned trial
    there was beaten by cheaper-or-equal trials, so it belongs with the poor trials, and TPE's
    infeasible group (below every feasible trial) is where a constraint of 1 puts it.
    """

    def __init__(self, study: Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return [
            _as_infeasible(t) if t.state == TrialState.PRUNED else t for t in self._study._get_trials(*args, **kwargs)
        ]


def _as_infeasible(trial: FrozenTrial) -> FrozenTrial:
    shown = copy.copy(trial)
    shown._system_attrs = {**trial.system_attrs, PRUNED_CONSTRAINT: 1.0}
    return shown


class TrialSeededTPESampler(TPESampler):
    def __init__(self, *, seed: int, **kwargs: object) -> None:
        super().__init__(seed=seed, **kwargs)  # type: ignore[arg-type]
        self.study_seed = seed

    def _sample(self, study: Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        if len(study.directions) > 1:
            study = _PrunedAsInfeasible(study)  # type: ignore[assignment]
        return super()._sample(study, trial, search_space)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        super().before_trial(study, trial)
        seed = trial_seed(self.study_seed, trial.number)
        _reseed(self._rng, seed)
        _reseed(self._random_sampler._rng, seed)
