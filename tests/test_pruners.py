"""autocnn's pruners on synthetic learning curves (nothing trains): floor, noise band, reasons."""

from __future__ import annotations

import optuna
import pytest

from autocnn.search.pruning import NoiseAwarePruner
from autocnn.search.session import build_pruner
from autocnn.spec.load import parse_spec
from autocnn.training.budget import BUDGET_ATTR, noise_band
from tests.conftest import digits_spec_dict


def make_pruner(kind: str, epochs: int, n_val: int) -> NoiseAwarePruner:
    spec = parse_spec(digits_spec_dict(study={"pruner": kind}, train={"epochs": epochs}))
    pruner = build_pruner(spec, max_resource=epochs, n_val=n_val)
    assert isinstance(pruner, NoiseAwarePruner)
    return pruner


def pruned_at(
    pruner: NoiseAwarePruner, curves: list[float], *, epochs: int, steps_per_epoch: int, name: str = "s"
) -> list[int | None]:
    """The epoch at which each trial (a flat curve at its value) was pruned, None if it ran out."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=name, direction="maximize", pruner=pruner)
    out: list[int | None] = []
    for value in curves:
        trial = study.ask()
        trial.set_user_attr(BUDGET_ATTR, {"steps_per_epoch": steps_per_epoch, "epochs": epochs})
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


@pytest.mark.parametrize(("kind", "first_cut"), [("hyperband", 4), ("median", 4), ("successive_halving", 5)])
def test_no_cut_before_the_floor_of_optimizer_steps(kind: str, first_cut: int) -> None:
    # 16 steps an epoch: the 60-step floor is passed at epoch 4 (successive halving's first rung
    # is a sixth of the 30 epochs, epoch 5).
    steps = pruned_at(make_pruner(kind, 30, 300), good_then_bad(), epochs=30, steps_per_epoch=16)
    cut = [s for s in steps if s is not None]
    assert cut and min(cut) == first_cut
    assert steps[:6] == [None] * 6  # the good trials run to the end


def test_hyperband_cuts_a_hopeless_trial_at_its_first_rung_when_epochs_are_long() -> None:
    steps = pruned_at(make_pruner("hyperband", 12, 300), good_then_bad(), epochs=12, steps_per_epoch=100)
    assert 1 in steps


def test_a_short_trial_is_judged_after_half_its_steps() -> None:
    # 4 epochs of 10 steps: 40 steps in all, never 60; judged from step 20 (epoch 2) on.
    steps = pruned_at(make_pruner("median", 4, 300), good_then_bad(), epochs=4, steps_per_epoch=10)
    assert min(s for s in steps if s is not None) == 2


@pytest.mark.parametrize("kind", ["hyperband", "median", "successive_halving"])
def test_no_cut_within_the_noise_band(kind: str) -> None:
    """Trials a few images apart on 300 validation images are never cut; a clearly worse one is."""
    n_val = 300
    good = [0.50, 0.52, 0.55, 0.53, 0.54, 0.56]
    close = [0.49, 0.50, 0.51, 0.52, 0.49, 0.50, 0.51, 0.52]
    assert all(noise_band("val_accuracy", c, 0.56, n_val) > 0.56 - c for c in close)
    steps = pruned_at(make_pruner(kind, 20, n_val), [*good, *close, 0.15], epochs=20, steps_per_epoch=30)
    assert steps[: len(good) + len(close)] == [None] * (len(good) + len(close))
    assert steps[-1] is not None


@pytest.mark.parametrize("kind", ["hyperband", "median"])
def test_all_trials_at_chance_are_not_cut(kind: str) -> None:
    """20 classes, every trial still at chance: their differences are coin flips."""
    chance = [0.05, 0.043, 0.06, 0.047, 0.053, 0.04, 0.057, 0.05, 0.063, 0.037, 0.05, 0.045]
    steps = pruned_at(make_pruner(kind, 10, 300), chance, epochs=10, steps_per_epoch=25)
    assert steps == [None] * len(chance)


def test_the_reason_names_the_comparison_and_the_gap() -> None:
    pruner = make_pruner("median", 20, 300)
    pruned_at(pruner, [0.8, 0.82, 0.81, 0.1], epochs=20, steps_per_epoch=30)
    reason = pruner.reason(3)
    assert reason is not None
    assert "val_accuracy 0.1000 against the median of 3 completed trials at epoch 2" in reason
    assert "0.7100 worse" in reason and "noise band" in reason and "300 validation images" in reason


def test_without_a_recorded_budget_the_inner_pruner_decides_at_once() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 10, 300))
    for value in (0.8, 0.8, 0.8):
        study.add_trial(
            optuna.trial.create_trial(
                value=value, intermediate_values={1: value}, state=optuna.trial.TrialState.COMPLETE
            )
        )
    trial = study.ask()
    trial.report(0.1, 1)
    assert trial.should_prune()
