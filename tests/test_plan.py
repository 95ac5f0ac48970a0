"""The plan `validate` prints and `study` warns from: steps per trial, the judge floor, the time."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.data.cache import DataCache
from autocnn.search.plan import describe, input_sizes, make_plan
from autocnn.spec.load import parse_spec
from autocnn.training.budget import auto_epochs, improvement_margin, judge_floor_steps, noise_band, steps_per_epoch
from tests.conftest import digits_spec_dict, write_spec

# digits with val 0.2 and test 0.2: 1,077 training and 360 validation images
N_TRAIN = 1077


def plan_of(**overrides: object):  # type: ignore[no-untyped-def]
    spec = parse_spec(digits_spec_dict(**overrides))
    return spec, make_plan(spec, DataCache(spec.data, seed=spec.seed).get())


def test_steps_are_counted_per_batch_size_and_epochs() -> None:
    _, plan = plan_of(train={"epochs": {"low": 5, "high": 20}, "batch_size": {"choices": [32, 128]}})
    assert plan.n_train == N_TRAIN and plan.n_val == 360
    assert plan.steps_per_epoch(32) == 33 and plan.steps_per_epoch(128) == 8
    assert plan.trial_steps() == (8 * 5, 33 * 20)


def test_too_few_steps_warns_naming_the_keys() -> None:
    _, plan = plan_of(train={"epochs": 4, "batch_size": 64})
    (warning,) = [w for w in plan.warnings if w.startswith("train.epochs, train.batch_size:")]
    assert "every trial gets 64 optimizer steps" in warning and "epochs: auto" in warning


def test_enough_steps_or_auto_gives_no_step_warning() -> None:
    for train in ({"epochs": 30, "batch_size": 32}, {"epochs": "auto", "batch_size": 64}):
        _, plan = plan_of(train=train)
        assert not [w for w in plan.warnings if w.startswith("train.epochs")], train


def test_a_judgement_before_the_floor_warns_about_the_pruner() -> None:
    # 2 epochs of 16 steps: judged after 16, half the trial, well before the 60-step floor.
    _, plan = plan_of(study={"pruner": "hyperband"}, train={"epochs": 2, "batch_size": 64})
    assert plan.first_judgement() == (1, 16)
    assert any(w.startswith("study.pruner, train.epochs:") for w in plan.warnings)
    _, quiet = plan_of(study={"pruner": "none"}, train={"epochs": 2, "batch_size": 64})
    assert not any(w.startswith("study.pruner") for w in quiet.warnings)


def test_a_timeout_the_trials_cannot_fill_warns_about_study_trials() -> None:
    spec = parse_spec(digits_spec_dict(study={"trials": 4, "timeout": "1h"}, train={"epochs": 20, "batch_size": 64}))
    data = DataCache(spec.data, seed=spec.seed).get()
    plan = make_plan(spec, data, seconds_per_step={"custom_cnn": 0.01})  # 4 trials x ~3.5 s of a 1 h budget
    (warning,) = [w for w in plan.warnings if w.startswith("study.trials:")]
    assert "remove study.trials" in warning
    rows = dict(describe(plan))
    assert rows["custom_cnn trial"].startswith("4 s") and "at full length (timed probe); " in rows["custom_cnn trial"]
    assert rows["custom_cnn trial"].endswith("such trials fit in 60 min")
    assert "trials in study.timeout" in rows


def test_each_model_familys_cost_is_shown_at_its_own_input_size_with_the_trials_that_fit() -> None:
    spec = parse_spec(
        digits_spec_dict(
            study={"timeout": "10m"},
            train={"epochs": 20, "batch_size": 64},
            models={"custom_cnn": {}, "mobilenetv2_035": {"pretrained": False, "image_size": 96}},
        )
    )
    assert input_sizes(spec) == {"custom_cnn": 16, "mobilenetv2_035": 96}
    data = DataCache(spec.data, seed=spec.seed).get()
    seconds = {"custom_cnn": 0.01, "mobilenetv2_035": 0.5}  # 20 epochs of 16 steps, plus validation: ~4 s and ~3 min
    rows = dict(describe(make_plan(spec, data, seconds_per_step=seconds, input_sizes=input_sizes(spec))))
    assert rows["mobilenetv2_035 trial at 96 px"].startswith("3.0 min at full length")
    assert rows["mobilenetv2_035 trial at 96 px"].endswith("; 3 such trials fit in 10 min")
    assert rows["custom_cnn trial at 16 px"].endswith("such trials fit in 10 min")


def test_auto_epochs_fill_the_step_target_and_fit_the_time() -> None:
    assert auto_epochs(16).cap == 63 and auto_epochs(16).patience == 10
    assert auto_epochs(400).cap == 10  # big data: at least AUTO_MIN_EPOCHS
    # 25 steps an epoch at 0.1 s a step, 10 minutes: 3 full trials leave 80 epochs each (cap 40 wins) ...
    assert auto_epochs(25, seconds_per_step=0.1, timeout=600).cap == 40
    # ... 2 minutes: 3 trials would get 32 epochs each
    assert auto_epochs(25, seconds_per_step=0.1, timeout=120).cap == 16
    # ... 30 seconds: never below the 300 steps small data needs (12 epochs)
    assert auto_epochs(25, seconds_per_step=0.1, timeout=30).cap == 12


def test_the_floor_and_the_noise() -> None:
    assert steps_per_epoch(800, 32) == 25 and steps_per_epoch(20, 32) == 1
    assert judge_floor_steps(130) == 60 and judge_floor_steps(40) == 20
    # 300 images at 50%: two scores 8 points apart are still within the noise
    assert noise_band("val_accuracy", 0.5, 0.5, 300) == pytest.approx(0.0816, abs=1e-3)
    assert noise_band("val_accuracy", 0.05, 0.06, 300) > 0.01  # at chance, a point is nothing
    assert improvement_margin("val_accuracy", 0.5, 300) < noise_band("val_accuracy", 0.5, 0.5, 300)


def test_validate_prints_the_plan_and_warns(tmp_path: Path) -> None:
    path = write_spec(tmp_path, digits_spec_dict(train={"epochs": 3, "batch_size": 64}))
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "warning: train.epochs, train.batch_size: every trial gets 48 optimizer steps" in result.output
    for row in ("steps per epoch", "16 at batch 64", "first judgement", "noise band", "custom_cnn trial"):
        assert row in result.output
