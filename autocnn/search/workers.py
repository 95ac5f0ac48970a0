"""`workers: N`: one study run by N local processes that share its storage.

Two single-threaded workers train small models faster than one process with two threads (the
benchmark's scale-out item), and a machine with several GPUs trains one trial per GPU. The
process that starts the workers prepares the study (data checks, the Optuna study, the MLflow
parent run) while a fork server imports the training code, forks the workers from it once the
study is ready, shows what they report, and closes the study when the last one ends. Each worker
is a full autocnn process: it takes trials until the study's total is reached, and a trial whose
worker dies is retried by another, from its checkpoint.

Workers run in process groups of their own, so a Ctrl-C in the terminal reaches only the
starting process, which passes it on once: each worker then stops the graceful way (its trial is
queued to resume). A worker whose starter dies stops the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from autocnn.search.options import Reporter, StudyOptions
    from autocnn.search.plan import Plan
    from autocnn.spec.schema import Spec

STOP_GRACE_S = 300.0  # after a stop, how long a worker may take to close its trial before it is killed
SHARE_SIGNAL = getattr(signal, "SIGUSR1", None)  # "take a new share of the cores"
# What a worker passes on to the process that started it; the rest (data decoding, "study
# started") that process has already shown.
RELAYED = ("message", "trial_sampled", "trial_started", "epoch_done", "trial_finished")


@dataclass(frozen=True)
class WorkerSetup:
    """What one worker gets of the machine."""

    index: int
    threads: int  # torch's intra-op threads
    gpu: str | None  # CUDA_VISIBLE_DEVICES, on a machine with GPUs
    cores: int = 1  # the machine's, shared out again among the workers still running


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_setups(workers: int, *, cores: int | None = None, gpus: int | None = None) -> list[WorkerSetup]:
    """An equal share of the cores for each worker, at least one thread; one GPU each, in turn,
    when the machine has any (then the CPU threads only feed the GPU)."""
    cores = usable_cores() if cores is None else cores
    gpus = visible_gpus() if gpus is None else gpus
    threads = max(1, cores // workers)
    return [WorkerSetup(i, threads, str(i % gpus) if gpus else None, cores) for i in range(workers)]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# What every trial runs: imported once, by the process the workers are forked from, while the
# study is prepared. About 4 s of CPU a process on these cores; torch's optimizers import
# torch._dynamo on first use, scikit-learn splits the data and scores each epoch, MLflow's SQL
# store is what the tracker opens.
TRAINING_MODULES = [
    "torch._dynamo",
    "sklearn.datasets",
    "sklearn.metrics",
    "sklearn.model_selection",
    "mlflow.store.tracking.sqlalchemy_store",
    "autocnn.training.assembly",
    "autocnn.training.loop",
    "autocnn.search.session",
    "autocnn.search.trial",
    "autocnn.tracking.tracker",
    "autocnn.search.workers",
]


class WorkerPool:
    """The local workers of one study.

    Where the platform has a fork server, it starts at once and imports the training code while
    this process checks the data and creates the study and its parent run; each worker is then
    forked from it, ready to train, and the machine does those imports once rather than once per
    worker. Elsewhere each worker is a fresh interpreter that imports them itself.
    """

    def __init__(self, spec: Spec, options: StudyOptions) -> None:
        self.spec = spec
        self.options = replace(options, workers=1, supervised=True)
        self.count = options.workers
        self.context, self.own_server = _worker_context(spec)
        self.processes: list[BaseProcess] = []
        self.lifeline: Connection | None = None

    def run(self, plan: Plan, reporter: Reporter, *, timeout: float | None) -> list[str]:
        """Start the workers and relay what they report until they all end. Returns why workers
        stopped the study early, if any did."""
        from autocnn.search.resume import graceful_interrupts

        options = replace(self.options, timeout=timeout)
        levels = (logging.getLogger().getEffectiveLevel(), _optuna_verbosity())
        alive = self.context.Value("i", self.count)  # workers still taking trials: the cores' divisor
        lifeline, self.lifeline = self.context.Pipe(duplex=False)  # ends, for the workers, with this process
        events: dict[Connection, int] = {}
        for setup in worker_setups(self.count):
            receive, send = self.context.Pipe(duplex=False)
            process = self.context.Process(
                target=worker_main,
                args=(self.spec, options, plan, setup, send, lifeline, levels, alive),
                name=f"autocnn-worker-{setup.index}",
            )
            process.start()
            send.close()  # the worker holds its end: when it exits, ours reads end-of-file
            self.processes.append(process)
            events[receive] = setup.index
        lifeline.close()
        stopped: list[str] = []
        relayed = Relay(events, reporter, stopped, alive)
        try:
            with graceful_interrupts():
                try:
                    relayed.run()
                except KeyboardInterrupt:
                    reporter.message(
                        f"stopping {len(self.processes)} workers: each closes its running trial to resume later"
                    )
                    _signal_all(self.processes, signal.SIGTERM)
                    relayed.run(deadline=time.monotonic() + STOP_GRACE_S)
                    raise
        finally:
            self.close()
        for index, process in enumerate(self.processes):
            if process.exitcode not in (0, None) and process.exitcode != -signal.SIGTERM:
                reporter.message(
                    f"warning: worker {index} exited with code {process.exitcode}; the others retried its trial"
                )
        return stopped

    def close(self) -> None:
        """No worker outlives the study, nor does the fork server this pool started: a worker
        still running (the starter failed) sees its lifeline end and stops the graceful way."""
        if self.lifeline is not None:
            self.lifeline.close()
            self.lifeline = None
        _end_all(self.processes)
        if self.own_server:  # only now: it reports each worker's exit status to this process
            _stop_fork_server()
            self.own_server = False


def _worker_context(spec: Spec) -> tuple[Any, bool]:
    """The fork server's context, its server started now with the training code to import (and
    whether this call started it); spawn where there is none. Never a plain fork of this process,
    which may hold torch's threads and open database connections."""
    import multiprocessing
    from multiprocessing import forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn"), False
    context = multiprocessing.get_context("forkserver")
    server = getattr(forkserver, "_forkserver", None)
    running = getattr(server, "_forkserver_pid", None) is not None
    if not running:
        context.set_forkserver_preload(TRAINING_MODULES + (["timm"] if spec.models.backbones() else []))
    forkserver.ensure_running()
    return context, not running


def _stop_fork_server() -> None:
    """The server would otherwise live, torch imported, as long as this process (a notebook).
    SIGTERM ends it at once, where its own exit would spend seconds of CPU tearing down the
    modules it imported; it holds nothing that needs closing."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid, stop = getattr(server, "_forkserver_pid", None), getattr(server, "_stop", None)
    if pid is None or stop is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    stop()  # reaps it and forgets it, so a later pool starts a new one


class Relay:
    """Passes every worker's events to the reporter until all workers have closed their pipes.

    When a worker ends (the study's total is in sight), the others get its cores: the last trials
    would otherwise train on one thread each while the rest of the machine idles.
    """

    def __init__(self, pipes: dict[Connection, int], reporter: Reporter, stopped: list[str], alive: Any) -> None:
        self.pipes = pipes
        self.reporter = reporter
        self.stopped = stopped
        self.alive = alive
        self.ready: dict[int, int] = {}  # worker index -> pid, once it can take a share of the cores

    def run(self, *, deadline: float | None = None) -> None:
        while self.pipes and (deadline is None or time.monotonic() < deadline):
            for conn in wait(list(self.pipes), timeout=1.0):
                self._receive(conn)  # type: ignore[arg-type]

    def _receive(self, conn: Connection) -> None:
        index = self.pipes[conn]
        try:
            kind, args = conn.recv()
        except (EOFError, OSError):  # the worker ended (or was killed)
            self.pipes.pop(conn)
            conn.close()
            self._share_cores_of(index)
            return
        if kind == "ready":
            self.ready[index] = args[0]
        elif kind == "stopped":
            self.stopped.append(f"worker {index}: {args[0]}")
        elif kind == "error":
            self.reporter.message(f"warning: worker {index} failed: {args[0]}")
        elif kind == "message":
            self.reporter.message(f"worker {index}: {args[0]}")
        elif kind in RELAYED:
            getattr(self.reporter, kind)(*args)

    def _share_cores_of(self, index: int) -> None:
        self.ready.pop(index, None)
        with self.alive.get_lock():
            self.alive.value = max(1, self.alive.value - 1)
        for pid in self.ready.values():
            try:
                os.kill(pid, SHARE_SIGNAL)
            except ProcessLookupError:
                pass


def _signal_all(processes: list[BaseProcess], sig: int) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                pass


def _end_all(processes: list[BaseProcess]) -> None:
    """No worker outlives the study: a stopped one gets its grace period, then is killed."""
    for process in processes:
        process.join(timeout=STOP_GRACE_S if process.is_alive() else 0)
        if process.is_alive():
            process.kill()
            process.join()


def _optuna_verbosity() -> int:
    import optuna

    return optuna.logging.get_verbosity()


# --------------------------------------------------------------------------- in the worker


class PipeReporter:
    """A worker's Reporter: every event goes, as it happens, to the process that started it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, kind: str, *args: Any) -> None:
        with self.lock:
            try:
                self.conn.send((kind, args))
            except (BrokenPipeError, OSError):  # the starter is gone; the watchdog stops this worker
                pass

    def message(self, text: str) -> None:
        self.send("message", text)

    def data_progress(self, done: int, total: int) -> None:
        pass

    def study_started(self, *, name: str, done: int, target: int | None, to_run: int | None) -> None:
        pass

    def trial_sampled(self, number: int, config: Any) -> None:
        self.send("trial_sampled", number, config)

    def trial_started(self, number: int, config: Any, epochs: int) -> None:
        self.send("trial_started", number, config, epochs)

    def epoch_done(self, number: int, metrics: Any, metric: str) -> None:
        self.send("epoch_done", number, metrics, metric)

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        self.send("trial_finished", number, state, value)


def worker_main(
    spec: Spec,
    options: StudyOptions,
    plan: Plan,
    setup: WorkerSetup,
    conn: Connection,
    lifeline: Connection,
    levels: tuple[int, int],
    alive: Any,
) -> None:
    """One worker process: its share of the machine, then trials until the study's total."""
    os.setpgid(0, 0)  # terminal signals go to the starter, which passes them on once
    _use_share(setup)
    _library_output(*levels)
    _stop_when_orphaned(lifeline)
    reporter = PipeReporter(conn)
    if setup.gpu is None and SHARE_SIGNAL is not None:
        _take_new_shares(setup, alive)
        reporter.send("ready", os.getpid())
    from autocnn.errors import AutocnnError
    from autocnn.search.session import run_prepared_study

    try:
        result = run_prepared_study(spec, options, reporter, plan=plan)
    except KeyboardInterrupt:
        return  # stopped by the starter: the running trial is queued to resume
    except AutocnnError as exc:
        reporter.send("error", str(exc))
        raise SystemExit(2) from None
    except Exception as exc:
        reporter.send("error", f"{exc.__class__.__name__}: {exc}")
        raise SystemExit(1) from None
    if result.stopped_reason:
        reporter.send("stopped", result.stopped_reason)
    conn.close()


def _use_share(setup: WorkerSetup) -> None:
    """Threads and GPU set before torch's first parallel operation and CUDA's initialization,
    which size its thread pools and pick the devices (the fork server only imported torch); the
    environment reaches the libraries and processes a worker starts itself."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(setup.threads)
    if setup.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = setup.gpu
    import torch

    torch.set_num_threads(setup.threads)


def _take_new_shares(setup: WorkerSetup, alive: Any) -> None:
    """On the starter's signal, the cores divided by the workers still running: torch's thread
    pool can be resized between two operations, and a signal handler runs between two."""

    def resize(signum: int, frame: Any) -> None:
        import torch

        torch.set_num_threads(max(1, setup.cores // max(1, alive.value)))

    signal.signal(SHARE_SIGNAL, resize)


def _library_output(root_level: int, optuna_level: int) -> None:
    """The starter's choice of what other libraries may print (the command line's --verbose)."""
    import optuna

    logging.basicConfig(level=root_level, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    optuna.logging.set_verbosity(optuna_level)


def _stop_when_orphaned(lifeline: Connection) -> None:
    """A worker whose starter was killed stops as if told to: nothing runs on unwatched. Only
    the starter holds the lifeline's other end, so reading it ends when the starter does."""

    def watch() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="autocnn-orphan-watch", daemon=True).start()
