"""autocnn's pruner settings, driven by synthetic learning curves (nothing trains)."""

from __future__ import annotations

from pathlib import Path

import optuna

from autocnn.spec import load_spec
from autocnn.study import build_pruner
from tests.conftest import digits_spec_dict, write_spec


def pruned_at(tmp_path: Path, pruner: str, epochs: int, curves: list[float]) -> list[int | None]:
    """The epoch at which each trial (a flat curve at its value) was pruned, None if it ran out."""
    spec = load_spec(write_spec(tmp_path, digits_spec_dict(study={"pruner": pruner}, train={"epochs": epochs})))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=spec.name, direction="maximize", pruner=build_pruner(spec))
    out: list[int | None] = []
    for value in curves:
        trial = study.ask()
        for epoch in range(1, epochs + 1):
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                out.append(epoch)
                break
        else:
            study.tell(trial, value)
            out.append(None)
    return out


def good_then_bad(n: int = 30) -> list[float]:
    return [0.8 + 0.01 * i if i < 6 else 0.1 for i in range(n)]  # each good one better yet


def test_hyperband_can_stop_a_hopeless_trial_after_one_epoch(tmp_path: Path) -> None:
    steps = pruned_at(tmp_path, "hyperband", 12, good_then_bad())
    assert 1 in steps  # the first rung is one epoch, whatever the epoch budget
    assert steps[:6] == [None] * 6  # the good trials run to the end


def test_median_waits_a_third_of_the_epochs(tmp_path: Path) -> None:
    steps = pruned_at(tmp_path, "median", 12, good_then_bad())
    assert min(s for s in steps if s is not None) == 4
    assert steps[:6] == [None] * 6
