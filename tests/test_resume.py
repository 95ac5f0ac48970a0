"""Kill -9, Ctrl-C and diverging trials: the study resumes with nothing lost and nothing run twice."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.search.options import SilentReporter, StudyOptions
from autocnn.search.resume import RETRY_OF_ATTR, Checkpoints
from autocnn.search.storage import open_study, storage_url
from autocnn.search.study import run_study
from autocnn.spec.load import load_spec
from autocnn.tracking.tracker import STATE_TAG, TRIAL_TAG, Tracker, default_tracking_uri
from tests.conftest import digits_spec_dict, write_spec
from tests.mlflow_store import seed_store

pytestmark = pytest.mark.slow

SPEC = digits_spec_dict(
    study={"trials": 3, "pruner": "none", "sampler": "random"},
    data={"image_size": 32},
    train={"epochs": 4},
)
# For faults that need no trial long enough to interrupt mid-epoch: seconds per trial.
LIGHT_SPEC = digits_spec_dict(
    study={"trials": 3, "pruner": "none", "sampler": "random"}, data={"image_size": 16}, train={"epochs": 2}
)


def start_study(folder: Path) -> subprocess.Popen:
    """`autocnn study spec.yaml` in `folder`, its MLflow store's tables ready (tests/mlflow_store.py)."""
    seed_store(folder)
    return subprocess.Popen(
        [sys.executable, "-m", "autocnn", "study", "spec.yaml"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def runs_by_number(name: str) -> dict[int, mlflow.entities.Run]:
    tracker = Tracker(default_tracking_uri(), name)
    parent = tracker.find_study_run(name)
    runs = tracker.trial_runs(parent.info.run_id)
    by_number = {int(r.data.tags[TRIAL_TAG]): r for r in runs}
    assert len(by_number) == len(runs), "one MLflow run per Optuna trial"
    return by_number


def assert_consistent(folder: Path) -> tuple:
    spec = load_spec(folder / "spec.yaml")
    study = open_study(spec, storage_url(spec))
    runs = runs_by_number(spec.name)
    assert sorted(runs) == [t.number for t in study.trials]
    allowed = {"COMPLETE": {"FINISHED"}, "PRUNED": {"FINISHED"}, "FAIL": {"FAILED", "KILLED"}}
    for trial in study.trials:
        run = runs[trial.number]
        assert run.data.tags[STATE_TAG] == trial.state.name
        assert run.info.status in allowed[trial.state.name], (trial.number, run.info.status)
    parent = Tracker(default_tracking_uri(), spec.name).find_study_run(spec.name)
    assert parent.info.status != "RUNNING"
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == spec.study.trials
    assert not list((folder / ".autocnn").rglob("*.pt")), "checkpoints are deleted when trials end"
    return study, runs


def check_retry_resumed(study, runs, interrupted: int) -> None:
    assert study.trials[interrupted].state.name == "FAIL"
    assert runs[interrupted].info.status == "KILLED"
    (retry,) = [t for t in study.trials if t.user_attrs.get(RETRY_OF_ATTR) == interrupted]
    assert retry.state.name == "COMPLETE"
    assert retry.params == study.trials[interrupted].params
    run = runs[retry.number]
    assert run.data.tags["autocnn.retry_of"] == str(interrupted)
    steps = [
        m.step for m in mlflow.MlflowClient(default_tracking_uri()).get_metric_history(run.info.run_id, "val_accuracy")
    ]
    assert steps and steps[0] > 1 and steps[-1] == 4, steps  # continued after the checkpointed epoch(s)
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]


def test_sigkill_mid_epoch_then_rerun(in_tmp: Path) -> None:
    write_spec(in_tmp, SPEC)
    proc = start_study(in_tmp)
    wait_for(in_tmp / ".autocnn" / "digits-test" / "checkpoints" / "trial-1.pt", proc)
    time.sleep(0.3)  # now inside trial 1's second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    status = CliRunner().invoke(app, ["status", "spec.yaml"], env={"COLUMNS": "200"})
    assert status.exit_code == 0, status.output
    assert "stale: trial 1 is RUNNING but its process is gone" in status.output

    rerun = subprocess.run(
        [sys.executable, "-m", "autocnn", "study", "spec.yaml"], cwd=in_tmp, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "trial 1 was running when its process died" in rerun.stdout
    study, runs = assert_consistent(in_tmp)
    check_retry_resumed(study, runs, interrupted=1)


def test_status_shows_a_stopped_worker_as_frozen_and_the_study_ends_once_it_continues(in_tmp: Path) -> None:
    write_spec(in_tmp, SPEC)
    proc = start_study(in_tmp)
    wait_for(in_tmp / ".autocnn" / "digits-test" / "checkpoints" / "trial-1.pt", proc)
    proc.send_signal(signal.SIGSTOP)  # a laptop lid, Ctrl-Z: alive, doing nothing
    try:
        status = CliRunner().invoke(app, ["status", "spec.yaml"], env={"COLUMNS": "200"})
    finally:
        proc.send_signal(signal.SIGCONT)
    assert status.exit_code == 0, status.output
    assert f"frozen: trial 1 is RUNNING but its worker {socket.gethostname()}:{proc.pid} is stopped" in status.output
    assert f"kill -CONT {proc.pid}" in status.output and "stale:" not in status.output
    assert proc.wait(timeout=240) == 0
    assert_consistent(in_tmp)


def test_a_trial_silent_past_the_heartbeats_grace_period_is_frozen_on_any_host(tmp_path: Path) -> None:
    import optuna

    from autocnn.search.resume import OWNER_ATTR, frozen_trials, process_stopped

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    silent, elsewhere, stopped = study.ask(), study.ask(), study.ask()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        sleeper.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not process_stopped(sleeper.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        silent.set_user_attr(OWNER_ATTR, "another-host:4242")
        elsewhere.set_user_attr(OWNER_ATTR, "another-host:4243")
        stopped.set_user_attr(OWNER_ATTR, f"{socket.gethostname()}:{sleeper.pid}")
        storage.record_heartbeat(silent._trial_id)
        storage.record_heartbeat(elsewhere._trial_id)
        time.sleep(2.2)
        storage.record_heartbeat(elsewhere._trial_id)  # this one is still beating
        frozen = frozen_trials(study)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(frozen) == [silent.number, stopped.number]
    assert "another-host:4242 has sent no heartbeat for longer than the grace period" in frozen[silent.number]
    assert f"kill -CONT {sleeper.pid}" in frozen[stopped.number]
    assert not process_stopped(os.getpid())


def test_a_full_disk_stops_the_study_naming_the_file_and_loses_no_trial(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save reports ENOSPC as a RuntimeError raised while handling the OSError: injected
    here exactly so, at trial 1's first checkpoint write (a tmpfs cannot be mounted everywhere)."""
    write_spec(in_tmp, LIGHT_SPEC)
    real = Checkpoints._save_into
    failed: list[Path] = []

    def full_disk_at_trial_1(self: Checkpoints, file: Path, state: dict) -> None:
        if file.name == ".trial-1.spare" and not failed:
            failed.append(file)
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 704 vs 598") from None
        real(self, file, state)

    monkeypatch.setattr(Checkpoints, "_save_into", full_disk_at_trial_1)
    spec = load_spec(in_tmp / "spec.yaml")
    result = run_study(spec, StudyOptions(), SilentReporter())
    assert failed and result.stopped_reason == (
        f"disk full writing {failed[0]}: free some space, then run `autocnn study` again; "
        "trial 1 continues from its last checkpoint"
    )
    study = open_study(spec, storage_url(spec))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "WAITING"]  # stopped: no trial 3 began
    assert study.trials[2].user_attrs[RETRY_OF_ATTR] == 1
    runs = runs_by_number(spec.name)
    assert runs[1].info.status == "KILLED" and "disk full writing" in runs[1].data.tags["autocnn.reason"]
    assert all(run.info.status != "RUNNING" for run in runs.values())
    tracker = Tracker(default_tracking_uri(), spec.name)
    assert tracker.load_state_dict(runs[0].info.run_id)  # the trial before the fault kept its weights
    status = CliRunner().invoke(app, ["status", "spec.yaml"], env={"COLUMNS": "200"})
    assert "waiting: trial 2 continues trial 1" in status.output

    monkeypatch.setattr(Checkpoints, "_save_into", real)  # space is free again
    again = run_study(spec, StudyOptions(), SilentReporter())
    assert again.stopped_reason is None
    study, _runs = assert_consistent(in_tmp)
    assert study.trials[2].state.name == "COMPLETE" and study.trials[2].params == study.trials[1].params


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_mid_trial_closes_runs_then_resumes(in_tmp: Path, stop: signal.Signals) -> None:
    """Ctrl-C, a process manager's SIGTERM and a closed terminal's SIGHUP all stop a study cleanly;
    what follows (the resume) is the same whichever stopped it, so one of them goes on to it."""
    write_spec(in_tmp, SPEC)
    proc = start_study(in_tmp)
    wait_for(in_tmp / ".autocnn" / "digits-test" / "checkpoints" / "trial-0.pt", proc)
    proc.send_signal(stop)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "resume with: autocnn study spec.yaml" in out
    assert "Traceback" not in out

    spec = load_spec(in_tmp / "spec.yaml")
    runs = runs_by_number(spec.name)
    assert runs[0].info.status == "KILLED" and runs[0].data.tags[STATE_TAG] == "FAIL"
    assert "interrupted" in runs[0].data.tags["autocnn.reason"]
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    assert Tracker(default_tracking_uri(), spec.name).find_study_run(spec.name).info.status == "KILLED"
    if stop != signal.SIGINT:
        return

    rerun = subprocess.run(
        [sys.executable, "-m", "autocnn", "study", "spec.yaml"], cwd=in_tmp, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    study, runs = assert_consistent(in_tmp)
    check_retry_resumed(study, runs, interrupted=0)


def test_diverging_trials_are_pruned_with_the_reason(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loss that turns non-finite prunes the trial, with the reason. The spec refuses learning
    rates that would blow up on purpose (at most 10), so the models here scale their logits to inf."""
    import torch

    import autocnn.models.build

    real_build = autocnn.models.build.build_model

    class Diverging(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * float("inf")

    monkeypatch.setattr(autocnn.models.build, "build_model", lambda *args, **kw: Diverging(real_build(*args, **kw)))
    spec = load_spec(write_spec(in_tmp, digits_spec_dict(study={"trials": 2, "pruner": "none"}, train={"epochs": 3})))
    result = run_study(spec)
    assert result.counts["PRUNED"] == 2 and result.counts["FAIL"] == 0, result.leaderboard
    runs = runs_by_number(spec.name)
    for run in runs.values():
        assert run.data.tags[STATE_TAG] == "PRUNED" and run.info.status == "FINISHED"
        assert run.data.tags["autocnn.reason"].startswith("diverged: ")


def test_checkpoints_are_atomic_and_load_weights_only(tmp_path: Path) -> None:
    import torch

    store = Checkpoints(tmp_path / "ck")
    store.save(3, {"trainer": {"w": torch.ones(2)}, "history": [(1, 0.5)]})
    store.flush()  # the file is written in the background
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["trial-3.pt"]
    assert torch.equal(store.load(3)["trainer"]["w"], torch.ones(2))
    store.discard(3)
    assert store.load(3) is None
    store.close()
    assert not (tmp_path / "ck").exists()
    kept = Checkpoints(tmp_path / "keep", keep=True, every_s=0.0)
    kept.save(1, {"x": 1})
    kept.save(1, {"x": 2})
    kept.discard(1)
    assert kept.load(1) == {"x": 2}
    kept.close()
    assert [p.name for p in (tmp_path / "keep").iterdir()] == ["trial-1.pt"]  # no spare left behind


def test_later_epochs_wait_in_memory_and_closing_writes_the_newest(tmp_path: Path) -> None:
    import torch

    store = Checkpoints(tmp_path / "ck", every_s=60.0)
    for epoch in (1, 2, 3):
        store.save(0, {"epoch": epoch, "w": torch.full((10,), float(epoch))})
        store.flush()
        assert torch.load(store.path(0), weights_only=True)["epoch"] == 1  # the first at once, then held
    store.save(1, {"epoch": 1})  # another trial's first epoch is written at once too
    store.flush()
    assert torch.load(store.path(1), weights_only=True)["epoch"] == 1
    assert store.load(0)["epoch"] == 3  # a resume in this process reads the newest
    store.save(0, {"epoch": 4, "w": torch.zeros(10)})
    store.close()  # Ctrl-C or the study's end: the held-back epoch reaches the disk
    assert torch.load(store.path(0), weights_only=True)["epoch"] == 4
    ended = Checkpoints(tmp_path / "ended", every_s=60.0)
    ended.save(0, {"epoch": 1})
    ended.save(0, {"epoch": 2})
    ended.discard(0)  # the trial is over: nothing of it is written any more
    ended.close()
    assert not (tmp_path / "ended").exists()


def test_an_ended_trials_files_are_rewritten_by_the_next_trial(tmp_path: Path) -> None:
    import torch

    store = Checkpoints(tmp_path / "ck", every_s=0.0)
    for epoch in (1, 2):
        store.save(0, {"epoch": epoch, "w": torch.zeros(1000)})
        store.flush()
    inodes = {store.path(0).stat().st_ino, (tmp_path / "ck" / ".trial-0.spare").stat().st_ino}
    store.discard(0)
    store.flush()
    assert store.load(0) is None  # trial 0's checkpoint is gone under its name
    for epoch in (1, 2):
        store.save(1, {"epoch": epoch, "w": torch.ones(1000)})
        store.flush()
        assert store.path(1).stat().st_ino in inodes  # trial 0's files, rewritten in place
    assert torch.load(store.path(1), weights_only=True)["epoch"] == 2
    store.discard(1)
    store.close()
    assert not (tmp_path / "ck").exists()  # the pool goes with the study


class Unpicklable:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")


def test_each_epoch_rewrites_a_spare_in_place_and_a_torn_write_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    import torch

    store = Checkpoints(tmp_path / "ck", every_s=0.0)
    for epoch in (1, 2, 3):
        store.save(0, {"epoch": epoch, "w": torch.full((1000,), float(epoch))})
        store.flush()
    spare = tmp_path / "ck" / ".trial-0.spare"
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [".trial-0.spare", "trial-0.pt"]
    assert torch.load(spare, weights_only=True)["epoch"] == 2  # the previous checkpoint, whole
    inode = spare.stat().st_ino
    store.save(0, {"epoch": 4, "w": torch.full((1000,), 4.0)})
    store.flush()
    assert store.path(0).stat().st_ino == inode  # written into the spare's file, not a new one
    store.save(0, {"epoch": 5, "w": torch.ones(1000), "oops": Unpicklable()})
    with pytest.raises(RuntimeError, match="disk full"):
        store.flush()
    state = store.load(0)
    assert state is not None and state["epoch"] == 4 and torch.equal(state["w"], torch.full((1000,), 4.0))
    store.discard(0)
    store.close()
    assert not (tmp_path / "ck").exists()


class StopDuringSetup(SilentReporter):
    """A stop signal while trial `number` is being set up: after its params are drawn, before its
    MLflow run exists (the window that used to leave it FAIL without a retry)."""

    def __init__(self, number: int) -> None:
        self.number = number

    def trial_sampled(self, number: int, config: object) -> None:
        if number == self.number:
            raise KeyboardInterrupt


def test_a_stop_during_a_trials_setup_queues_it_again_and_leaves_no_run_running(in_tmp: Path) -> None:
    write_spec(in_tmp, SPEC)
    spec = load_spec(in_tmp / "spec.yaml")
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, StudyOptions(), StopDuringSetup(1))

    study = open_study(spec, storage_url(spec))
    runs = runs_by_number(spec.name)
    assert sorted(runs) == [t.number for t in study.trials if t.state.name != "WAITING"] == [0, 1]
    assert study.trials[1].state.name == "FAIL" and runs[1].info.status == "KILLED"
    assert "interrupted" in runs[1].data.tags["autocnn.reason"]
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    (queued,) = [t for t in study.trials if t.state.name == "WAITING"]
    assert queued.user_attrs[RETRY_OF_ATTR] == 1
    status = CliRunner().invoke(app, ["status", "spec.yaml"], env={"COLUMNS": "200"})
    assert f"waiting: trial {queued.number} continues trial 1 on the next `autocnn study`" in status.output

    result = run_study(spec, StudyOptions())  # the next run picks the queued trial up
    assert result.counts["COMPLETE"] == 3
    study = open_study(spec, storage_url(spec))
    (retry,) = [t for t in study.trials if t.user_attrs.get(RETRY_OF_ATTR) == 1]
    assert retry.state.name == "COMPLETE" and retry.params == study.trials[1].params
    assert len(runs_by_number(spec.name)) == len(study.trials)  # one MLflow run per trial, still


class FailedByAnotherWorker(SilentReporter):
    """After the first epoch of trial `number`, does what another worker's heartbeat check does to a
    trial whose worker was stopped past the grace period (SIGSTOP, a laptop lid): fails it and
    queues its retry. This worker then continues as one does after SIGCONT."""

    def __init__(self, spec: object, number: int) -> None:
        self.spec, self.number = spec, number
        self.epochs: dict[int, list[int]] = {}

    def epoch_done(self, number: int, metrics: object, metric: str) -> None:
        from optuna.trial import TrialState

        from autocnn.search.resume import enqueue_retry

        self.epochs.setdefault(number, []).append(metrics.epoch)  # type: ignore[attr-defined]
        if number == self.number and len(self.epochs[number]) == 1:
            other = open_study(self.spec, storage_url(self.spec))  # type: ignore[arg-type]
            other.tell(number, state=TrialState.FAIL)
            enqueue_retry(other, other.trials[number])


def test_a_worker_resumed_after_its_trial_was_retried_elsewhere_leaves_it_to_the_retry(in_tmp: Path) -> None:
    write_spec(in_tmp, LIGHT_SPEC)
    spec = load_spec(in_tmp / "spec.yaml")
    reporter = FailedByAnotherWorker(spec, 1)
    result = run_study(spec, StudyOptions(), reporter)  # no "Cannot tell a FAIL trial" escapes

    assert result.counts["COMPLETE"] == 3
    study = open_study(spec, storage_url(spec))
    assert study.trials[1].state.name == "FAIL" and reporter.epochs[1] == [1]  # it stopped at once
    (retry,) = [t for t in study.trials if t.user_attrs.get(RETRY_OF_ATTR) == 1]
    assert retry.state.name == "COMPLETE" and retry.params == study.trials[1].params
    assert reporter.epochs[retry.number][0] == 2  # from trial 1's checkpoint, which the worker left alone
    runs = runs_by_number(spec.name)
    assert sorted(runs) == [t.number for t in study.trials]
    assert runs[1].info.status == "KILLED" and "another worker" in runs[1].data.tags["autocnn.reason"]
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


def test_a_full_disk_is_recognised_behind_the_errors_that_report_it() -> None:
    from autocnn.files import disk_full

    def raised(exc: BaseException, during: BaseException | None = None) -> BaseException:
        try:
            try:
                if during is not None:
                    raise during
            finally:
                raise exc
        except BaseException as caught:  # noqa: BLE001 - the test builds the chain it inspects
            return caught

    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert disk_full(quota) is quota
    wrapped = raised(RuntimeError("unexpected pos"), during=OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(wrapped) is not None and disk_full(wrapped).errno == errno.ENOSPC
    assert disk_full(raised(RuntimeError("x"), during=OSError(errno.EACCES, "denied"))) is None
    assert disk_full(ValueError("no")) is None


@contextlib.contextmanager
def tiny_tmpfs(folder: Path, size: str) -> Iterator[None]:
    """A real file system of `size` at `folder` for a while; skips where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_real_full_file_system_under_the_checkpoints_stops_the_study_cleanly(in_tmp: Path) -> None:
    write_spec(in_tmp, LIGHT_SPEC)
    spec = load_spec(in_tmp / "spec.yaml")
    checkpoints = in_tmp / ".autocnn" / spec.name / "checkpoints"
    with tiny_tmpfs(checkpoints, "16k"):  # smaller than one checkpoint of the first trial
        result = run_study(spec, StudyOptions(), SilentReporter())
    assert result.stopped_reason is not None
    assert result.stopped_reason.startswith(f"disk full writing {checkpoints}/"), result.stopped_reason
    study = open_study(spec, storage_url(spec))
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert all(run.info.status != "RUNNING" for run in runs_by_number(spec.name).values())
    again = run_study(spec, StudyOptions(), SilentReporter())  # the same folder, on the roomy disk again
    assert again.stopped_reason is None
    assert_consistent(in_tmp)
