"""Reading a study's outcome: counts, the leaderboard, the best trials, where a trial peaked.

`status`, `report`, `finalize` and the study's own summary all read results here, and rank trials
by the study's objectives (autocnn.spec.objectives), so none of them has its own idea of "better".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autocnn.errors import StudyError
from autocnn.search.costs import feasible, trial_costs
from autocnn.spec.objectives import Objective

if TYPE_CHECKING:
    import optuna

    from autocnn.spec.schema import Spec

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}  # leaderboard order


@dataclass
class StudyResult:
    name: str
    storage: str
    tracking_uri: str
    counts: dict[str, int]
    best_number: int | None
    best_value: float | None
    ran: int
    stale: list[int] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)  # trial -> why its living worker does not work
    stopped_reason: str | None = None
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    running: dict[int, str] = field(default_factory=dict)  # trial number -> the worker (host:pid) running it
    retries: dict[int, int] = field(default_factory=dict)  # a WAITING retry -> the trial whose run it continues


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def complete_trials(study: optuna.Study, *, feasible_only: bool = True) -> list[optuna.trial.FrozenTrial]:
    """Complete trials; by default only those within `study.constraints`: the others are kept and
    shown, never picked."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return [t for t in done if feasible(t)] if feasible_only else done


def ranked(trials: list[optuna.trial.FrozenTrial], objective: Objective) -> list[optuna.trial.FrozenTrial]:
    """Best first by the objective; ties go to the earlier trial."""
    return sorted(trials, key=lambda t: (objective.rank(objective.of(t)), t.number))


def best_trial(study: optuna.Study, objective: Objective) -> optuna.trial.FrozenTrial | None:
    found = ranked(complete_trials(study), objective)
    return found[0] if found else None


def pick_trial(study: optuna.Study, objective: Objective, number: int | None) -> optuna.trial.FrozenTrial:
    """The best complete trial, or trial `number` if it completed; otherwise a user error."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number is None:
        best = best_trial(study, objective)
        if best is None:
            raise StudyError(no_complete_trial(study))
        return best
    if number not in trials:
        raise StudyError(f"--trial {number}: no such trial in study '{study.study_name}' (0..{len(trials) - 1})")
    if trials[number].state.name != "COMPLETE":
        raise StudyError(f"--trial {number}: trial is {trials[number].state.name}; pick a COMPLETE trial")
    return trials[number]


def top_trials(study: optuna.Study, k: int, objective: Objective) -> tuple[list[optuna.trial.FrozenTrial], list[str]]:
    """The k best COMPLETE trials, best first; fewer, with a warning, if the study has fewer."""
    found = ranked(complete_trials(study), objective)
    if not found:
        raise StudyError(no_complete_trial(study))
    if len(found) >= k:
        return found[:k], []
    return found, [f"--top-k {k}: the study has {len(found)} complete trials; compared those"]


def no_complete_trial(study: optuna.Study) -> str:
    """Why nothing can be picked: no trial finished, or none finished within the constraints."""
    if complete_trials(study, feasible_only=False):
        return infeasible_message(study)
    return f"study '{study.study_name}' has no complete trial yet; run `autocnn study` first"


def best_epoch(trial: optuna.trial.FrozenTrial, objective: Objective) -> int:
    """The epoch at which the trial's metric peaked: how long a refit on train+val trains."""
    curve = trial.intermediate_values
    if not curve:
        return 1
    return objective.best(sorted(curve), lambda step: curve[step])


def running_trials(study: optuna.Study) -> dict[int, str]:
    """Each RUNNING trial and the worker that runs it (host:pid), "?" where none is recorded:
    with several workers on one storage, this is how a user tells whose trial is whose."""
    from optuna.trial import TrialState

    from autocnn.search.resume import OWNER_ATTR

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return {t.number: str(t.user_attrs.get(OWNER_ATTR, "?")) for t in running}


def waiting_retries(study: optuna.Study) -> dict[int, int]:
    """Queued trials that continue an interrupted or dead one (from its checkpoint, where it left
    one), with the trial each continues: what the next `autocnn study` picks up first."""
    from optuna.trial import TrialState

    from autocnn.search.resume import RESUME_FROM_ATTR

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return {t.number: int(t.user_attrs[RESUME_FROM_ATTR]) for t in waiting if RESUME_FROM_ATTR in t.user_attrs}


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.datetime_complete and trial.datetime_start:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def leaderboard(study: optuna.Study, objective: Objective, top: int = 10) -> list[dict[str, Any]]:
    """Finished trials best first, then pruned ones by their last value, then the rest by number."""
    from autocnn.search.resume import OWNER_ATTR

    rows = []
    for t in study.get_trials(deepcopy=False):
        curve = t.intermediate_values
        value = objective.of(t) if t.values is not None else (curve[max(curve)] if curve else None)
        rows.append(
            {
                "number": t.number,
                "model": t.params.get("model", ""),
                "params": {k: v for k, v in t.params.items() if k != "model"},
                "value": value,
                "state": t.state.name,
                "epochs": len(curve),
                "seconds": trial_seconds(t),
                "worker": t.user_attrs.get(OWNER_ATTR),  # host:pid of the process that ran it
            }
        )
    rows.sort(key=lambda r: (STATE_ORDER.get(r["state"], 5), objective.rank(r["value"]), r["number"]))
    return rows[:top]


def summarize(
    study: optuna.Study, objective: Objective, *, storage: str, tracking_uri: str, ran: int = 0
) -> StudyResult:
    """The study as `autocnn study` and `autocnn status` show it."""
    from autocnn.search.resume import frozen_trials, stale_trials

    best = best_trial(study, objective)
    return StudyResult(
        name=study.study_name,
        storage=storage,
        tracking_uri=tracking_uri,
        counts=count_states(study),
        best_number=None if best is None else best.number,
        best_value=None if best is None else objective.of(best),
        ran=ran,
        stale=stale_trials(study),
        frozen=frozen_trials(study),
        leaderboard=leaderboard(study, objective),
        running=running_trials(study),
        retries=waiting_retries(study),
    )


def study_status(spec: Spec, *, storage: str | None = None) -> StudyResult:
    """Where a study stands, read from its storage while it runs or after it ended.

    Example:
        >>> result = autocnn.study_status(autocnn.load_spec("studies/digits.yaml"))
        >>> result.counts["COMPLETE"], result.best_number, result.best_value
    """
    from autocnn.search.storage import open_study, storage_url
    from autocnn.spec.objectives import primary

    url = storage_url(spec, storage)
    return summarize(open_study(spec, url), primary(spec), storage=url, tracking_uri="")


def infeasible_message(study: optuna.Study) -> str:
    """One line for a study whose complete trials all break a constraint, naming the closest one."""
    done = complete_trials(study, feasible_only=False)
    if not done:
        return f"study '{study.study_name}' has no complete trial yet; run `autocnn study` first"
    closest = min(done, key=lambda t: (_relative_excess(t), t.number))
    costs = trial_costs(closest)
    broken = ", ".join(
        f"{name} {costs.get(name, math.nan):.4g} (limit {costs.get(name, math.nan) - excess:.4g})"
        for name, excess in sorted(closest.constraints.items())
        if excess > 0
    )
    return (
        f"study.constraints: none of the {len(done)} complete trials meets them; the closest, trial "
        f"{closest.number}, has {broken}; relax study.constraints or search smaller models"
    )


def _relative_excess(trial: optuna.trial.FrozenTrial) -> float:
    """How far beyond its bounds a trial is, each excess as a share of its bound (ms and
    parameter counts are not comparable in their own units)."""
    costs = trial_costs(trial)
    total = 0.0
    for name, excess in trial.constraints.items():
        bound = costs.get(name, excess) - excess
        total += max(excess, 0.0) / max(abs(bound), 1e-12)
    return total
