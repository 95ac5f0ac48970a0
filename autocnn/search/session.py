"""One process's study from start to end: the checked data, the plan, the Optuna study with its
sampler and pruner, the MLflow parent run, the trial loop, and closing every run it opened.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocnn.data.arrays import Dataset
from autocnn.data.cache import DataCache, DatasetRecord, dataset_record
from autocnn.search.checks import check_spec
from autocnn.search.defaults import enqueue_defaults
from autocnn.search.options import Reporter, SilentReporter, StudyOptions, TrialPool
from autocnn.search.plan import Plan, make_plan, probe_seconds_per_step
from autocnn.search.results import StudyResult, best_trial, count_states, summarize
from autocnn.search.resume import (
    REASON_ATTR,
    Checkpoints,
    close_orphan_runs,
    graceful_interrupts,
    others_running,
    owner_id,
    recover_dead_trials,
    recover_own_trials,
)
from autocnn.search.space import study_settings
from autocnn.search.storage import lost_the_connection, open_storage, storage_url, stored_trials
from autocnn.search.trial import TrialContext, TrialEndedElsewhere, make_objective
from autocnn.spec.objectives import is_multi_objective, primary, study_objectives
from autocnn.spec.schema import DEFAULT_TRIALS, Spec

if TYPE_CHECKING:
    import optuna

    from autocnn.tracking.tracker import Tracker

MAX_FAILS_IN_A_ROW = 5
# Database connections cut under Optuna's own calls (between trials) that one run rides out; more
# is a server that keeps going away, and the study stops with its error.
MAX_CONNECTION_CUTS = 10
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # Optuna study attribute: the study's MLflow parent run
PARENT_RUN_WAIT_S = 120.0  # how long a worker waits for the study's creator to record it
CREATOR_ATTR = "autocnn_creator"  # Optuna study attribute: the autocnn process that created it
CREATOR_GRACE_S = 5.0  # how long an empty study without that mark may still be getting it


def build_pruner(spec: Spec, *, max_resource: int, n_val: int) -> Any:
    """One of Optuna's pruners, wrapped so it waits for the judge floor and never cuts on noise.

    The median pruner needs no warm-up of its own: the floor, counted in optimizer steps, is it.
    Hyperband starts its rungs at one epoch, Optuna's default, and its brackets hedge; the floor
    holds the early rungs back until trials have trained enough to be compared.
    """
    import optuna

    from autocnn.search.pruning import NoiseAwarePruner

    name = spec.study.pruner
    if is_multi_objective(spec) and name != "none":
        from autocnn.search.pruning import DominatedCurvePruner
        from autocnn.spec.objectives import cost_objectives

        costs = [objective.metric for objective in cost_objectives(spec)]
        return DominatedCurvePruner(objective=primary(spec), costs=costs, n_val=n_val)
    if name == "median":
        inner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    elif name == "hyperband":
        inner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource, reduction_factor=3)
    elif name == "successive_halving":
        inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, max_resource // 6), reduction_factor=3)
    else:
        return optuna.pruners.NopPruner()
    return NoiseAwarePruner(inner, objective=primary(spec), n_val=n_val)


def build_sampler(spec: Spec, *, n_existing: int) -> Any:
    """TPE and random search draw per trial from (spec seed, trial number): the same study again
    draws the same, and workers sharing a study (or a resume) never repeat each other's draws.
    GP and CMA-ES keep one seed per process, offset by the trials already stored."""
    import optuna

    from autocnn.search.samplers import TrialSeededRandomSampler, TrialSeededTPESampler

    name = spec.study.sampler
    if name == "random":
        return TrialSeededRandomSampler(seed=spec.seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=spec.seed + n_existing)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=spec.seed + n_existing, warn_independent_sampling=False)
    startup = max(3, min(10, (spec.study.target_trials or 40) // 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # group=True: a conditional space (one sub-space per model) is modelled per group.
        return TrialSeededTPESampler(seed=spec.seed, n_startup_trials=startup, multivariate=True, group=True)


def create_study(spec: Spec, storage: str, plan: Plan) -> tuple[optuna.Study, bool]:
    """The spec's study, and whether this process created it (the storage lets only one do so,
    however many workers start at once); the plan sizes the pruner for this run's trials."""
    import optuna

    backend = open_storage(storage)
    objectives = study_objectives(spec)
    sampler = build_sampler(spec, n_existing=stored_trials(backend, spec.name))
    pruner = build_pruner(spec, max_resource=plan.largest_cap(), n_val=plan.n_val)
    try:
        study = optuna.create_study(
            study_name=spec.name,
            storage=backend,
            directions=[objective.direction for objective in objectives],
            sampler=sampler,
            pruner=pruner,
            load_if_exists=False,
        )
        created = True
        study.set_user_attr(CREATOR_ATTR, owner_id())  # other workers wait for its parent run
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=backend, sampler=sampler, pruner=pruner)
        created = False
    name_metrics(study, [objective.metric for objective in objectives])
    return study, created


def name_metrics(study: optuna.Study, names: list[str]) -> None:
    """Stored with the study, so every Optuna client (`optuna trials`, optuna-dashboard, plots)
    shows `val_accuracy` where it would show "Objective 0"."""
    import optuna

    if study.metric_names == names:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


class FailStreak:
    """Stop the study when the last MAX_FAILS_IN_A_ROW trials all failed: something is broken."""

    def __init__(self) -> None:
        self.streak = 0
        self.last_error: str | None = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state.name != "FAIL":
            self.streak = 0
            return
        self.streak += 1
        self.last_error = trial.user_attrs.get(REASON_ATTR) or self.last_error
        if self.streak >= MAX_FAILS_IN_A_ROW:
            study.stop()


def run_prepared_study(
    spec: Spec,
    options: StudyOptions,
    reporter: Reporter,
    *,
    plan: Plan | None = None,
    pool: TrialPool | None = None,
) -> StudyResult:
    """`run_study` in this process, or through `pool`'s workers (which it closes), with the plan of
    the process that started this worker when there is one."""
    try:
        session = open_session(spec, options, reporter, plan=plan)
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    study, tracker, parent = session.study, session.tracker, session.parent
    before = count_states(study)
    done_before = before["COMPLETE"] + before["PRUNED"]
    to_run = None if session.target is None else max(0, session.target - done_before)
    if not options.supervised:
        reporter.study_started(name=spec.name, done=done_before, target=session.target, to_run=to_run)

    checkpoints = Checkpoints(checkpoint_folder(spec, options), keep=options.keep_checkpoints)
    ctx = TrialContext(spec, session.cache, tracker, parent, reporter, checkpoints, session.plan, session.dataset)
    streak = FailStreak()
    status = "KILLED"
    started = time.perf_counter()
    stopped: list[str] = []
    try:
        if to_run is None or to_run > 0:
            if pool is not None:
                stopped = pool.run(session.plan, reporter, timeout=session.timeout)
            else:
                optimize(study, ctx, timeout=session.timeout, target=session.target, streak=streak)
        status = "FINISHED"
    finally:
        if pool is not None:
            pool.close()  # no worker, and no fork server, outlives the study
        try:
            checkpoints.close()
        except Exception as exc:  # the study's runs are closed all the same
            reporter.message(f"warning: the last checkpoint could not be written: {exc}")
        ran = _started(study.get_trials(deepcopy=False)) - (sum(before.values()) - before["WAITING"])
        result = summarize(study, primary(spec), storage=session.storage, tracking_uri=tracker.tracking_uri, ran=ran)
        if streak.streak >= MAX_FAILS_IN_A_ROW:
            stopped.append(f"the last {MAX_FAILS_IN_A_ROW} trials all failed; last error: {streak.last_error}")
            status = "FAILED"
        if ctx.stop_reason:
            stopped.insert(0, ctx.stop_reason)
        if stopped:
            result.stopped_reason = stopped[0]
            status = "FAILED"
        closing = closes_the_study(study, options, reporter)
        if closing:
            recover_dead_trials(study)  # a worker killed at the end: its trial waits to resume
            close_orphan_runs(study, tracker, parent)
            log_front(spec, study, tracker, parent)
            close_tracking(tracker, parent, result, seconds=time.perf_counter() - started, status=status)
        else:
            tracker.flush()
    if closing and result.best_number is not None:
        log_best_model(spec, study, tracker, parent, session.data)
    return result


@dataclass
class Session:
    """One process's view of a study, ready to run trials: checked data, plan, Optuna study, and
    the MLflow parent run that every worker's trial runs nest under."""

    cache: DataCache
    data: Dataset
    plan: Plan
    storage: str
    study: optuna.Study
    tracker: Tracker
    parent: str
    dataset: DatasetRecord
    timeout: float | None
    target: int | None


def open_session(spec: Spec, options: StudyOptions, reporter: Reporter, plan: Plan | None = None) -> Session:
    """Everything a trial needs, checked before anything is written; a user error raises here.

    The first process to create the Optuna study queues the default trials and makes the parent
    run; any other (a worker started at the same time, here or elsewhere) waits for that run.
    """
    from autocnn.search.first_use import fetch_on_first_use
    from autocnn.tracking.tracker import default_tracking_uri

    quiet = reporter if not options.supervised else SilentReporter()  # the supervisor said it all
    fetch_on_first_use(spec, quiet)  # a dataset by name, pretrained weights: before trial 1, or fail fast
    cache = DataCache(spec.data, seed=spec.seed, progress=quiet.data_progress)
    data = checked_data(spec, cache, quiet)  # before any store is written: bad data leaves nothing
    timeout = options.timeout or spec.study.timeout
    target = trial_target(spec, options)
    if plan is None:
        plan = study_plan(spec, data, timeout=timeout, target=target)
        for warning in plan.warnings:
            reporter.message(f"warning: {warning}")
    storage = storage_url(spec, options.storage)
    study, created = create_study(spec, storage, plan)
    if created and spec.study.defaults and enqueue_defaults(study, spec):
        reporter.message(f"first trials: the default configuration of {', '.join(spec.models.spaces())}")
    tracking_uri = options.tracking_uri or spec.mlflow.tracking_uri or default_tracking_uri()
    tracker, parent = open_tracking(spec, tracking_uri, storage, study, created=created)
    dataset = dataset_record(cache, data)
    if not options.supervised:
        tracker.log_dataset(parent, dataset)
    for number in recover_dead_trials(study):
        reporter.message(f"trial {number} was running when its process died: marked failed, queued again to resume")
    close_orphan_runs(study, tracker, parent)
    return Session(cache, data, plan, storage, study, tracker, parent, dataset, timeout, target)


def checkpoint_folder(spec: Spec, options: StudyOptions) -> Path:
    """Where running trials keep their last epoch: workers on several machines need a folder they
    all see (`--checkpoint-dir` on shared storage), so a dead worker's trial resumes anywhere."""
    root = options.checkpoint_dir or spec.base_dir / ".autocnn"
    return Path(root) / spec.name / "checkpoints"


def closes_the_study(study: optuna.Study, options: StudyOptions, reporter: Reporter) -> bool:
    """Whether this process ends the parent run and logs the best model: only the last worker.

    A worker under `--workers` leaves that to the process that started it; one of several
    independent workers leaves it to whichever is still running trials.
    """
    if options.supervised:
        return False
    others = others_running(study)
    if others:
        reporter.message(f"other workers still run trials ({', '.join(others)}): the last one to end closes the study")
    return not others


def checked_data(spec: Spec, cache: DataCache, reporter: Reporter) -> Dataset:
    """The spec checked and its images decoded, every warning told; a user error raises here."""
    for warning in check_spec(spec, cache).warnings:
        reporter.message(f"warning: {warning}")
    data = cache.get()
    for path, reason in data.skipped:
        reporter.message(f"warning: skipped unreadable image {path} ({reason})")
    if data.skipped:
        reporter.message(f"warning: skipped {len(data.skipped)} unreadable image(s)")
    return data


def open_tracking(
    spec: Spec, tracking_uri: str, storage: str, study: optuna.Study, *, created: bool
) -> tuple[Tracker, str]:
    """The MLflow tracker and the study's one parent run, made once however many workers start.

    The parent run's id is kept in the Optuna study, so the storage decides: the process that
    created the study makes the run (or finds it again by its tags) and records it; the others
    read it, waiting while the creator is still at it. Searching MLflow and creating when nothing
    is found would give two parents to two workers started together.
    """
    from autocnn.tracking.tracker import Tracker

    tracker = Tracker(tracking_uri, spec.experiment_name)
    spec_text = spec.path.read_text() if spec.path.exists() else ""
    if not created:
        recorded = recorded_parent_run(study)
        if recorded is not None and tracker.reopen_study_run(recorded, spec_text=spec_text):
            return tracker, recorded
    parent = tracker.open_study_run(spec.name, spec_text=spec_text, storage=storage)
    study.set_user_attr(PARENT_RUN_ATTR, parent)
    return tracker, parent


def recorded_parent_run(
    study: optuna.Study, *, wait_s: float = PARENT_RUN_WAIT_S, grace_s: float = CREATOR_GRACE_S
) -> str | None:
    """The parent run id the study's creator recorded, waiting while the creator is at it.

    None when nobody will record one: trials have started without it (an older autocnn made the
    study), the study was made outside autocnn (plain Optuna, trials queued from a notebook), or
    the creator never recorded it in time. An empty study that is not yet marked may be in the
    instant between its creation and its creator's mark, so that case waits `grace_s`.
    """
    start = time.monotonic()
    while True:
        attrs = study.user_attrs
        recorded = attrs.get(PARENT_RUN_ATTR)
        if recorded is not None:
            return str(recorded)
        waited = time.monotonic() - start
        trials = study.get_trials(deepcopy=False)
        # The creator records the run before any trial starts: trials started without it mean
        # there is nothing to wait for.
        if _started(trials) > 0 or waited > wait_s:
            return None
        if CREATOR_ATTR not in attrs and (waited > grace_s or trials):
            return None  # marked before it queues anything: queued trials without a mark are not its
        time.sleep(0.25)


def optimize(
    study: optuna.Study, ctx: TrialContext, *, timeout: float | None, target: int | None, streak: FailStreak
) -> None:
    """Optuna's loop until `target` trials are complete or pruned (failed ones do not count) or
    the time is spent; Ctrl-C, SIGTERM or SIGHUP ends it gracefully. A trial another worker ended
    while this one was frozen, or a database connection cut between trials, does not end it."""
    import optuna
    from optuna.trial import TrialState

    callbacks: list[Any] = [streak, RecoverDeadWorkers(ctx)]
    if target is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    ctx.deadline = None if timeout is None else time.monotonic() + timeout
    cuts = 0
    with graceful_interrupts():
        while True:
            left = None if ctx.deadline is None else ctx.deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            try:
                study.optimize(make_objective(ctx), timeout=left, catch=(Exception,), callbacks=callbacks)
                return
            except TrialEndedElsewhere:
                continue  # its retry is queued: this worker may well be the one to run it
            except Exception as exc:
                cuts += 1
                if not lost_the_connection(exc) or cuts > MAX_CONNECTION_CUTS:
                    raise
                reason = "the database connection was cut between trials"
                for number in recover_own_trials(study, ctx.tracker, reason):
                    ctx.reporter.message(f"trial {number}: {reason}; queued again")


class RecoverDeadWorkers:
    """After each trial, whichever worker notices first fails a trial whose process died (on this
    host at once, elsewhere when its heartbeat stops) and queues it to resume from its checkpoint;
    the dead trial's MLflow run is closed then too, not when the study next starts."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.failed: set[int] = set()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from optuna.trial import TrialState

        for number in recover_dead_trials(study):
            self.ctx.reporter.message(f"trial {number}: its worker died; queued again to resume from its checkpoint")
        failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        if failed - self.failed - {trial.number}:  # failed by another worker, or by a heartbeat check
            close_orphan_runs(study, self.ctx.tracker, self.ctx.parent_run_id)
        self.failed = failed


def close_tracking(tracker: Tracker, parent: str, result: StudyResult, *, seconds: float, status: str) -> None:
    """The parent run's summary (best trial and value, counts by state, seconds), then its status."""
    summary: dict[str, Any] = {"best_trial": result.best_number, "best_value": result.best_value, "seconds": seconds}
    summary.update({f"n_{state.lower()}": n for state, n in result.counts.items()})
    tracker.close_study_run(parent, {k: v for k, v in summary.items() if v is not None}, status=status)


def log_front(spec: Spec, study: optuna.Study, tracker: Tracker, parent: str) -> None:
    """A multi-objective or constrained study's Pareto front on its parent run: the JSON as an
    artifact, the front's trial numbers as a tag, so the UI lists the trade-offs to ship from."""
    from autocnn.search.pareto import front_record

    if not is_multi_objective(spec) and not spec.study.constraints:
        return
    record = front_record(study, study_objectives(spec), spec.study.constraints or {})
    tracker.log_dict(parent, record, "pareto_front.json")
    numbers = ",".join(str(item["trial"]) for item in record["front"])
    tracker.set_tags(
        parent, {"autocnn.pareto_front": numbers or "none", "autocnn.objectives": ",".join(spec.study.objective_names)}
    )


def _started(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that have run or are running: queued ones (defaults, retries) are not started."""
    return sum(1 for t in trials if t.state.name != "WAITING")


def trial_target(spec: Spec, options: StudyOptions) -> int | None:
    """Trials to reach: the command line's, the spec's, or none with a time limit (run until it is spent)."""
    if options.trials:
        return options.trials
    if spec.study.trials is not None:
        return spec.study.trials
    return None if (options.timeout or spec.study.timeout) else DEFAULT_TRIALS


def study_plan(spec: Spec, data: Dataset, *, timeout: float | None, target: int | None) -> Plan:
    """The plan; a timed study also probes each model family, to size `epochs: auto` to the time."""
    timings = probe_seconds_per_step(spec, data) if timeout is not None else None
    return make_plan(spec, data, seconds_per_step=timings, timeout=timeout, target_trials=target)


def log_best_model(spec: Spec, study: optuna.Study, tracker: Tracker, parent: str, data: Dataset) -> None:
    """Log the best trial's weights as an MLflow model once per new best."""
    from autocnn.models.build import build_model
    from autocnn.search.space import config_from_params
    from autocnn.training.assembly import preprocessing

    best = best_trial(study, primary(spec))
    run_id = best.user_attrs.get("mlflow_run_id") if best is not None else None
    if not run_id or tracker.run_tags(parent).get("autocnn.best_model_trial") == str(best.number):
        return
    config = config_from_params(spec, best.params)
    pre = preprocessing(study_settings(spec), config)
    model = build_model(
        config.model, config.model_params, num_classes=data.num_classes, image_size=pre.image_size, load_weights=False
    )
    model.load_state_dict(tracker.load_state_dict(run_id))
    uri = tracker.log_model(run_id, model)
    tracker.set_tags(parent, {"autocnn.best_model_trial": best.number, "autocnn.best_model_uri": uri})
