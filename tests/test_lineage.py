"""What a study records about itself for other tools: its dataset as an MLflow dataset input on the
study's run and on every trial's run, and its metric's name in Optuna's storage."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autocnn.data.cache import DataCache, DatasetRecord, dataset_record
from autocnn.spec.load import load_spec
from autocnn.tracking.tracker import Tracker, default_tracking_uri
from tests.conftest import digits_spec_dict, write_spec
from tests.finished_study import FinishedStudy, finished_study_in


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedStudy]:
    with finished_study_in(tmp_path_factory.mktemp("lineage")) as study:
        yield study


@pytest.mark.slow
def test_the_dataset_is_an_input_of_the_study_run_and_of_every_trial_run(study: FinishedStudy) -> None:
    tracker = Tracker(study.tracking_uri, "digits-test")
    parent = tracker.find_study_run("digits-test").info.run_id
    [dataset] = tracker.dataset_inputs(parent)
    assert dataset["name"] == "digits" and dataset["source_type"] == "code"
    assert dataset["source"] == {"tags": {"loader": "sklearn.datasets.load_digits"}}
    assert len(dataset["digest"]) == 10 and dataset["tags"] == {"mlflow.data.context": "training"}
    profile = dataset["profile"]
    assert profile["classes"] == 10 and sum(profile["images"].values()) == 1797  # scikit-learn's digits
    assert set(profile["per_class"]) == {str(d) for d in range(10)}
    assert sum(sum(splits.values()) for splits in profile["per_class"].values()) == 1797
    trials = tracker.trial_runs(parent)
    assert len(trials) == study.result.ran
    for run in trials:
        assert [d["digest"] for d in tracker.dataset_inputs(run.info.run_id)] == [dataset["digest"]]


@pytest.mark.slow
def test_optuna_trials_shows_the_metric_name(study: FinishedStudy) -> None:
    optuna_cli = Path(sys.executable).parent / "optuna"
    command = [str(optuna_cli), "trials", "--study-name", "digits-test", "--storage", study.result.storage]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ)).stdout
    assert "val_accuracy" in out, out


def _record(spec_path: Path) -> DatasetRecord:
    spec = load_spec(spec_path)
    cache = DataCache(spec.data, seed=spec.seed)
    return dataset_record(cache, cache.get())


def test_an_image_folder_is_a_local_source_whose_digest_follows_the_file_list(
    image_folder: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, digits_spec_dict(data={"source": "imagefolder", "root": str(image_folder)}))
    record = _record(spec)
    assert record.local and record.source == str(image_folder) and record.name == "images"
    assert record.profile["per_class"].keys() == {"cat", "dog", "fox"}
    assert all(sum(splits.values()) == 12 for splits in record.profile["per_class"].values())
    assert _record(spec).digest == record.digest  # the same files, the same digest

    (image_folder / "dog" / "img_000.png").rename(image_folder / "dog" / "renamed.png")
    assert _record(spec).digest != record.digest


def test_logging_the_same_dataset_again_adds_no_second_input(image_folder: Path, tmp_path: Path, in_tmp: Path) -> None:
    record = _record(write_spec(tmp_path, digits_spec_dict(data={"source": "imagefolder", "root": str(image_folder)})))
    tracker = Tracker(default_tracking_uri(), "lineage-test")
    run_id = tracker.open_study_run("lineage-test", spec_text="", storage="sqlite:///x.db")
    tracker.log_dataset(run_id, record)
    tracker.log_dataset(run_id, record)  # a resumed study logs it again
    [dataset] = tracker.dataset_inputs(run_id)
    assert dataset["source_type"] == "local" and dataset["source"] == {"uri": str(image_folder)}
    assert dataset["profile"] == record.profile
