"""The MLflow writer: per-epoch metrics are gathered and sent in few batches, none lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autocnn.tracking.tracker import Tracker, default_tracking_uri


def test_epoch_metrics_are_sent_in_few_batches_and_all_arrive_by_the_trials_end(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = Tracker(default_tracking_uri(), "tracking-test")
    parent = tracker.open_study_run("tracking-test", spec_text="name: tracking-test\n", storage="sqlite:///x.db")
    run_id = tracker.start_trial(parent, 0, {"model": "custom_cnn"}, {"train": {}})
    batches: list[int] = []
    log_batch = tracker._client.log_batch

    def counting_log_batch(run_id: str, **kwargs: Any) -> None:
        batches.append(len(kwargs["metrics"]))
        log_batch(run_id, **kwargs)

    monkeypatch.setattr(tracker._client, "log_batch", counting_log_batch)
    for step in range(1, 31):  # 30 quick epochs, well inside a second
        tracker.log_epoch(run_id, {"val_accuracy": step / 100, "train_loss": 1 / step}, step=step)
    tracker.end_trial(run_id, "COMPLETE")
    assert sum(batches) == 60 and len(batches) <= 3  # the first epoch at once, the rest together
    history = tracker._client.get_metric_history(run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(s, s / 100) for s in range(1, 31)]


@pytest.mark.parametrize("callers", [None, "sqlite:///elsewhere.db"])
def test_logging_a_model_leaves_the_callers_tracking_uri_and_environment_as_they_were(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, callers: str | None
) -> None:
    """A study logs its best model through MLflow's fluent API; the tracking URI it points that at
    must not stay in MLFLOW_TRACKING_URI, which every later subprocess would inherit."""
    import os

    import mlflow
    import torch

    if callers is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", callers)
    before = mlflow.get_tracking_uri()
    tracker = Tracker(default_tracking_uri(in_tmp / "store"), "fluent-test")
    parent = tracker.open_study_run("fluent-test", spec_text="name: fluent-test\n", storage="sqlite:///x.db")
    uri = tracker.log_model(parent, torch.nn.Linear(2, 2))
    assert uri and os.environ.get("MLFLOW_TRACKING_URI") == callers
    assert mlflow.get_tracking_uri() == before


def test_an_orphan_closed_by_another_worker_at_the_same_moment_is_left_to_it(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.exceptions import MlflowException

    ours = Tracker(default_tracking_uri(), "orphan-test")
    parent = ours.open_study_run("orphan-test", spec_text="name: orphan-test\n", storage="sqlite:///x.db")
    run_id = ours.start_trial(parent, 0, {"model": "custom_cnn"}, {"train": {}})
    theirs = Tracker(default_tracking_uri(), "orphan-test")
    end_trial = ours.end_trial

    def collides(run: str, state: str, *, reason: str | None = None) -> None:
        theirs.end_trial(run, state, reason=reason)  # the other worker wins the race ...
        raise MlflowException("duplicate key value violates unique constraint")  # ... our insert loses

    monkeypatch.setattr(ours, "end_trial", collides)
    assert ours.close_orphan(run_id, "killed: its process died") is False
    assert ours._client.get_run(run_id).info.status == "KILLED"
    monkeypatch.setattr(ours, "end_trial", end_trial)
    other = ours.start_trial(parent, 1, {"model": "custom_cnn"}, {"train": {}})
    assert ours.close_orphan(other, "killed: its process died") is True
