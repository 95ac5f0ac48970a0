"""Faults under load: workers on PostgreSQL, killed, frozen and cut off from their database.

Run: .venv/bin/python benchmarks/soak.py [--minutes 5] [--workers 4] [--seed 0] [--work DIR]

Fixed here, before any run:

- A study on scikit-learn's digits (custom CNN, 16 px, 4 epochs per trial, checkpoints every epoch)
  in a new database on the PostgreSQL server at 127.0.0.1:5432, run by `--workers` independent
  `autocnn study` processes, as workers on several machines would run it; MLflow in one SQLite store.
- For `--minutes`, every 8 to 20 s (seeded) one fault: SIGKILL of a random worker (a supervisor
  starts a new one at once), or SIGSTOP of a random worker for 5 to 20 s, then SIGCONT; once, at
  half time, PostgreSQL restarts (`pg_ctlcluster 15 main restart`).
- Then every worker is stopped the graceful way (SIGTERM), and one more `autocnn study` runs with a
  target of the trials already finished, so dead trials are recovered and orphaned runs closed as
  a user's next run would.
- Counted from the study's storage and MLflow: trials by state; retried trials and how many resumed
  from a checkpoint; lost trials (must be 0): a trial that failed with no retry queued or run, a
  trial left RUNNING, a finished trial without its MLflow run, or an MLflow run left RUNNING; and the
  time spent in attempts that a fault ended (an upper bound of the time lost: their retries resume
  from the last checkpoint).

Writes benchmarks/soak.md and .json, and its section of benchmarks/results.md (or the work folder's,
with --work).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's benchmarks
    sys.path.insert(0, str(REPO))

# ruff: noqa: E402 - the imports below need the path set-up above
from benchmarks.machine import autocnn_command, machine_info
from benchmarks.results import SOAK_END, SOAK_START, splice_section

SERVER = "postgresql://postgres@127.0.0.1:5432"
FAULT_EVERY_S = (8.0, 20.0)
FROZEN_FOR_S = (5.0, 20.0)
STOP_WAIT_S = 300.0

Log = Callable[[str], None]


@dataclass
class Fault:
    at_s: float
    kind: str  # kill, freeze, database
    target: str  # the worker's pid, or the server
    detail: str = ""


@dataclass
class Outcome:
    states: dict[str, int] = field(default_factory=dict)
    retried: int = 0  # trials that continue an earlier, faulted one
    resumed_and_finished: int = 0  # of those, finished (complete or pruned)
    waiting: int = 0  # retries queued for the next run
    lost: list[str] = field(default_factory=list)  # must stay empty
    faulted_attempt_s: float = 0.0
    finished_per_minute: float = 0.0
    mlflow_runs: int = 0
    crashed: list[str] = field(default_factory=list)  # workers that ended on their own: must stay empty


# --------------------------------------------------------------------------- the database


def admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", connect_timeout=10, autocommit=True) as connection:
        connection.execute(sql)


def restart_database() -> None:
    subprocess.run(["pg_ctlcluster", "15", "main", "restart"], check=True, capture_output=True, timeout=120)


# --------------------------------------------------------------------------- the workers


def soak_spec(name: str, storage: str) -> str:
    return json.dumps(
        {
            "name": name,
            "seed": 0,
            "data": {"source": "digits", "image_size": 16, "split": {"val": 0.2, "test": 0.2}},
            "study": {"trials": 100000, "metric": "val_accuracy", "pruner": "median", "storage": storage},
            "train": {"epochs": 4, "batch_size": 64, "lr": {"low": 1e-3, "high": 5e-3, "log": True}},
            "models": {"custom_cnn": {"depth": {"low": 2, "high": 3}, "width": {"choices": [8, 16]}, "dropout": 0.1}},
        }
    )


class Workers:
    """The worker processes; a killed one is replaced at once, as a supervisor would."""

    def __init__(self, spec: Path, folder: Path, count: int) -> None:
        self.spec, self.folder, self.count = spec, folder, count
        self.processes: list[subprocess.Popen] = []
        self.logs = folder / "workers"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started = 0
        self.ended: set[int] = set()  # pids whose end is accounted for: killed by a fault, or noted as crashed
        self.crashed: list[str] = []  # a worker that ended by itself, with its log's last line
        for _ in range(count):
            self.start_one()

    def start_one(self) -> subprocess.Popen:
        self.started += 1
        log = (self.logs / f"worker-{self.started}.log").open("w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core each: 4 workers share 2 here
        process = subprocess.Popen(
            [*autocnn_command(), "study", str(self.spec)], cwd=self.folder, stdout=log, stderr=log, env=env
        )
        self.processes.append(process)
        return process

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.processes if p.poll() is None]

    def replace_the_crashed(self) -> None:
        """A worker that ended on its own (no fault ended it) crashed: noted, and replaced."""
        for number, process in enumerate(self.processes, start=1):
            if process.pid in self.ended or process.poll() is None:
                continue
            self.ended.add(process.pid)
            lines = (self.logs / f"worker-{number}.log").read_text().strip().splitlines() or [""]
            self.crashed.append(f"worker {process.pid} exited with {process.returncode}: {lines[-1][:200]}")
            self.start_one()

    def kill(self, process: subprocess.Popen) -> None:
        self.ended.add(process.pid)
        process.kill()
        process.wait()
        self.start_one()

    def stop_all(self) -> list[float | None]:
        """SIGTERM to every live worker; the seconds each took to exit, None where it had to be
        killed after STOP_WAIT_S: a slow stop shows here, and the worker's log says what it did."""
        running = self.alive()
        for process in running:
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        exited: dict[int, float] = {}
        while len(exited) < len(running) and time.monotonic() - sent < STOP_WAIT_S:
            for process in running:
                if process.pid not in exited and process.poll() is not None:
                    exited[process.pid] = time.monotonic() - sent
            time.sleep(0.1)
        for process in self.alive():
            process.kill()
            process.wait()
        return [exited.get(process.pid) for process in running]


def run_faults(workers: Workers, seconds: float, rng: random.Random, log: Log) -> list[Fault]:
    """Faults until `seconds` have passed: kills and freezes at random, one database restart at half time."""
    faults: list[Fault] = []
    start = time.monotonic()
    restarted = False
    frozen: list[tuple[float, subprocess.Popen]] = []
    next_fault = start + rng.uniform(*FAULT_EVERY_S)
    while (now := time.monotonic()) - start < seconds:
        workers.replace_the_crashed()
        for thaw_at, process in list(frozen):
            if now >= thaw_at:
                process.send_signal(signal.SIGCONT)
                frozen.remove((thaw_at, process))
        if not restarted and now - start >= seconds / 2:
            restarted = True
            log("fault: PostgreSQL restarts")
            restart_database()
            faults.append(Fault(now - start, "database", "server", "pg_ctlcluster 15 main restart"))
        elif now >= next_fault:
            candidates = [p for p in workers.alive() if all(p is not q for _, q in frozen)]
            if candidates:
                process = rng.choice(candidates)
                if rng.random() < 0.5:
                    log(f"fault: SIGKILL worker {process.pid}")
                    workers.kill(process)
                    faults.append(Fault(now - start, "kill", str(process.pid)))
                else:
                    length = rng.uniform(*FROZEN_FOR_S)
                    log(f"fault: SIGSTOP worker {process.pid} for {length:.0f} s")
                    process.send_signal(signal.SIGSTOP)
                    frozen.append((now + length, process))
                    faults.append(Fault(now - start, "freeze", str(process.pid), f"{length:.0f} s"))
            next_fault = now + rng.uniform(*FAULT_EVERY_S)
        time.sleep(0.5)
    for _, process in frozen:
        process.send_signal(signal.SIGCONT)
    return faults


# --------------------------------------------------------------------------- the count


def count(spec_path: Path, folder: Path, minutes: float) -> Outcome:
    """What the study's storage and MLflow hold after the last run."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from autocnn.search.resume import RESUME_FROM_ATTR, RETRY_OF_ATTR, has_retry
    from autocnn.search.storage import open_study, storage_url
    from autocnn.spec.load import load_spec
    from autocnn.tracking.tracker import TRIAL_TAG, default_tracking_uri

    spec = load_spec(spec_path)
    study = open_study(spec, storage_url(spec))
    trials = study.get_trials(deepcopy=False)
    outcome = Outcome()
    for trial in trials:
        outcome.states[trial.state.name] = outcome.states.get(trial.state.name, 0) + 1
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    retries = [t for t in trials if RETRY_OF_ATTR in t.user_attrs and t.state != TrialState.WAITING]
    outcome.retried = len(retries)
    outcome.resumed_and_finished = sum(1 for t in retries if t in finished and RESUME_FROM_ATTR in t.user_attrs)
    outcome.waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    for trial in trials:
        if trial.state == TrialState.FAIL and not has_retry(study, trial.number):
            outcome.lost.append(f"trial {trial.number} failed without a retry")
        if trial.state == TrialState.RUNNING:
            outcome.lost.append(f"trial {trial.number} left RUNNING")
        if trial.state == TrialState.FAIL and trial.datetime_start and trial.datetime_complete:
            outcome.faulted_attempt_s += (trial.datetime_complete - trial.datetime_start).total_seconds()
    client = MlflowClient(default_tracking_uri(folder / "mlruns"))
    experiment = client.get_experiment_by_name(spec.experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=50000) if experiment else []
    by_trial = {int(r.data.tags[TRIAL_TAG]): r for r in runs if TRIAL_TAG in r.data.tags}
    outcome.mlflow_runs = len(by_trial)
    for trial in finished:
        run = by_trial.get(trial.number)
        if run is None or run.info.status != "FINISHED" or "val_accuracy" not in run.data.metrics:
            outcome.lost.append(f"trial {trial.number} {trial.state.name} without a finished MLflow run and metrics")
    outcome.lost += [f"MLflow run {r.info.run_id} left RUNNING" for r in runs if r.info.status == "RUNNING"]
    outcome.finished_per_minute = len(finished) / minutes
    return outcome


# --------------------------------------------------------------------------- the page


TITLE = "Soak: workers on PostgreSQL under kills, freezes and a database restart"


def render(payload: dict[str, Any]) -> str:
    """soak.md: the figures, then every fault with its time and worker."""
    faults = payload["faults"]
    lines = [f"# {TITLE}", "", *figures(payload)]
    lines += ["", "| at s | fault | worker | detail |", "|---|---|---|---|"]
    lines += [f"| {f['at_s']:.0f} | {f['kind']} | {f['target']} | {f['detail']} |" for f in faults]
    return "\n".join(lines) + "\n"


def render_section(payload: dict[str, Any]) -> str:
    """results.md's soak section, markers included, the fault list left to soak.md."""
    lines = [SOAK_START, f"## {TITLE}", "", *figures(payload), "- Every fault, with its time: [soak.md](soak.md)."]
    return "\n".join(lines) + "\n" + SOAK_END


def figures(payload: dict[str, Any]) -> list[str]:
    """Where and how it ran, the faults by kind, and what became of the trials."""
    source, outcome, faults = payload["source"], payload["outcome"], payload["faults"]
    info = source["machine"]
    kinds = {kind: sum(1 for f in faults if f["kind"] == kind) for kind in ("kill", "freeze", "database")}
    lines = [
        f"Produced by `{source['command']}` on {info['date']} in {source['total_seconds']:.0f} s, one run on one "
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, commit {info.get('commit', '?')}. "
        f"{source['workers']} workers for {source['minutes']:g} minutes, fault seed {source['seed']}.",
        "",
        "| faults | SIGKILL | SIGSTOP / SIGCONT | database restarts |",
        "|---|---|---|---|",
        f"| {len(faults)} | {kinds['kill']} | {kinds['freeze']} | {kinds['database']} |",
        "",
        "| trials finished per minute | by state | retried | retries resumed and finished | retries queued | "
        "faulted attempts (s) | lost |",
        "|---|---|---|---|---|---|---|",
        f"| {outcome['finished_per_minute']:.1f} | "
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(outcome["states"].items()))
        + f" | {outcome['retried']} | {outcome['resumed_and_finished']} | {outcome['waiting']} | "
        f"{outcome['faulted_attempt_s']:.0f} | **{len(outcome['lost'])}** |",
        "",
        "- Lost: a trial failed with no retry, left RUNNING, finished without its MLflow run and metrics, or an "
        "MLflow run left RUNNING, after the workers stopped and one more `autocnn study` ran. Target: 0.",
        "- Faulted attempts: the time of attempts a fault ended; an upper bound of the time lost, as their "
        "retries resume from the last epoch's checkpoint.",
    ]
    lines += [f"- lost: {item}" for item in outcome["lost"]]
    crashed = outcome.get("crashed", [])
    lines.append(f"- Workers that crashed (ended on their own, then replaced): **{len(crashed)}**. Target: 0.")
    lines += [f"- crashed: {item}" for item in crashed]
    return lines + stop_lines(payload.get("stops", []))


def stop_lines(stops: list[float | None]) -> list[str]:
    """How long the graceful stop at the end took each worker: a slow one is a promise broken."""
    if not stops:
        return []
    timed = sorted(s for s in stops if s is not None)
    killed = len(stops) - len(timed)
    line = f"- Stop: SIGTERM to the {len(stops)} live workers at the end; "
    if timed:
        line += f"exited after {', '.join(f'{s:.1f}' for s in timed)} s (slowest {timed[-1]:.1f} s)"
    if killed:
        line += f"{'; ' if timed else ''}{killed} still running after {STOP_WAIT_S:.0f} s, killed"
    return [line + "."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="an empty folder (default: temp); outputs stay there")
    args = parser.parse_args(argv)
    command = " ".join(["benchmarks/soak.py", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", flush=True)

    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="autocnn-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    database = f"autocnn_soak_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{database}"')
    try:
        spec = work / "soak.yaml"
        spec.write_text(soak_spec("soak", f"{SERVER}/{database}"))
        log(f"work folder {work}; database {database}; {args.workers} workers for {args.minutes:g} min")
        workers = Workers(spec, work, args.workers)
        faults = run_faults(workers, args.minutes * 60, random.Random(args.seed), log)
        log("stopping every worker (SIGTERM)")
        stops = workers.stop_all()
        finished = count(spec, work, args.minutes).states
        target = finished.get("COMPLETE", 0) + finished.get("PRUNED", 0)
        log(f"one more `autocnn study --trials {target}`: recovers dead trials, closes orphaned runs")
        subprocess.run(
            [*autocnn_command(), "study", str(spec), "--trials", str(max(target, 1))],
            cwd=work,
            capture_output=True,
            timeout=600,
        )
        outcome = count(spec, work, args.minutes)
        outcome.crashed = workers.crashed
    finally:
        admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    source = {
        "command": command,
        "machine": machine_info(),
        "workers": args.workers,
        "minutes": args.minutes,
        "seed": args.seed,
        "total_seconds": time.perf_counter() - started,
    }
    payload = {"source": source, "faults": [asdict(f) for f in faults], "outcome": asdict(outcome), "stops": stops}
    out = REPO / "benchmarks" if args.work is None else work
    (out / "soak.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    text = render(payload)
    (out / "soak.md").write_text(text)
    results = out / "results.md"
    results.write_text(splice_section(results.read_text() if results.exists() else "", render_section(payload), "soak"))
    print(text)
    return 1 if outcome.lost or outcome.crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
