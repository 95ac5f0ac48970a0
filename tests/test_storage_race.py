"""Two workers asking for the same queued trial at once: exactly one of them runs it."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import optuna


def pop_after_a_slow_read(url: str, barrier: Any, results: Any) -> None:
    """Open the study as a worker does, then pop the queued trial with Optuna's own code, the
    state read held 0.3 s before the write: the window in which another worker reads it too."""
    from optuna.storages._rdb import models

    from autocnn.search.storage import open_storage

    find = models.TrialModel.find_or_raise_by_id

    def slow_find(*args: Any, **kwargs: Any) -> Any:
        found = find(*args, **kwargs)
        time.sleep(0.3)
        return found

    models.TrialModel.find_or_raise_by_id = staticmethod(slow_find)  # this child process only
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="race", storage=open_storage(url))
    barrier.wait()
    results.put(study._pop_waiting_trial_id())


def test_a_queued_trial_is_popped_by_one_worker_only(tmp_path: Path) -> None:
    from autocnn.search.storage import open_storage

    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    study.enqueue_trial({"x": 1.0})
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=pop_after_a_slow_read, args=(url, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    popped = sorted((results.get(timeout=120) for _ in workers), key=lambda value: value is None)
    for worker in workers:
        worker.join(timeout=60)
    assert popped[0] is not None and popped[1] is None, popped  # one popped it; the other found none
    assert [t.state.name for t in study.trials] == ["RUNNING"]
