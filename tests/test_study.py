"""End to end on digits: Optuna and MLflow agree one to one, and a study resumes."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest

from autocnn.search.defaults import DEFAULT_ATTR
from autocnn.search.options import StudyOptions
from autocnn.search.storage import open_study, storage_url
from autocnn.search.study import run_study
from autocnn.spec.load import load_spec
from autocnn.tracking.tracker import RUN_STATUS, STATE_TAG, TRIAL_TAG, Tracker, default_tracking_uri
from autocnn.training.budget import BUDGET_ATTR
from tests.conftest import digits_spec_dict, write_spec

pytestmark = pytest.mark.slow


def trial_runs(spec_name: str) -> list[mlflow.entities.Run]:
    tracker = Tracker(default_tracking_uri(), spec_name)
    parent = tracker.find_study_run(spec_name)
    assert parent is not None
    return tracker.trial_runs(parent.info.run_id)


def assert_one_to_one(study: optuna.Study, runs: list[mlflow.entities.Run]) -> None:
    by_number = {int(r.data.tags[TRIAL_TAG]): r for r in runs}
    assert len(by_number) == len(runs) == len(study.trials)
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.data.tags[STATE_TAG] == trial.state.name
        assert run.info.status == RUN_STATUS[trial.state.name]
        assert {k: str(v) for k, v in trial.params.items()} == {k: run.data.params[k] for k in trial.params}
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_study_runs_then_resumes_only_missing_trials(in_tmp: Path) -> None:
    spec_path = write_spec(in_tmp / "studies", digits_spec_dict(study={"trials": 3, "pruner": "none"}))
    spec = load_spec(spec_path)
    first = run_study(spec)
    assert first.ran == 3 and first.counts["COMPLETE"] == 3
    assert (in_tmp / "studies" / "digits-test.optuna.db").exists()
    assert (in_tmp / "mlruns" / "mlflow.db").exists()

    second = run_study(spec, StudyOptions(trials=5))
    assert second.ran == 2
    study = open_study(spec, storage_url(spec))
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    runs = trial_runs(spec.name)
    assert_one_to_one(study, runs)
    # Resumed params are new points, not a replay of the first trials (sampler seed moved on).
    assert study.trials[3].params != study.trials[0].params
    # Trial 0 is the default configuration, moved inside the spec's ranges, and says so.
    assert study.trials[0].user_attrs[DEFAULT_ATTR] == "custom_cnn"
    assert study.trials[0].params == {"model": "custom_cnn", "models.custom_cnn.depth": 3, "train.lr": 1e-3}
    assert [t.number for t in study.trials if DEFAULT_ATTR in t.user_attrs] == [0]
    tags = {int(r.data.tags[TRIAL_TAG]): r.data.tags.get(DEFAULT_ATTR) for r in runs}
    assert tags == {0: "true", 1: None, 2: None, 3: None, 4: None}

    third = run_study(spec, StudyOptions(trials=5))
    assert third.ran == 0 and len(trial_runs(spec.name)) == 5

    best = study.best_trial
    client = mlflow.MlflowClient(default_tracking_uri())
    best_run = client.get_run(best.user_attrs["mlflow_run_id"])
    history = client.get_metric_history(best_run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert best_run.data.metrics["val_accuracy"] == pytest.approx(history[-1].value)
    for metric in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_macro_f1",
        "lr",
        "epoch_seconds",
        "train_images_per_s",
    ):
        assert len(client.get_metric_history(best_run.info.run_id, metric)) == 2
    artifacts = {a.path for a in client.list_artifacts(best_run.info.run_id)}
    assert {"config.yaml", "confusion_matrix.png", "per_class_metrics.json", "weights"} <= artifacts
    parent = Tracker(default_tracking_uri(), spec.name).find_study_run(spec.name)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["autocnn.best_model_trial"] == str(best.number)
    mlflow.set_tracking_uri(default_tracking_uri())  # the fluent API reads the process-wide URI
    model = mlflow.pytorch.load_model(parent.data.tags["autocnn.best_model_uri"])
    assert sum(p.numel() for p in model.parameters()) > 0
    assert parent.data.metrics["n_complete"] == 5


def test_pruned_and_failed_trials_match_too(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autocnn.models.build

    real_build = autocnn.models.build.build_model

    def flaky_build(name: str, params: dict, **kwargs: object):  # a model that cannot be built
        if params["width"] == 8:
            raise RuntimeError("simulated: cannot build width 8")
        return real_build(name, params, **kwargs)

    monkeypatch.setattr(autocnn.models.build, "build_model", flaky_build)
    spec_dict = digits_spec_dict(
        study={"trials": 5, "pruner": "median", "sampler": "random"},
        train={"epochs": 4, "lr": {"low": 1e-5, "high": 1e-2, "log": True}},
        models={"custom_cnn": {"depth": 3, "width": {"choices": [8, 16]}}},
    )
    spec = load_spec(write_spec(in_tmp, spec_dict))
    result = run_study(spec)
    study = open_study(spec, storage_url(spec))
    runs = trial_runs(spec.name)
    assert_one_to_one(study, runs)
    failed = [r for r in runs if r.data.tags[STATE_TAG] == "FAIL"]
    assert failed, "the width-8 trials fail"
    for run in failed:
        assert run.data.tags["autocnn.reason"] == "RuntimeError: simulated: cannot build width 8"
    for run in runs:
        if run.data.tags[STATE_TAG] == "PRUNED":
            assert run.data.tags["autocnn.reason"].startswith("pruned at epoch")
    # failed trials do not count toward the target
    assert result.counts["COMPLETE"] + result.counts["PRUNED"] == 5


def test_a_timeout_only_study_keeps_starting_trials_until_the_time_is_spent(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import autocnn.search.session
    import autocnn.search.trial
    import autocnn.spec.schema

    monkeypatch.setattr(autocnn.spec.schema, "DEFAULT_TRIALS", 1)
    monkeypatch.setattr(autocnn.search.session, "DEFAULT_TRIALS", 1)
    monkeypatch.setattr(autocnn.search.trial, "run_trial", lambda ctx, trial, config, run_id: 0.5)  # no training
    monkeypatch.setattr(autocnn.search.session, "log_best_model", lambda *args: None)  # so no weights either
    spec_dict = digits_spec_dict(study={"timeout": 2, "pruner": "none", "defaults": False})
    del spec_dict["study"]["trials"]
    spec = load_spec(write_spec(in_tmp, spec_dict))
    assert spec.study.trials is None and spec.study.target_trials is None
    start = time.monotonic()
    result = run_study(spec)
    assert time.monotonic() - start >= 2
    assert result.counts["COMPLETE"] >= 2  # no trial target: more than the (patched) default of 1
    study = open_study(spec, storage_url(spec))
    assert not [t for t in study.trials if DEFAULT_ATTR in t.user_attrs]  # study.defaults: false


def test_an_auto_epochs_trial_stops_by_itself(in_tmp: Path) -> None:
    spec_dict = digits_spec_dict(
        study={"trials": 1, "pruner": "none"},
        train={"epochs": "auto", "batch_size": 64, "lr": 3e-3},
        models={"custom_cnn": {"depth": 3, "width": 16}},
    )
    spec = load_spec(write_spec(in_tmp, spec_dict))
    run_study(spec)
    (trial,) = open_study(spec, storage_url(spec)).trials
    budget = trial.user_attrs[BUDGET_ATTR]
    # 1,077 training images at batch 64: 16 steps an epoch; a 1,000-step cap; a 150-step patience.
    assert budget == {"steps_per_epoch": 16, "epochs": 63, "patience": 10, "auto": True}
    assert trial.state.name == "COMPLETE"
    epochs = len(trial.intermediate_values)
    assert 8 <= epochs < 63  # past the judge floor, then stopped by the plateau, far before the cap


@pytest.mark.slow
def test_a_timeout_stops_the_running_trial_after_its_epoch_and_keeps_its_result(in_tmp: Path) -> None:
    """study.timeout is a promise: a trial far from its last epoch at the deadline stops after the
    epoch it is in, COMPLETE with its best epoch's value, and its MLflow run says why."""
    from autocnn.search.trial import STOPPED_AT_DEADLINE_ATTR

    raw = digits_spec_dict(study={"timeout": 2, "pruner": "none", "defaults": False}, train={"epochs": 400, "lr": 1e-3})
    spec = load_spec(write_spec(in_tmp, raw))
    result = run_study(spec, StudyOptions())
    study = open_study(spec, storage_url(spec))
    (trial,) = study.get_trials(deepcopy=False)  # the first trial was still running at the deadline
    stopped = trial.user_attrs[STOPPED_AT_DEADLINE_ATTR]
    assert trial.state.name == "COMPLETE" and result.counts["COMPLETE"] == 1
    assert 1 <= stopped < 400 and sorted(trial.intermediate_values) == list(range(1, stopped + 1))
    assert trial.value == max(trial.intermediate_values.values())
    (run,) = trial_runs(spec.name)
    assert run.data.tags[STOPPED_AT_DEADLINE_ATTR] == str(stopped) and run.info.status == "FINISHED"
