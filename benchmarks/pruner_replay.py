"""Judge other pruner settings without training again: learning curves replayed into Optuna.

Exact for autocnn's trials, whose curves do not depend on the pruner (each trial's seed is fixed
by its number), so one unpruned study's curves show what any pruner would have cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autocnn.spec.schema import Spec


def replay(
    curves: Sequence[Sequence[float]], pruner: Any, *, name: str, direction: str, steps_per_epoch: int
) -> tuple[int, float]:
    """(epochs, best value) had these learning curves met `pruner`, in an in-memory Optuna study.

    Each trial carries the budget autocnn records, so the judge floor applies as in a real study.
    """
    import optuna

    from autocnn.training.budget import BUDGET_ATTR

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=name, direction=direction, pruner=pruner)
    pick = max if direction == "maximize" else min
    epochs, best = 0, None
    for curve in curves:
        trial = study.ask()
        trial.set_user_attr(BUDGET_ATTR, {"steps_per_epoch": steps_per_epoch, "epochs": len(curve)})
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
            epochs += 1
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, pick(curve))
            best = pick(curve) if best is None else pick(best, pick(curve))
    return epochs, float("nan") if best is None else float(best)


def with_pruner(spec: Spec, pruner: str) -> Spec:
    return spec.model_copy(update={"study": spec.study.model_copy(update={"pruner": pruner})})


def replay_candidates(spec: Spec, n_val: int) -> dict[str, tuple[str, Any]]:
    """autocnn's own settings (checked against the real runs) and a few of Optuna's bare ones,
    each as (pruner kind, pruner)."""
    import optuna

    from autocnn.search.session import build_pruner

    pruners = optuna.pruners
    epochs = int(spec.train.epochs)
    return {
        "median, autocnn's settings": (
            "median",
            build_pruner(with_pruner(spec, "median"), max_resource=epochs, n_val=n_val),
        ),
        "hyperband, autocnn's settings": (
            "hyperband",
            build_pruner(with_pruner(spec, "hyperband"), max_resource=epochs, n_val=n_val),
        ),
        "median, 3 startup trials, warm-up 1": ("median", pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)),
        "median, 2 startup trials, warm-up 1": ("median", pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)),
        "hyperband, reduction factor 2": (
            "hyperband",
            pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=2),
        ),
        "hyperband, reduction factor 4": (
            "hyperband",
            pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=4),
        ),
        "successive halving, min 1, factor 3": (
            "successive_halving",
            pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        ),
        "successive halving, min 1, factor 4": (
            "successive_halving",
            pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4),
        ),
    }


def hyperband_spread(
    curves: Sequence[Sequence[float]], spec: Spec, *, direction: str, n_val: int, steps_per_epoch: int, names: int = 8
) -> list[tuple[int, float]]:
    """Hyperband's replay under other study names: Optuna assigns trials to brackets by a hash of
    the study name and trial number, so one name's saving is one draw among several."""
    from autocnn.search.session import build_pruner

    hyperband = with_pruner(spec, "hyperband")
    epochs = int(spec.train.epochs)
    return [
        replay(
            curves,
            build_pruner(hyperband, max_resource=epochs, n_val=n_val),
            name=f"digits-{i}",
            direction=direction,
            steps_per_epoch=steps_per_epoch,
        )
        for i in range(names)
    ]


def replay_shape(spec: Spec) -> dict[str, int]:
    """Validation images and steps per epoch of the pruning study: what the noise band and floor need."""
    from autocnn.data.cache import DataCache
    from autocnn.training.budget import steps_per_epoch

    data = DataCache(spec.data, seed=spec.seed).get()
    return {"n_val": len(data.val), "steps_per_epoch": steps_per_epoch(len(data.train), int(spec.train.batch_size))}
