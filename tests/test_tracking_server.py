"""An MLflow tracking server that dies mid-study and comes back: the study finishes, nothing lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from autocnn.search.storage import open_study, storage_url
from autocnn.spec.load import load_spec
from autocnn.tracking.tracker import STATE_TAG, TRIAL_TAG, Tracker
from tests.conftest import digits_spec_dict, write_spec
from tests.local_servers import free_port, wait_until_answering
from tests.mlflow_store import template

pytestmark = pytest.mark.slow

SPEC = digits_spec_dict(
    study={"trials": 2, "pruner": "none", "sampler": "random", "defaults": False},
    data={"image_size": 16},
    train={"epochs": 2},
)


def start_server(folder: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1 over a SQLite store in `folder`: the same store across restarts."""
    mlflow = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its gunicorn or uvicorn workers die with it
    )
    wait_until_answering(f"http://127.0.0.1:{port}/health", process, log)
    return process


def kill_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def wait_for_a_running_trial(spec_path: Path, study_proc: subprocess.Popen, number: int) -> None:
    spec = load_spec(spec_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert study_proc.poll() is None, study_proc.stdout.read()
        try:
            trials = open_study(spec, storage_url(spec)).trials
        except Exception:  # noqa: BLE001 - the study is not created yet
            trials = []
        if any(t.number == number and t.state.name == "RUNNING" and t.intermediate_values for t in trials):
            return
        time.sleep(0.2)
    pytest.fail(f"trial {number} never reported an epoch")


def test_a_tracking_server_killed_mid_trial_and_restarted_loses_nothing(in_tmp: Path) -> None:
    store = in_tmp / "server"
    store.mkdir()
    shutil.copyfile(template(), store / "mlflow.db")  # its tables made, as a server's store would be
    log = in_tmp / "server.log"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(store, port, log)
    spec_path = write_spec(in_tmp, SPEC)
    study = subprocess.Popen(
        [sys.executable, "-m", "autocnn", "study", "spec.yaml", "--tracking-uri", uri],
        cwd=in_tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        wait_for_a_running_trial(spec_path, study, 0)
        kill_server(server)  # mid-trial: its epochs' metrics have nowhere to go while it starts again
        server = start_server(store, port, log)
        out, _ = study.communicate(timeout=600)
    finally:
        if study.poll() is None:
            study.kill()
        kill_server(server)
    assert study.returncode == 0, out
    spec = load_spec(spec_path)
    trials = open_study(spec, storage_url(spec)).trials
    stored = f"sqlite:///{store / 'mlflow.db'}"  # what the server kept, read from its own store
    tracker = Tracker(stored, spec.experiment_name)
    parent = tracker.find_study_run(spec.name)
    runs = {int(r.data.tags[TRIAL_TAG]): r for r in tracker.trial_runs(parent.info.run_id)}
    assert sorted(runs) == [t.number for t in trials]  # one to one
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    client = MlflowClient(stored)
    for trial in trials:
        run = runs[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags[STATE_TAG] == "COMPLETE"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == [1, 2], (trial.number, steps)  # every epoch's metric arrived, once
    assert parent.info.status != "RUNNING"
