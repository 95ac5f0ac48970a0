"""Item 6: what more workers buy.

Two measurements. Training: the same custom-CNN study on digits run by `autocnn study --workers 2`
(one thread each) and by one process with two threads, as a user runs them (fresh processes,
start-up included), alternating. Coordination: processes that share a study through autocnn's
default storage (SQLite in WAL mode), its per-trial seeded TPE sampler, heartbeats and the
worker tag on each trial, running trials that only sleep, so the only cost besides the sleep is
the sharing itself.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from benchmarks.machine import autocnn_command
from benchmarks.results import Item, Row
from benchmarks.specs import study_file, write_spec
from benchmarks.timing import median, ratio, timed

TARGET_TRAINING = 1.3  # trials per hour, 2 workers x 1 thread over 1 process x 2 threads
TARGET_COORDINATION = 3.5  # trials per second, 4 workers over 1, on trivial trials
TRIVIAL_TRIAL_S = 0.5


def scale_out_spec(name: str, *, trials: int, epochs: int) -> dict[str, Any]:
    """studies/digits.yaml as a fixed workload: the same configurations in every run (random
    draws per trial number), no pruning, no augmentation (its loader would start processes too)."""
    raw = json.loads(json.dumps(study_file("digits")))
    raw["name"] = name
    raw["study"].update({"trials": trials, "sampler": "random", "pruner": "none", "defaults": False})
    raw["train"]["epochs"] = epochs
    raw.pop("augment", None)
    return raw


def time_study(folder: Path, raw: dict[str, Any], workers: int) -> dict[str, float]:
    """One `autocnn study` from a fresh process: trials done per hour while trials run (first
    trial's start to last trial's end), and over the command's whole wall time."""
    spec = write_spec(folder, raw)
    command = [*autocnn_command(), "study", str(spec), "--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    done, window = _trials_window(spec)
    return {
        "seconds": seconds,
        "trials": done,
        "trial_window_s": window,
        "trials_per_hour": 3600 * done / window,
        "trials_per_hour_with_startup": 3600 * done / seconds,
    }


def _trials_window(spec_path: Path) -> tuple[int, float]:
    """Trials done, and the seconds from the first trial's start to the last one's end."""
    from autocnn.search.storage import open_study, storage_url
    from autocnn.spec.load import load_spec

    spec = load_spec(spec_path)
    study = open_study(spec, storage_url(spec))
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    first = min(t.datetime_start for t in done if t.datetime_start is not None)
    last = max(t.datetime_complete for t in done if t.datetime_complete is not None)
    return len(done), (last - first).total_seconds()


def measure_training(work: Path, *, trials: int, epochs: int, repeats: int) -> dict[str, list[dict[str, float]]]:
    """`--workers 2` and one process, alternating, each run in a folder of its own."""
    runs: dict[str, list[dict[str, float]]] = {"workers_2": [], "workers_1": []}
    for r in range(repeats):
        order = [("workers_2", 2), ("workers_1", 1)] if r % 2 == 0 else [("workers_1", 1), ("workers_2", 2)]
        for key, workers in order:
            raw = scale_out_spec(f"scale-{key}-{r}", trials=trials, epochs=epochs)
            runs[key].append(time_study(work / f"{key}-{r}", raw, workers))
    return runs


# --------------------------------------------------------------------------- coordination


def trivial_worker(storage: str, name: str, total: int, barrier: Barrier) -> None:
    """One worker process: autocnn's storage, sampler, heartbeat and worker tag; 0.5 s trials."""
    import optuna

    from autocnn.search.resume import OWNER_ATTR, owner_id
    from autocnn.search.samplers import TrialSeededTPESampler
    from autocnn.search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(
        study_name=name,
        storage=open_storage(storage),
        sampler=TrialSeededTPESampler(seed=0, n_startup_trials=10, multivariate=True, group=True),
    )

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(OWNER_ATTR, owner_id())
        x = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        depth = trial.suggest_int("depth", 2, 6)
        time.sleep(TRIVIAL_TRIAL_S)
        return x * depth

    barrier.wait()
    done = optuna.study.MaxTrialsCallback(total, states=(optuna.trial.TrialState.COMPLETE,))
    study.optimize(objective, callbacks=[done])


def coordination_rate(work: Path, workers: int, total: int) -> dict[str, float]:
    """Trials per second of `workers` processes on one fresh study, from the moment all are ready."""
    import optuna

    from autocnn.search.storage import open_storage

    db = work / f"trivial-{workers}.optuna.db"
    storage = f"sqlite:///{db}"
    optuna.create_study(study_name="trivial", storage=open_storage(storage), direction="minimize")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers + 1)
    processes = [
        context.Process(target=trivial_worker, args=(storage, "trivial", total, barrier)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    barrier.wait()  # every worker has imported and opened the study
    start = time.perf_counter()
    for process in processes:
        process.join()
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name="trivial", storage=open_storage(storage))
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE")
    return {"seconds": seconds, "trials": done, "trials_per_s": done / seconds}


def measure_scale_out(
    work: Path, *, trials: int, epochs: int, repeats: int, trivial_trials: int, trivial_workers: int = 4
) -> Item:
    item = Item(6, "Scale-out: worker processes sharing a study")
    with timed(item):
        runs = measure_training(work, trials=trials, epochs=epochs, repeats=repeats)
        one = coordination_rate(work, 1, trivial_trials)
        many = coordination_rate(work, trivial_workers, trivial_trials)
    two_workers = median([r["trials_per_hour"] for r in runs["workers_2"]])
    one_process = median([r["trials_per_hour"] for r in runs["workers_1"]])
    speedup = ratio(two_workers, one_process)
    with_startup = ratio(
        median([r["trials_per_hour_with_startup"] for r in runs["workers_2"]]),
        median([r["trials_per_hour_with_startup"] for r in runs["workers_1"]]),
    )
    coordination = ratio(many["trials_per_s"], one["trials_per_s"])
    item.rows = [
        Row("custom CNN on digits, trials/hour while trials run: `--workers 2` (1 thread each)", f"{two_workers:.0f}"),
        Row("custom CNN on digits, trials/hour while trials run: one process, 2 threads", f"{one_process:.0f}"),
        Row("speed-up of `--workers 2`", f"{speedup:.2f}x", f">= {TARGET_TRAINING}x", speedup >= TARGET_TRAINING),
        Row("speed-up of `--workers 2`, process start-up included", f"{with_startup:.2f}x"),
        Row(f"trivial {TRIVIAL_TRIAL_S} s trials/s: 1 worker", f"{one['trials_per_s']:.2f}"),
        Row(f"trivial {TRIVIAL_TRIAL_S} s trials/s: {trivial_workers} workers", f"{many['trials_per_s']:.2f}"),
        Row(
            f"coordination: {trivial_workers} workers over 1",
            f"{coordination:.2f}x",
            f">= {TARGET_COORDINATION}x",
            coordination >= TARGET_COORDINATION,
        ),
    ]
    item.notes = [
        f"Training: {trials} trials of {epochs} epochs (studies/digits.yaml without augmentation, random "
        f"sampler, no pruning), each run a fresh `autocnn study` process; median of {repeats} alternating "
        "runs. Trials per hour count from the first trial's start to the last one's end; the start-up "
        "row counts the command's whole wall time, where `--workers 2` also starts two more Python "
        "processes (forked from a fork server that imports the training code while the study is "
        "prepared). Trials overshoot the target by at most the workers minus one and count as done. "
        "The pair wins when a single-threaded epoch, both running, takes less than twice as long as a "
        "two-threaded one alone; the figure is sensitive to other load on the machine (see `load_before`).",
        f"Coordination: {trivial_trials} trials that sleep {TRIVIAL_TRIAL_S} s, timed from the moment every "
        "worker has started and opened the study; each trial asks autocnn's TPE sampler for two "
        "parameters, writes its worker tag, and beats its heartbeat, on the default SQLite storage.",
    ]
    item.raw = {"training": runs, "coordination": {"1": one, str(trivial_workers): many}}
    return item
