"""Many workers on one study: local `workers`, independent processes on a shared PostgreSQL
storage and MLflow server, a killed worker's trial resumed by another, stores opened together."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest

from autocnn import StudyOptions, build_report, load_spec, run_study
from autocnn.errors import StudyError
from autocnn.search.resume import OWNER_ATTR, RESUME_FROM_ATTR, RESUMED_AT_ATTR, RETRY_OF_ATTR
from autocnn.search.session import PARENT_RUN_ATTR
from autocnn.search.storage import open_storage, open_study, storage_url
from autocnn.search.workers import worker_setups
from autocnn.spec.schema import Spec
from autocnn.tracking.tracker import RUN_STATUS, STATE_TAG, TRIAL_TAG, Tracker, default_tracking_uri
from tests.conftest import digits_spec_dict, write_spec
from tests.local_servers import free_port, wait_until_answering
from tests.mlflow_store import seed_store
from tests.postgres import temporary_database

# A trial's MLflow run status for its Optuna state; a trial whose worker was killed is FAIL in
# Optuna and KILLED in MLflow.
ALLOWED_STATUS = {**{state: {status} for state, status in RUN_STATUS.items()}, "FAIL": {"FAILED", "KILLED"}}


def test_each_worker_gets_an_equal_share_of_the_cores_and_a_gpu_in_turn() -> None:
    assert [s.threads for s in worker_setups(2, cores=2, gpus=0)] == [1, 1]
    assert [s.threads for s in worker_setups(3, cores=16, gpus=0)] == [5, 5, 5]
    assert [s.threads for s in worker_setups(4, cores=2, gpus=0)] == [1, 1, 1, 1]  # at least one
    assert [s.gpu for s in worker_setups(3, cores=8, gpus=2)] == ["0", "1", "0"]
    assert [s.gpu for s in worker_setups(2, cores=8, gpus=0)] == [None, None]


def test_a_spec_travels_to_a_worker_process_unchanged(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, digits_spec_dict(train={"epochs": "auto"})))
    copy = pickle.loads(pickle.dumps(spec))
    assert copy.model_dump() == spec.model_dump() and copy.path == spec.path


def open_both_stores(folder: str) -> None:
    open_storage(f"sqlite:///{folder}/study.optuna.db")
    Tracker(f"sqlite:///{folder}/mlruns/mlflow.db", "together")


@pytest.mark.slow
def test_processes_opening_new_sqlite_stores_together_make_their_tables_once(tmp_path: Path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=open_both_stores, args=(str(tmp_path),)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0], "no 'table already exists' in any of them"
    assert Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "together").experiment_id


# --------------------------------------------------------------------------- end to end


def trial_runs(tracking_uri: str, name: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    tracker = Tracker(tracking_uri, name)
    parent = tracker.find_study_run(name)
    assert parent is not None
    return parent, tracker.trial_runs(parent.info.run_id)


def assert_one_to_one(study: optuna.Study, parent: mlflow.entities.Run, runs: list[mlflow.entities.Run]) -> None:
    """Every trial that started has exactly one run under the one parent, in the same state."""
    started = [t for t in study.trials if t.state.name != "WAITING"]
    by_number = {int(r.data.tags[TRIAL_TAG]): r for r in runs}
    assert len(by_number) == len(runs), "one MLflow run per trial"
    assert sorted(by_number) == [t.number for t in started]
    for trial in started:
        run = by_number[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags[STATE_TAG] == trial.state.name
        assert run.info.status in ALLOWED_STATUS[trial.state.name], (trial.number, run.info.status)
    assert study.user_attrs[PARENT_RUN_ATTR] == parent.info.run_id
    assert parent.info.status == "FINISHED"


def assert_total_within_bound(study: optuna.Study, target: int, workers: int) -> None:
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert target <= len(done) <= target + workers - 1
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers))), "trial numbers are unique and dense"


def parent_runs(tracking_uri: str, name: str) -> int:
    experiment = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(name)
    found = mlflow.MlflowClient(tracking_uri).search_runs(
        [experiment.experiment_id], filter_string="tags.`autocnn.role` = 'study'"
    )
    return len(found)


def logged_models(tracking_uri: str, name: str) -> int:
    experiment = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(name)
    return len(mlflow.MlflowClient(tracking_uri).search_logged_models(experiment_ids=[experiment.experiment_id]))


@pytest.mark.slow
def test_two_local_workers_share_the_default_storage(in_tmp: Path) -> None:
    spec = load_spec(write_spec(in_tmp, digits_spec_dict(study={"trials": 4, "pruner": "none"})))
    result = run_study(spec, StudyOptions(workers=2))

    study = open_study(spec, storage_url(spec))
    assert_total_within_bound(study, target=4, workers=2)
    assert result.counts["FAIL"] == 0  # no "database is locked", nor anything else
    owners = {t.user_attrs[OWNER_ATTR] for t in study.trials}
    assert len(owners) == 2 and f":{os.getpid()}" not in " ".join(owners), "trials ran in the two workers"
    parent, runs = trial_runs(default_tracking_uri(), spec.name)
    assert_one_to_one(study, parent, runs)
    assert parent.data.tags["autocnn.best_model_trial"] == str(result.best_number)
    assert logged_models(default_tracking_uri(), spec.name) == 1, "the best model is logged once"
    page = build_report(spec).path.read_text()
    assert all(owner in page for owner in owners), "the report says which worker ran each trial"
    assert live_children(os.getpid()) == [], "no worker, nor the fork server, outlives the study"


def process_state(pid: str | int) -> tuple[str, int] | None:
    """A process's state letter and parent pid, from /proc; None once it is gone."""
    try:
        state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return None
    return state, int(parent)


def live_children(pid: int) -> list[str]:
    """Processes whose parent is `pid` and that still run (not zombies), but for the resource
    tracker multiprocessing keeps for the life of the process."""
    found = []
    for entry in Path("/proc").iterdir():
        stat = process_state(entry.name) if entry.name.isdigit() else None
        if stat is None:
            continue
        state, parent = stat
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if parent == pid and state != "Z" and "resource_tracker" not in command:
            found.append(f"{entry.name}: {command}")
    return found


def is_running(pid: int) -> bool:
    found = process_state(pid)
    return found is not None and found[0] != "Z"


def start_workers_until_both_train(folder: Path, spec: Spec) -> tuple[subprocess.Popen, list[int]]:
    """`autocnn study --workers 2` on a 2-trial study, once both workers train a trial (an epoch
    reported: past the trial's setup, as in test_resume): the starter, and the workers' pids.
    The default MLflow store's tables are made beforehand (tests/mlflow_store.py)."""
    seed_store(folder)
    starter = start_worker(folder, "--workers", "2", log=folder / "starter.log")
    deadline = time.monotonic() + 240
    running: list[optuna.trial.FrozenTrial] = []
    while len(running) < 2:
        assert starter.poll() is None and time.monotonic() < deadline, (folder / "starter.log").read_text()
        time.sleep(0.2)
        if not (folder / f"{spec.name}.optuna.db").exists():
            continue  # opening it here would make it before the starter does
        try:  # through autocnn's storage, which waits for the starter to finish making its tables
            study = optuna.load_study(study_name=spec.name, storage=open_storage(storage_url(spec)))
        except KeyError:  # the tables are there, the study not yet
            continue
        trials = study.get_trials(deepcopy=False)
        running = [
            t for t in trials if t.state.name == "RUNNING" and t.intermediate_values and OWNER_ATTR in t.user_attrs
        ]
    return starter, [int(t.user_attrs[OWNER_ATTR].rsplit(":", 1)[1]) for t in running]


def assert_stopped_to_resume(spec: Spec, pids: list[int]) -> optuna.Study:
    """Both workers have ended, and what they ran waits to resume rather than stays RUNNING."""
    deadline = time.monotonic() + 120
    while any(is_running(pid) for pid in pids):  # each stops the graceful way, its trial queued
        assert time.monotonic() < deadline, f"workers {pids} outlived their starter"
        time.sleep(0.1)
    study = open_study(spec, storage_url(spec))
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    queued_from = {t.user_attrs.get(RESUME_FROM_ATTR) for t in study.trials if t.state.name == "WAITING"}
    stopped = [t.number for t in study.trials if t.state.name == "FAIL"]
    assert stopped and set(stopped) <= queued_from, "each stopped trial waits to resume from its checkpoint"
    return study


# Long enough (3 s or more each; the two workers reach their first epoch within an epoch or two of
# each other) that neither ends between the test seeing both run and its signal; no longer, since
# the resume trains what is left of both.
TWO_SLOW_TRIALS = digits_spec_dict(study={"trials": 2, "pruner": "none"}, data={"image_size": 32}, train={"epochs": 10})


@pytest.mark.slow
def test_ctrl_c_stops_both_workers_and_closes_their_runs(in_tmp: Path) -> None:
    spec = load_spec(write_spec(in_tmp, TWO_SLOW_TRIALS))
    starter, pids = start_workers_until_both_train(in_tmp, spec)
    starter.send_signal(signal.SIGINT)
    assert starter.wait(timeout=120) == 130
    output = (in_tmp / "starter.log").read_text()
    assert "stopping 2 workers" in output and "exited with code" not in output, output[-3000:]
    study = assert_stopped_to_resume(spec, pids)
    parent, runs = trial_runs(default_tracking_uri(), spec.name)
    assert not [r for r in runs if r.info.status == "RUNNING"] and parent.info.status == "KILLED"
    assert {int(r.data.tags[TRIAL_TAG]) for r in runs} == {t.number for t in study.trials if t.state.name != "WAITING"}


@pytest.mark.slow
def test_workers_whose_starter_is_killed_stop_and_the_study_resumes(in_tmp: Path) -> None:
    spec = load_spec(write_spec(in_tmp, TWO_SLOW_TRIALS))
    starter, pids = start_workers_until_both_train(in_tmp, spec)
    starter.kill()
    starter.wait(timeout=30)
    assert_stopped_to_resume(spec, pids)

    rerun = subprocess.run([sys.executable, "-m", "autocnn", "study", "spec.yaml"], cwd=in_tmp, capture_output=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    study = open_study(spec, storage_url(spec))
    parent, runs = trial_runs(default_tracking_uri(), spec.name)
    assert_one_to_one(study, parent, runs)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) >= 2


def start_worker(folder: Path, *args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "autocnn", "study", "spec.yaml", *args],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )


def finish(workers: list[subprocess.Popen], logs: list[Path], timeout: float = 600) -> None:
    for worker, log in zip(workers, logs, strict=True):
        worker.wait(timeout=timeout)
        assert worker.returncode == 0, log.read_text()[-3000:]


@pytest.fixture
def database() -> Iterator[str]:
    with temporary_database() as url:
        yield url


def first_round_trial_with_checkpoint(
    study: optuna.Study, checkpoints: Path, *, workers: int, epochs: int
) -> optuna.trial.FrozenTrial | None:
    """One of the first trials, past its first epoch, its checkpoint on disk, with epochs to go:
    killed then, its retry is sure to run before the study's total is reached."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number >= workers or not 1 <= len(trial.intermediate_values) < epochs:
            continue
        if (checkpoints / f"trial-{trial.number}.pt").exists():
            return trial
    return None


def wait_for_study(spec: Spec, storage: str, workers: list[subprocess.Popen], logs: list[Path]) -> optuna.Study:
    deadline = time.monotonic() + 300
    while True:
        assert all(w.poll() is None for w in workers), [log.read_text()[-2000:] for log in logs]
        try:
            return open_study(spec, storage)
        except StudyError:
            assert time.monotonic() < deadline, "the workers never created the study"
            time.sleep(0.2)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real tracking server: PostgreSQL backend, artifacts it serves from a local folder."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    with temporary_database() as backend, open(log, "w") as out:
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend]
        command += ["--artifacts-destination", (tmp_path / "artifacts").as_uri()]
        command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_answering(f"{url}/health", server, log)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


EPOCHS = 4


@pytest.mark.slow
def test_three_workers_on_postgresql_and_an_mlflow_server_one_killed_mid_trial(
    in_tmp: Path, database: str, mlflow_server: str
) -> None:
    """Three `autocnn study` processes started together, as on three machines, sharing a study
    on PostgreSQL and an MLflow server; one is killed with SIGKILL inside a trial, and another
    retries that trial from its checkpoint. Every run nests under the one parent run."""
    spec_dict = digits_spec_dict(
        study={"trials": 4, "pruner": "none", "sampler": "random"}, data={"image_size": 24}, train={"epochs": EPOCHS}
    )
    spec = load_spec(write_spec(in_tmp, spec_dict))
    logs = [in_tmp / f"worker-{i}.log" for i in range(3)]
    workers = [start_worker(in_tmp, "--storage", database, "--tracking-uri", mlflow_server, log=log) for log in logs]

    checkpoints = in_tmp / ".autocnn" / spec.name / "checkpoints"
    study = wait_for_study(spec, database, workers, logs)
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, "none of the first trials was caught between two checkpoints"
        assert all(w.poll() is None for w in workers), [log.read_text()[-2000:] for log in logs]
        victim = first_round_trial_with_checkpoint(study, checkpoints, workers=3, epochs=EPOCHS)
        time.sleep(0.05)
    pid = int(victim.user_attrs[OWNER_ATTR].rpartition(":")[2])
    killed = next(w for w in workers if w.pid == pid)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    survivors = [w for w in workers if w is not killed]
    finish(survivors, [log for w, log in zip(workers, logs, strict=True) if w is not killed])

    study = open_study(spec, database)
    assert_total_within_bound(study, target=4, workers=3)
    assert study.trials[victim.number].state.name == "FAIL"
    (retry,) = [t for t in study.trials if t.user_attrs.get(RESUME_FROM_ATTR) == victim.number]
    assert retry.user_attrs[RETRY_OF_ATTR] == victim.number and retry.params == victim.params
    assert retry.state.name == "COMPLETE" and retry.user_attrs[OWNER_ATTR] != victim.user_attrs[OWNER_ATTR]
    assert retry.user_attrs[RESUMED_AT_ATTR] >= 1, "the retry continued from the checkpoint"
    assert sorted(retry.intermediate_values) == list(range(1, EPOCHS + 1))
    assert parent_runs(mlflow_server, spec.name) == 1, "the parent run is created exactly once"
    parent, runs = trial_runs(mlflow_server, spec.name)
    assert_one_to_one(study, parent, runs)  # the victim's and its retry's workers both nest under it
    assert logged_models(mlflow_server, spec.name) == 1, "the best model is logged once"
    assert not (in_tmp / "mlruns").exists(), "nothing fell back to the local store"
    assert not list(checkpoints.parent.rglob("*.pt")), "checkpoints are deleted when trials end"
    assert "View run" not in "".join(log.read_text() for log in logs), "MLflow's links do not flood the output"


def test_a_worker_that_ends_gives_its_cores_to_the_others() -> None:
    import multiprocessing

    from autocnn.search.options import SilentReporter
    from autocnn.search.workers import SHARE_SIGNAL, Relay

    told: list[int] = []
    previous = signal.signal(SHARE_SIGNAL, lambda signum, frame: told.append(signum))
    try:
        context = multiprocessing.get_context("spawn")
        alive = context.Value("i", 2)
        (staying_in, staying_out), (ending_in, ending_out) = context.Pipe(False), context.Pipe(False)
        relay = Relay({staying_in: 0, ending_in: 1}, SilentReporter(), [], alive)
        staying_out.send(("ready", (os.getpid(),)))  # this process stands in for the worker that stays
        relay._receive(staying_in)
        ending_out.close()  # the other worker ends
        relay._receive(ending_in)
        assert alive.value == 1 and told == [SHARE_SIGNAL]
        assert list(relay.pipes) == [staying_in]
    finally:
        signal.signal(SHARE_SIGNAL, previous)


class _Clock:
    """time.monotonic and time.sleep for the study loop: sleeping advances the clock, and runs
    `on_sleep` (another worker's move) instead of waiting."""

    def __init__(self, on_sleep: object = None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        if callable(self.on_sleep):
            self.on_sleep()


def _patch_clock(monkeypatch: pytest.MonkeyPatch, clock: _Clock) -> None:
    import autocnn.search.session

    monkeypatch.setattr(autocnn.search.session.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(autocnn.search.session.time, "sleep", clock.sleep)


def test_a_study_made_outside_autocnn_does_not_wait_for_a_parent_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from autocnn.search.session import CREATOR_GRACE_S, recorded_parent_run

    queued = optuna.create_study()
    queued.enqueue_trial({"model": "custom_cnn"})  # as from a notebook, before `autocnn study`
    clock = _Clock()
    _patch_clock(monkeypatch, clock)
    assert recorded_parent_run(queued) is None and clock.sleeps == 0

    empty = optuna.create_study()  # unmarked and empty: only the short grace
    assert recorded_parent_run(empty) is None
    assert CREATOR_GRACE_S <= clock.now <= CREATOR_GRACE_S + 0.5


def test_a_worker_waits_for_the_parent_run_of_the_study_autocnn_created(monkeypatch: pytest.MonkeyPatch) -> None:
    from autocnn.search.session import CREATOR_ATTR, CREATOR_GRACE_S, recorded_parent_run

    study = optuna.create_study()
    study.set_user_attr(CREATOR_ATTR, "host:1")
    study.enqueue_trial({"model": "custom_cnn"})  # its default trial, queued before the run exists

    def creator_records_after_a_while() -> None:
        if clock.now > 2 * CREATOR_GRACE_S:
            study.set_user_attr(PARENT_RUN_ATTR, "run-1")

    clock = _Clock(creator_records_after_a_while)
    _patch_clock(monkeypatch, clock)
    assert recorded_parent_run(study) == "run-1" and clock.now > 2 * CREATOR_GRACE_S
