"""Nothing lost, nothing run twice: trial checkpoints, dead-trial recovery, Ctrl-C handling.

A trial whose process died (kill -9, power loss) is still RUNNING in Optuna. It is found either
through Optuna's heartbeat (any host, after the grace period) or at once when its owner process
on this host no longer exists; it is then marked FAIL, its MLflow run KILLED, and its exact
parameters are queued again as a retry that continues from the trial's last finished epoch.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocnn.files import disk_full
from autocnn.search.defaults import DEFAULT_ATTR
from autocnn.training.budget import BUDGET_ATTR

if TYPE_CHECKING:
    import optuna

    from autocnn.tracking.tracker import Tracker

OWNER_ATTR = "owner"  # "<host>:<pid>" of the process running the trial
RETRY_OF_ATTR = "retry_of"  # the first trial number of a retried configuration
RESUME_FROM_ATTR = "resume_from"  # the trial number whose checkpoint a retry continues from
RESUMED_AT_ATTR = "resumed_after_epoch"  # the checkpoint's last epoch a retry started from
REASON_ATTR = "fail_reason"
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when we can tell: the owner ran on this host and its process is gone."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


def owner_pid_here(owner: str | None) -> int | None:
    """The owner's pid when it ran on this host, else None."""
    if not owner or ":" not in owner:
        return None
    host, _, pid = owner.rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def process_stopped(pid: int) -> bool:
    """True when the process is stopped (SIGSTOP, Ctrl-Z, a debugger): alive, but doing nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] in ("T", "t")


def frozen_trials(study: optuna.Study) -> dict[int, str]:
    """RUNNING trials whose worker lives but does not work, and why: stopped on this host, or
    silent past the heartbeat's grace period on any host. Optuna fails a silent trial (and it is
    retried) when the next worker looks; until then, this is how a user sees it."""
    from optuna.storages._heartbeat import is_heartbeat_enabled
    from optuna.trial import TrialState

    storage = study._storage
    silent: set[int] = set()
    if is_heartbeat_enabled(storage):
        silent = set(storage._get_stale_trial_ids(study._study_id))
    out: dict[int, str] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER_ATTR)
        if owner_is_dead(owner):
            continue  # stale, not frozen: shown as such
        pid = owner_pid_here(owner)
        if pid is not None and process_stopped(pid):
            out[trial.number] = f"its worker {owner} is stopped (SIGSTOP or Ctrl-Z); `kill -CONT {pid}` resumes it"
        elif trial._trial_id in silent:
            out[trial.number] = (
                f"its worker {owner or '?'} has sent no heartbeat for longer than the grace period; "
                "the next `autocnn study` fails it and retries it from its checkpoint"
            )
    return out


class Checkpoints:
    """One file per running trial, replaced atomically after every epoch.

    Saving costs the training loop one memory copy: the state is copied into buffers reused from
    epoch to epoch, and a writer thread serialises and writes them while the next epoch trains.
    Written synchronously, a checkpoint took 4-8% of a short epoch (ext4 flushes a file renamed
    over an existing one; serialising resnet18's state is 0.1-0.2 s of CPU). The write
    goes into a spare file in place, which then swaps names with the checkpoint (see `_write`);
    an ended trial's files become spares for the next trial's first writes, until `close`.

    A trial's first epoch is written at once, later ones at most every `every_s` seconds: the
    newest snapshot waits in memory and `close` (Ctrl-C, an error, the study's end) writes it, so
    only a hard kill can lose work, at most those seconds. Writing after every 0.3 s epoch spent
    3-5% of the custom CNN's training on the 2-core machine.
    """

    POOLED_SPARES = 2  # a trial's first two writes: its checkpoint, then its own spare
    EVERY_S = 5.0

    def __init__(self, folder: Path, *, keep: bool = False, every_s: float = EVERY_S) -> None:
        self.folder = folder
        self.keep = keep
        self.every_s = every_s
        self._buffers: dict[str, Any] = {}
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._unwritten: tuple[int, dict[str, Any]] | None = None  # the newest snapshot, when held back
        self._written_at: dict[int, float] = {}  # trial number -> when its last write was queued

    def path(self, number: int) -> Path:
        return self.folder / f"trial-{number}.pt"

    def _spare(self, number: int) -> Path:
        return self.folder / f".trial-{number}.spare"

    def _link(self, number: int) -> Path:
        return self.folder / f".trial-{number}.previous"

    def _pooled(self) -> list[Path]:
        # Per process: workers sharing the folder never take, or delete, each other's spares.
        return [self.folder / f".spare-{os.getpid()}-{k}" for k in range(self.POOLED_SPARES)]

    def save(self, number: int, state: dict[str, Any]) -> None:
        """Snapshot `state` now; the file follows in the background, or later (see the class)."""
        if self._unwritten is not None and self._unwritten[0] != number:
            self._write_held_back()  # another trial's snapshot: it shares the buffers
        self.flush()  # the buffers are free again once the previous write is done
        snapshot = _copy_into(state, self._buffers, "")
        last = self._written_at.get(number)
        if last is not None and time.monotonic() - last < self.every_s:
            self._unwritten = (number, snapshot)
            return
        self._queue_write(number, snapshot)

    def _queue_write(self, number: int, snapshot: dict[str, Any]) -> None:
        self._unwritten = None
        self._written_at[number] = time.monotonic()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autocnn-checkpoint")
        self._pending = self._writer.submit(self._write, number, snapshot)

    def _write_held_back(self, numbers: tuple[int, ...] | None = None) -> None:
        if self._unwritten is not None and (numbers is None or self._unwritten[0] in numbers):
            self._queue_write(*self._unwritten)

    def flush(self) -> None:
        """Wait for the write in flight; a failed write raises here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, number: int, state: dict[str, Any]) -> None:
        """Overwrite the spare file in place, then make it the checkpoint and the old one the spare.

        A new file per epoch costs the kernel fresh page-cache pages every time: 0.05-0.4 s of CPU
        for resnet18's 134 MB, against 0.02 s to rewrite pages it already holds. The
        checkpoint's name always holds a whole checkpoint: a kill mid-write tears only the spare,
        and each rename is atomic.
        """
        path, spare, previous = self.path(number), self._spare(number), self._link(number)
        if not spare.exists():
            self._adopt_pooled_spare(spare)
        try:
            try:
                self._save_into(spare, state)
            except FileNotFoundError:  # another worker sharing the folder removed it, empty, just now
                self._save_into(spare, state)
        except Exception as exc:
            full = disk_full(exc)
            if full is None:
                raise
            # The last whole checkpoint is still under its own name: only the spare is torn.
            raise OSError(full.errno, os.strerror(full.errno or errno.ENOSPC), str(spare)) from exc
        previous.unlink(missing_ok=True)
        try:
            if path.exists():
                os.link(path, previous)  # the old checkpoint's pages survive as the next spare
        except OSError:  # a file system without hard links: the next write starts a new file
            pass
        os.replace(spare, path)
        if previous.exists():
            os.replace(previous, spare)

    def _save_into(self, file: Path, state: dict[str, Any]) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        # No per-record CRC32: it doubled the save time; torch.load does not need it.
        crc = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(False)
        try:
            with open(file, "r+b" if file.exists() else "wb") as handle:
                torch.save(state, handle)
                handle.truncate()
        finally:
            torch.serialization.set_crc32_options(crc)

    def load(self, number: int) -> dict[str, Any] | None:
        import torch

        self._write_held_back((number,))
        self.flush()
        path = self.path(number)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def discard(self, *numbers: int) -> None:
        """The trial ended: its checkpoint goes (unless kept), after any write still in flight.

        The removal queues behind that write on the writer thread, so a trial's end does not wait
        for its last checkpoint to reach the disk (0.2-0.5 s for resnet18); `close` and
        `load` wait for it. A failed last write no longer matters once the trial is over.
        """
        if self._unwritten is not None and self._unwritten[0] in numbers:
            self._unwritten = None
        self._buffers.clear()  # a write in flight holds its own references to the snapshot
        if self._writer is None:
            self._remove(numbers)
        else:
            self._pending = self._writer.submit(self._remove, numbers)

    def _adopt_pooled_spare(self, spare: Path) -> None:
        """Take an ended trial's file as `spare`: its pages are rewritten, not faulted in anew.

        A trial's first two writes otherwise create new files: 0.2 s each for resnet18 against
        0.02 s into a file the page cache already holds.
        """
        for pooled in self._pooled():
            try:
                os.replace(pooled, spare)
                return
            except FileNotFoundError:
                continue

    def _remove(self, numbers: tuple[int, ...]) -> None:
        """Spare files always go, checkpoints too unless kept: into the pool first, while it has room."""
        for number in numbers:
            files = [self._spare(number), self._link(number)] + ([] if self.keep else [self.path(number)])
            for file in files:
                free = [p for p in self._pooled() if not p.exists()]
                try:
                    if free:
                        os.replace(file, free[0])
                    else:
                        file.unlink()
                except FileNotFoundError:
                    continue
        self._remove_folder_if_empty()

    def _remove_folder_if_empty(self) -> None:
        try:
            if self.folder.exists() and not any(self.folder.iterdir()):
                self.folder.rmdir()
        except OSError:  # another worker sharing the folder wrote into it, or removed it, meanwhile
            pass

    def close(self) -> None:
        """Write a held-back snapshot, wait for the writer thread, stop it, delete the pooled spares."""
        try:
            self._write_held_back()
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            for pooled in self._pooled():
                pooled.unlink(missing_ok=True)
            self._remove_folder_if_empty()


def _copy_into(value: Any, buffers: dict[str, Any], key: str) -> Any:
    """`value` with every tensor copied into the CPU buffer kept under its path in `buffers`."""
    import torch

    if isinstance(value, torch.Tensor):
        buffer = buffers.get(key)
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            buffer = buffers[key] = torch.empty(value.shape, dtype=value.dtype, device="cpu")
        return buffer.copy_(value.detach())
    if isinstance(value, dict):
        return {k: _copy_into(v, buffers, f"{key}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_into(v, buffers, f"{key}/{i}") for i, v in enumerate(value))
    return value


CARRIED_ATTRS = (BUDGET_ATTR, DEFAULT_ATTR)


def enqueue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue the same parameters again, linked to the original and to its checkpoint."""
    original = trial.user_attrs.get(RETRY_OF_ATTR, trial.number)
    # The budget (epochs, steps) travels with the checkpoint; a default stays a default.
    carried = {k: trial.user_attrs[k] for k in CARRIED_ATTRS if k in trial.user_attrs}
    study.enqueue_trial(
        trial.params,
        user_attrs={**carried, RETRY_OF_ATTR: original, RESUME_FROM_ATTR: trial.number},
    )


def has_retry(study: optuna.Study, number: int) -> bool:
    return any(t.user_attrs.get(RESUME_FROM_ATTR) == number for t in study.get_trials(deepcopy=False))


def stale_trials(study: optuna.Study) -> list[int]:
    """RUNNING trials whose process on this host is gone: they resume on the next `study`."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t.number for t in running if owner_is_dead(t.user_attrs.get(OWNER_ATTR))]


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose process is gone; queue each once more. Returns their numbers."""
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner_is_dead(trial.user_attrs.get(OWNER_ATTR)) and _fail(study, trial.number):
            recovered.append(trial.number)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)  # heartbeat: trials of other hosts, after the grace period
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    recovered += sorted(after - before)
    for trial in study.get_trials(deepcopy=False):
        if trial.number in recovered and not has_retry(study, trial.number):
            enqueue_retry(study, trial)
    return recovered


def _fail(study: optuna.Study, number: int) -> bool:
    """Mark a trial FAIL; False when another worker ended it first (each dead trial is retried once)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        study.tell(number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):  # ValueError: Optuna saw it finished before writing
        return False
    return True


def recover_own_trials(study: optuna.Study, tracker: Tracker, reason: str) -> list[int]:
    """Fail and queue again the trials this process still holds RUNNING when none of them can be
    running (Optuna's loop was cut short, e.g. by a database connection cut while it told a trial
    its result); their MLflow runs are closed to match, whatever they said."""
    from optuna.trial import TrialState

    me = owner_id()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(OWNER_ATTR) != me or not _fail(study, trial.number):
            continue
        recovered.append(trial.number)
        if not has_retry(study, trial.number):
            enqueue_retry(study, trial)
        if "mlflow_run_id" in trial.user_attrs:
            tracker.close_orphan(trial.user_attrs["mlflow_run_id"], f"killed: {reason}")
    return recovered


def others_running(study: optuna.Study) -> list[str]:
    """The workers, other than this process, that run one of the study's trials now."""
    from optuna.trial import TrialState

    me = owner_id()
    owners = {t.user_attrs.get(OWNER_ATTR) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(o for o in owners if o and o != me and not owner_is_dead(o))


def close_orphan_runs(study: optuna.Study, tracker: Tracker, parent_id: str) -> int:
    """No MLflow trial run stays RUNNING once its Optuna trial has ended: mark those KILLED."""
    from autocnn.tracking.tracker import TRIAL_TAG

    states = {t.number: t for t in study.get_trials(deepcopy=False)}
    closed = 0
    for run in tracker.trial_runs(parent_id):
        if run.info.status != "RUNNING":
            continue
        trial = states.get(int(run.data.tags.get(TRIAL_TAG, -1)))
        if trial is None or trial.state.name == "RUNNING":
            continue
        reason = trial.user_attrs.get(REASON_ATTR, "its process died")
        closed += tracker.close_orphan(run.info.run_id, f"killed: {reason}")
    return closed


def heartbeat_kwargs() -> dict[str, Any]:
    """RDBStorage arguments: heartbeats, and a retry for every trial found stale."""
    return {
        "heartbeat_interval": HEARTBEAT_INTERVAL,
        "grace_period": GRACE_PERIOD,
        "heartbeat_stale_trial_callback": enqueue_retry,
    }


# Ctrl-C, a process manager's stop, a closed terminal: each stops a study the same graceful way.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def graceful_interrupts() -> Iterator[None]:
    """First stop signal (Ctrl-C, SIGTERM, SIGHUP): KeyboardInterrupt, so the running trial is
    queued to resume and every run is closed. A second one: exit at once. The handlers before
    are put back when the study ends."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def second(signum: int, frame: Any) -> None:
        os.write(2, b"\nsecond stop signal: exiting now; the study resumes with the same command\n")
        os._exit(130)

    def first(signum: int, frame: Any) -> None:
        for stop in STOP_SIGNALS:
            signal.signal(stop, second)
        raise KeyboardInterrupt

    previous = {stop: signal.signal(stop, first) for stop in STOP_SIGNALS}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
