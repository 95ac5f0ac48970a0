"""Multi-objective pieces on synthetic trials (nothing trains): the dominated-curve pruner, the
Pareto front with constraints, and the pick-rule language."""

from __future__ import annotations

import optuna
import pytest

from autocnn.errors import StudyError
from autocnn.search.costs import COSTS_ATTR
from autocnn.search.pareto import pareto_front, parse_rule, pick_from_front
from autocnn.search.pruning import DominatedCurvePruner, report_value, should_prune
from autocnn.search.session import build_pruner
from autocnn.spec.load import parse_spec
from autocnn.spec.objectives import Objective, study_objectives
from autocnn.training.budget import BUDGET_ATTR
from tests.conftest import digits_spec_dict

ACCURACY = Objective("val_accuracy", "maximize", 0)
LATENCY = Objective("latency_ms", "minimize", 1)
EPOCHS = 10


def mo_spec_dict(**study: object) -> dict:
    """The test digits spec with two objectives in place of its metric."""
    spec = digits_spec_dict()
    spec["study"] = {"trials": 2, "pruner": "median", "objectives": ["val_accuracy", "latency_ms"], **study}
    return spec


def mo_study(pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(directions=["maximize", "minimize"], pruner=pruner)


def run_curve(study: optuna.Study, value: float, latency: float, *, bound: float | None = None) -> int | None:
    """A trial with a flat curve at `value` and the given latency: the epoch it was cut at, or None."""
    trial = study.ask()
    trial.set_user_attr(BUDGET_ATTR, {"steps_per_epoch": 16, "epochs": EPOCHS})
    trial.set_user_attr(COSTS_ATTR, {"latency_ms": latency})
    if bound is not None:
        trial.set_constraint("latency_ms", latency - bound)
    for epoch in range(1, EPOCHS + 1):
        report_value(trial, value, epoch)
        if should_prune(trial):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, [value, latency])
    return None


def test_dominated_curve_pruner_cuts_worse_and_no_cheaper_keeps_worse_but_cheaper() -> None:
    pruner = DominatedCurvePruner(objective=ACCURACY, costs=["latency_ms"], n_val=300)
    study = mo_study(pruner)
    for _ in range(3):
        assert run_curve(study, 0.9, 2.0) is None
    # Worse and no cheaper: cut at the first epoch past the 60-step floor (16 steps an epoch).
    assert run_curve(study, 0.5, 3.0) == 4
    assert "no more costly in latency_ms" in (pruner.reason(3) or "")
    # Equally costly counts as no cheaper.
    assert run_curve(study, 0.5, 2.0) == 4
    # Worse but cheaper: nothing cheaper to compare with, it may be the front's cheap end.
    assert run_curve(study, 0.5, 1.0) is None
    # Worse within the noise band of 300 images: kept.
    assert run_curve(study, 0.88, 3.0) is None


def test_dominated_curve_pruner_waits_for_startup_trials() -> None:
    study = mo_study(DominatedCurvePruner(objective=ACCURACY, costs=["latency_ms"], n_val=300))
    assert run_curve(study, 0.9, 2.0) is None
    assert run_curve(study, 0.1, 9.0) is None  # only one complete trial so far


def test_multi_objective_spec_builds_the_dominated_curve_pruner() -> None:
    spec = parse_spec(mo_spec_dict())
    pruner = build_pruner(spec, max_resource=10, n_val=300)
    assert isinstance(pruner, DominatedCurvePruner)
    assert pruner.costs == ["latency_ms"]
    assert [o.direction for o in study_objectives(spec)] == ["maximize", "minimize"]


def test_front_holds_feasible_trials_only_and_the_pick_rules_choose_from_it() -> None:
    study = mo_study()
    # (accuracy, latency): trial 3 is infeasible (latency 9 > 5) although the most accurate.
    for value, latency in [(0.90, 4.0), (0.80, 1.0), (0.70, 2.0), (0.99, 9.0), (0.85, 3.0)]:
        run_curve(study, value, latency, bound=5.0)
    objectives = [ACCURACY, LATENCY]
    assert [t.number for t in pareto_front(study, objectives)] == [0, 1, 4]
    default = pick_from_front(study, objectives, ACCURACY, None)
    assert default.trial.number == 0 and "no --pick rule" in default.reason
    assert pick_from_front(study, objectives, ACCURACY, "max val_accuracy where latency_ms <= 3").trial.number == 4
    assert pick_from_front(study, objectives, ACCURACY, "min latency_ms where val_accuracy >= 0.85").trial.number == 4
    assert pick_from_front(study, objectives, ACCURACY, "MIN latency_ms").trial.number == 1
    with pytest.raises(StudyError, match=r"^--pick: no trial on the Pareto front meets latency_ms < 0.5"):
        pick_from_front(study, objectives, ACCURACY, "max val_accuracy where latency_ms < 0.5")


def test_no_feasible_trial_is_one_clear_line() -> None:
    study = mo_study()
    for value, latency in [(0.9, 7.0), (0.8, 6.0)]:
        run_curve(study, value, latency, bound=5.0)
    with pytest.raises(StudyError) as caught:
        pick_from_front(study, [ACCURACY, LATENCY], ACCURACY, None)
    (line,) = caught.value.lines()
    assert line.startswith("study.constraints: none of the 2 complete trials meets them; the closest, trial 1")
    assert "latency_ms 6 (limit 5)" in line


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("", "a rule starts with max or min"),
        ("maximise val_accuracy", "a rule starts with max or min"),
        ("max accuracy", "expected one of val_accuracy"),
        ("max val_accuracy if latency_ms < 5", "expected 'where'"),
        ("max val_accuracy where latency_ms = 5", "cannot read"),
        ("max val_accuracy where latency_ms <= five", "expected a number"),
        ("max val_accuracy where latency_ms <= 5 or size_mb < 2", "expected 'and'"),
        ("max val_accuracy where __import__('os') <= 1", "cannot read"),
    ],
)
def test_pick_rules_are_parsed_not_evaluated(rule: str, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        parse_rule(rule)


def test_pick_rule_round_trips() -> None:
    rule = parse_rule("max val_accuracy where latency_ms <= 5 and size_mb < 4.5")
    assert str(rule) == "max val_accuracy where latency_ms <= 5 and size_mb < 4.5"
    assert [c.holds(v) for c, v in zip(rule.conditions, [5.0, 4.5], strict=True)] == [True, False]


def test_tpe_keeps_sampling_a_multi_objective_study_with_pruned_trials() -> None:
    # Optuna's TPE ranks pruned trials by `study.direction`, which a multi-objective study lacks.
    from autocnn.search.samplers import TrialSeededTPESampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler = TrialSeededTPESampler(seed=0, n_startup_trials=2, multivariate=True, group=True)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for i in range(6):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        report_value(trial, x, 1)
        if i == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, [x, 1.0 - x])
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") == 1 and states.count("COMPLETE") == 5


def test_report_section_draws_the_front_the_constraint_and_greys_infeasible_trials() -> None:
    from autocnn.outputs.pareto_report import front_rows, pareto_html

    spec = parse_spec(mo_spec_dict(constraints={"latency_ms": 5}))
    study = mo_study()
    for value, latency in [(0.90, 4.0), (0.80, 1.0), (0.70, 2.0), (0.99, 9.0)]:
        run_curve(study, value, latency, bound=5.0)
    rows = front_rows(study, study_objectives(spec))
    assert [(r["number"], r["front"], r["feasible"]) for r in rows] == [
        (0, True, True),
        (1, True, True),
        (2, False, True),
        (3, False, False),
    ]
    section = pareto_html(spec, study)
    assert "plot-pareto" in section and "latency_ms &lt;= 5" in section
    assert "outside the constraints" in section and section.count("<b>front</b>") == 2
