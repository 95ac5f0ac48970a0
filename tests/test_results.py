"""Ranking trials by the study's objectives: one rule for the study, status, report and finalize."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest

from autocnn.errors import StudyError
from autocnn.search.results import best_epoch, best_trial, count_states, leaderboard, pick_trial, top_trials
from autocnn.spec.objectives import Objective

ACCURACY = Objective("val_accuracy", "maximize")
LOSS = Objective("val_loss", "minimize")
REPO = Path(__file__).resolve().parents[1]


def study_of(direction: str, values: list[float | None]) -> optuna.Study:
    """An in-memory study: a value is a complete trial with a two-epoch curve, None a pruned one."""
    study = optuna.create_study(directions=[direction])
    for value in values:
        curve = {1: 0.5, 2: 0.4} if value is None else {1: value / 2, 2: value}
        state = optuna.trial.TrialState.PRUNED if value is None else optuna.trial.TrialState.COMPLETE
        study.add_trial(
            optuna.trial.create_trial(state=state, value=value, intermediate_values=curve, params={}, distributions={})
        )
    return study


def test_better_rank_and_best_follow_the_direction() -> None:
    assert ACCURACY.better(0.9, 0.8) and not ACCURACY.better(0.8, 0.8) and ACCURACY.better(0.1, None)
    assert LOSS.better(0.2, 0.3) and not LOSS.better(0.3, 0.2)
    assert ACCURACY.best([0.7, 0.9, 0.9], float) == 0.9
    assert LOSS.best([(1, 0.5), (2, 0.3), (3, 0.3)], lambda p: p[1]) == (2, 0.3)  # ties: the first
    assert sorted([0.5, None, 0.9, float("nan")], key=ACCURACY.rank)[:2] == [0.9, 0.5]


@pytest.mark.parametrize(("objective", "best"), [(ACCURACY, 1), (LOSS, 2)])
def test_best_top_and_leaderboard_agree_for_each_direction(objective: Objective, best: int) -> None:
    study = study_of(objective.direction, [0.6, 0.8, 0.4, None, 0.8])
    assert best_trial(study, objective).number == best
    assert pick_trial(study, objective, None).number == best
    ranked, warnings = top_trials(study, 2, objective)
    assert ranked[0].number == best and not warnings
    board = leaderboard(study, objective)
    assert board[0]["number"] == best and board[-1]["state"] == "PRUNED"
    if objective is ACCURACY:
        assert [row["number"] for row in board] == [1, 4, 0, 2, 3]  # ties: the earlier trial first
    assert count_states(study)["COMPLETE"] == 4 and count_states(study)["PRUNED"] == 1


def test_top_k_warns_when_the_study_has_fewer_and_pick_refuses_what_did_not_complete() -> None:
    study = study_of("maximize", [0.6, None])
    ranked, warnings = top_trials(study, 3, ACCURACY)
    assert [t.number for t in ranked] == [0] and "has 1 complete trials" in warnings[0]
    with pytest.raises(StudyError, match="trial is PRUNED"):
        pick_trial(study, ACCURACY, 1)
    with pytest.raises(StudyError, match="no complete trial"):
        pick_trial(study_of("maximize", [None]), ACCURACY, None)


def test_best_epoch_is_where_the_curve_peaks_in_the_objectives_direction() -> None:
    (trial,) = study_of("maximize", [0.8]).trials
    assert best_epoch(trial, ACCURACY) == 2 and best_epoch(trial, LOSS) == 1


def imports_of(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def test_only_the_tracking_module_talks_to_mlflow() -> None:
    talking = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "autocnn").rglob("*.py")
        if path.parent.name != "tracking" and ("mlflow" in imports_of(path) or "._client" in path.read_text())
    )
    assert talking == [], f"MLflow used outside autocnn/tracking/: {talking}"
