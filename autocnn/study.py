"""The Optuna side: storage, sampler, pruner, the objective, and the study run end to end."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from autocnn.budget import BUDGET_ATTR, auto_epochs, steps_per_epoch
from autocnn.checks import check_spec
from autocnn.data import DataCache, Dataset, DatasetRecord, dataset_record
from autocnn.defaults import DEFAULT_ATTR, enqueue_defaults
from autocnn.objectives import Objective, is_multi_objective, primary, study_objectives
from autocnn.plan import Plan, make_plan, probe_seconds_per_step
from autocnn.results import StudyResult, best_trial, count_states, summarize
from autocnn.resume import (
    OWNER_ATTR,
    REASON_ATTR,
    RESUME_FROM_ATTR,
    RESUMED_AT_ATTR,
    RETRY_OF_ATTR,
    Checkpoints,
    close_orphan_runs,
    enqueue_retry,
    graceful_interrupts,
    others_running,
    owner_id,
    recover_dead_trials,
)
from autocnn.space import TrialConfig, sample_config
from autocnn.spec import DEFAULT_TRIALS, Spec
from autocnn.storage import open_storage, storage_url, stored_trials

if TYPE_CHECKING:
    import optuna

    from autocnn.tracking import Tracker
    from autocnn.train import EpochMetrics
    from autocnn.workers import WorkerPool

MAX_FAILS_IN_A_ROW = 5
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # Optuna study attribute: the study's MLflow parent run
PARENT_RUN_WAIT_S = 120.0  # how long a worker waits for the study's creator to record it
CREATOR_ATTR = "autocnn_creator"  # Optuna study attribute: the autocnn process that created it
CREATOR_GRACE_S = 5.0  # how long an empty study without that mark may still be getting it


class Reporter(Protocol):
    """What the study tells whoever is watching (the CLI shows it with rich; tests ignore it)."""

    def message(self, text: str) -> None: ...
    def data_progress(self, done: int, total: int) -> None: ...
    def study_started(self, *, name: str, done: int, target: int | None, to_run: int | None) -> None: ...
    def trial_sampled(self, number: int, config: TrialConfig) -> None: ...
    def trial_started(self, number: int, config: TrialConfig, epochs: int) -> None: ...
    def epoch_done(self, number: int, metrics: EpochMetrics, metric: str) -> None: ...
    def trial_finished(self, number: int, state: str, value: float | None) -> None: ...


class SilentReporter:
    def message(self, text: str) -> None:
        pass

    def data_progress(self, done: int, total: int) -> None:
        pass

    def study_started(self, *, name: str, done: int, target: int | None, to_run: int | None) -> None:
        pass

    def trial_sampled(self, number: int, config: TrialConfig) -> None:
        pass

    def trial_started(self, number: int, config: TrialConfig, epochs: int) -> None:
        pass

    def epoch_done(self, number: int, metrics: EpochMetrics, metric: str) -> None:
        pass

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        pass


@dataclass(frozen=True)
class StudyOptions:
    """Command-line overrides of the spec."""

    trials: int | None = None
    timeout: float | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    keep_checkpoints: bool = False
    workers: int = 1  # local worker processes sharing the study
    checkpoint_dir: Path | None = None  # where running trials' checkpoints live (default: beside the spec)
    supervised: bool = False  # set in the processes `workers` starts: their starter closes the study


# --------------------------------------------------------------------------- pruner & sampler


def build_pruner(spec: Spec, *, max_resource: int, n_val: int) -> Any:
    """One of Optuna's pruners, wrapped so it waits for the judge floor and never cuts on noise.

    The median pruner needs no warm-up of its own: the floor, counted in optimizer steps, is it.
    Hyperband starts its rungs at one epoch, Optuna's default, and its brackets hedge; the floor
    holds the early rungs back until trials have trained enough to be compared.
    """
    import optuna

    from autocnn.pruning import NoiseAwarePruner

    name = spec.study.pruner
    if is_multi_objective(spec) and name != "none":
        from autocnn.objectives import cost_objectives
        from autocnn.pruning import DominatedCurvePruner

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

    from autocnn.samplers import TrialSeededRandomSampler, TrialSeededTPESampler

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


# --------------------------------------------------------------------------- one trial


@dataclass
class TrialContext:
    spec: Spec
    cache: DataCache
    tracker: Tracker
    parent_run_id: str
    reporter: Reporter
    checkpoints: Checkpoints
    plan: Plan
    dataset: DatasetRecord | None = None  # logged as every trial run's input
    latencies: dict[tuple, float] = field(default_factory=dict)  # per architecture (model_facts)

    @property
    def objective(self) -> Objective:
        return primary(self.spec)


def trial_budget(config: TrialConfig, plan: Plan) -> dict[str, Any]:
    """How long this trial may train, in epochs and optimizer steps; recorded on the trial.

    `epochs: auto` becomes a cap and a patience for the noise-aware stop, sized by the slowest
    model family so Hyperband's maximum resource holds for every trial.
    """
    per_epoch = steps_per_epoch(plan.n_train, config.train.batch_size)
    epochs = config.train.epochs
    if epochs == "auto":
        auto = auto_epochs(per_epoch, seconds_per_step=plan.slowest_step_seconds, timeout=plan.timeout)
        return {"steps_per_epoch": per_epoch, "epochs": auto.cap, "patience": auto.patience, "auto": True}
    return {
        "steps_per_epoch": per_epoch,
        "epochs": int(epochs),
        "patience": config.train.early_stopping,
        "auto": False,
    }


def run_trial(ctx: TrialContext, trial: optuna.Trial, config: TrialConfig, run_id: str) -> float | list[float]:
    """Train one configuration; report every epoch to Optuna (pruning) and MLflow.

    Returns the study's value, or one value per objective in a multi-objective study.
    """
    import optuna

    from autocnn.assembly import assemble_trial, preprocessing, train_settings, trial_seeds
    from autocnn.costs import LATENCY_MACHINE_TAG, objective_values, record_costs
    from autocnn.features import FULL, process_cache
    from autocnn.models import freeze_mode, model_facts
    from autocnn.pruning import report_value, should_prune
    from autocnn.train import NonFiniteLossError

    spec = ctx.spec
    pre = preprocessing(spec, config)
    data = ctx.cache.get(pre.image_size)
    budget = trial.user_attrs.get(BUDGET_ATTR) or trial_budget(config, ctx.plan)  # a retry keeps its original's
    trial.set_user_attr(BUDGET_ATTR, budget)
    ctx.tracker.set_tags(
        run_id, {"autocnn.max_epochs": budget["epochs"], "autocnn.steps_per_epoch": budget["steps_per_epoch"]}
    )
    settings = train_settings(spec, config, budget, n_val=len(data.val))
    seeds = trial_seeds(spec, trial.number)
    features = process_cache(spec)
    assembled = assemble_trial(spec, config, data, settings, seeds=seeds, pre=pre, features=features)
    for warning in features.take_warnings():
        ctx.reporter.message(f"warning: {warning}")
    # `model` is the whole model; on the cached-feature path the trainer trains its head alone.
    model, trainer, train, val = assembled.model, assembled.trainer, assembled.train, assembled.val
    feature_path = assembled.path.name if assembled.path is not None else FULL
    if assembled.augmentation is not None:
        log_augmentation(ctx, run_id, assembled.augmentation, data, seed=seeds.batches)
    facts = model_facts(model, image_size=pre.image_size, device=trainer.device, latencies=ctx.latencies)
    facts.update(record_costs(spec, trial, model, facts, image_size=pre.image_size, cache=ctx.latencies))
    if LATENCY_MACHINE_TAG in trial.user_attrs:
        ctx.tracker.set_tags(run_id, {LATENCY_MACHINE_TAG: trial.user_attrs[LATENCY_MACHINE_TAG]})
    ctx.tracker.log_facts(run_id, facts)
    ctx.tracker.set_tags(run_id, {"autocnn.freeze": freeze_mode(model), **assembled.tags()})
    ctx.reporter.trial_started(trial.number, config, settings.epochs)
    history = resume_trainer(ctx, trial, trainer, feature_path=feature_path)
    # NopPruner never prunes, but asking it still reads the trial back from storage every epoch.
    can_prune = not isinstance(trial.study.pruner, optuna.pruners.NopPruner)
    try:
        for metrics in trainer.fit(train, val):
            value = getattr(metrics, ctx.objective.metric)
            # Optuna's storage first: the writer threads woken below hold the GIL for a few ms at a
            # time, which tripled the report's time when it came after them.
            report_value(trial, value, metrics.epoch)
            prune = can_prune and should_prune(trial)
            ctx.tracker.log_epoch(run_id, metrics.as_dict(), step=metrics.epoch)
            history.append((metrics.epoch, value))
            if not prune:  # a pruned trial's checkpoint would only be deleted
                state = {"trainer": trainer.state_dict(), "history": history, "feature_path": feature_path}
                ctx.checkpoints.save(trial.number, state)
            ctx.reporter.epoch_done(trial.number, metrics, ctx.objective.metric)
            if prune:
                raise optuna.TrialPruned(_prune_reason(trial, metrics.epoch, ctx.objective.metric, value))
    except NonFiniteLossError as exc:
        raise optuna.TrialPruned(f"diverged: {exc}") from None
    trainer.restore_best()
    # The best epoch's evaluation when this process saw it (not after a resume): no second pass.
    evaluation = trainer.best_eval or trainer.evaluate(val)
    _log_evaluation(ctx, run_id, evaluation, data)
    best = float(trainer.best_value)  # type: ignore[arg-type]
    if not is_multi_objective(ctx.spec):
        if is_new_best(trial, best, ctx.objective):
            ctx.tracker.log_state_dict(run_id, model.state_dict())  # the whole model, backbone and head
        return best
    # Any complete trial may end on the front, and finalize --no-refit needs its weights.
    ctx.tracker.log_state_dict(run_id, model.state_dict())
    values = objective_values(spec, trial, evaluation, best, model=model, data=data, pre=pre)
    if "int8_accuracy" in spec.study.objective_names:
        ctx.tracker.log_facts(run_id, {"int8_accuracy": values[spec.study.objective_names.index("int8_accuracy")]})
    return values


def _prune_reason(trial: optuna.Trial, epoch: int, metric: str, value: float) -> str:
    """The pruner's own account (what the trial was compared to, by how much) when it has one."""
    reason = getattr(trial.study.pruner, "reason", lambda _number: None)(trial.number)
    return reason or f"pruned at epoch {epoch}: {metric} = {value:.4f}"


def log_augmentation(ctx: TrialContext, run_id: str, pipeline: Any, data: Dataset, *, seed: int) -> None:
    """What an augmenting trial's augmentation does, in albumentations' own format and as a grid.

    Validation and test batches are never augmented. The format omits the seed: hence the tag.
    """
    from autocnn import augment

    ctx.tracker.log_dict(run_id, augment.describe(pipeline), "augment.json")
    ctx.tracker.set_tags(run_id, {"autocnn.augment_seed": seed})
    grid = augment.grid_figure(data.train, pipeline, classes=data.classes, seed=seed)
    ctx.tracker.log_figure(run_id, grid, "augment_grid.png")


def resume_trainer(
    ctx: TrialContext, trial: optuna.Trial, trainer: Any, *, feature_path: str = "full"
) -> list[tuple[int, float]]:
    """A retried trial continues from the last finished epoch of the trial it retries.

    A checkpoint holds what the trainer trained: the whole model, or on the cached-feature path
    the head alone; one saved on the other path (study.feature_cache changed) cannot continue.
    """
    from autocnn.pruning import report_value

    source = trial.user_attrs.get(RESUME_FROM_ATTR)
    state = ctx.checkpoints.load(int(source)) if source is not None else None
    if state is None:
        return []
    if state.get("feature_path", "full") != feature_path:
        ctx.reporter.message(
            f"trial {trial.number} starts over: trial {source} was checkpointed on the "
            f"{state.get('feature_path', 'full')} path, this run takes the {feature_path} path"
        )
        return []
    trainer.load_state_dict(state["trainer"])
    history = [(int(epoch), float(value)) for epoch, value in state["history"]]
    for epoch, value in history:  # the pruner compares whole curves
        report_value(trial, value, epoch)
    trial.set_user_attr(RESUMED_AT_ATTR, trainer.epoch)
    ctx.reporter.message(f"trial {trial.number} resumes trial {source} after epoch {trainer.epoch}")
    return history


def is_new_best(trial: optuna.Trial, value: float | None, objective: Objective) -> bool:
    """Whether this trial's value beats every complete trial so far: only such trials keep weights."""
    if value is None:
        return False
    best = best_trial(trial.study, objective)
    return objective.better(value, None if best is None else objective.of(best))


def _log_evaluation(ctx: TrialContext, run_id: str, ev: Any, data: Dataset) -> None:
    """Confusion matrix picture and per-class precision/recall/F1 for a completed trial."""
    from autocnn.figures import confusion_matrix_figure, per_class_table

    figure = confusion_matrix_figure(ev.labels, ev.preds, data.classes)
    ctx.tracker.log_figure(run_id, figure, "confusion_matrix.png")
    table, text = per_class_table(ev.labels, ev.preds, data.classes)
    ctx.tracker.log_dict(run_id, table, "per_class_metrics.json")
    ctx.tracker.log_text(run_id, text, "per_class_metrics.txt")


def make_objective(ctx: TrialContext) -> Callable[[optuna.Trial], float | list[float]]:
    import optuna

    def objective(trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr(OWNER_ATTR, owner_id())
        config = sample_config(trial, ctx.spec)
        ctx.reporter.trial_sampled(trial.number, config)
        run_id = ctx.tracker.start_trial(ctx.parent_run_id, trial.number, config.flat(), config.as_yaml_dict())
        trial.set_user_attr("mlflow_run_id", run_id)
        if ctx.dataset is not None:
            ctx.tracker.log_dataset(run_id, ctx.dataset)
        if RETRY_OF_ATTR in trial.user_attrs:
            ctx.tracker.set_tags(run_id, {"autocnn.retry_of": trial.user_attrs[RETRY_OF_ATTR]})
        if DEFAULT_ATTR in trial.user_attrs:
            ctx.tracker.set_tags(run_id, {DEFAULT_ATTR: "true"})
        done_with = [trial.number, trial.user_attrs.get(RESUME_FROM_ATTR, trial.number)]
        try:
            value = run_trial(ctx, trial, config, run_id)
            if not all(math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
                raise ValueError(f"objective value is {value}")
        except optuna.TrialPruned as exc:
            ctx.checkpoints.discard(*done_with)
            ctx.tracker.end_trial(run_id, "PRUNED", reason=str(exc) or None)
            ctx.reporter.trial_finished(trial.number, "PRUNED", None)
            raise
        except KeyboardInterrupt:
            # Keep the checkpoint: the same parameters are queued and continue from it on resume.
            trial.set_user_attr(REASON_ATTR, "interrupted: Ctrl-C or a stop signal")
            enqueue_retry(trial.study, trial)  # type: ignore[arg-type]
            ctx.tracker.end_trial(run_id, "INTERRUPTED", reason="interrupted: Ctrl-C or a stop signal")
            raise
        except Exception as exc:
            reason = f"{exc.__class__.__name__}: {exc}"
            trial.set_user_attr(REASON_ATTR, reason)
            ctx.checkpoints.discard(*done_with)
            ctx.tracker.end_trial(run_id, "FAIL", reason=reason)
            ctx.reporter.message(f"warning: trial {trial.number} failed: {reason}")
            ctx.reporter.trial_finished(trial.number, "FAIL", None)
            raise
        ctx.checkpoints.discard(*done_with)
        ctx.tracker.end_trial(run_id, "COMPLETE")
        shown = value[max(ctx.objective.index, 0)] if isinstance(value, list) else value
        ctx.reporter.trial_finished(trial.number, "COMPLETE", shown)
        return value

    return objective


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


# --------------------------------------------------------------------------- the study


def run_study(spec: Spec, options: StudyOptions | None = None, reporter: Reporter | None = None) -> StudyResult:
    """Check everything, then run (or resume) the study until it holds `trials` done trials.

    A study that has trials in its storage resumes: only the missing trials run, and a trial cut
    short by a killed process continues from its last checkpoint. Any number of processes, here
    (`workers`) or on other machines sharing the storage, can run the same study at once: each
    takes trials until the total is reached. `reporter` hears about each trial and epoch (the
    command line draws progress bars with it); by default nothing is shown.

    Example:
        >>> result = autocnn.run_study(spec, autocnn.StudyOptions(trials=20, timeout=900))
        >>> result.best_number, result.best_value, result.counts
    """
    return run_prepared_study(spec, options or StudyOptions(), reporter or SilentReporter())


def run_prepared_study(
    spec: Spec, options: StudyOptions, reporter: Reporter, *, plan: Plan | None = None
) -> StudyResult:
    """`run_study`, with the plan of the process that started this worker when there is one."""
    pool = start_workers(spec, options)  # their training code loads while the study is prepared
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


def start_workers(spec: Spec, options: StudyOptions) -> WorkerPool | None:
    """The pool of `workers` processes, whose fork server starts loading the training code now;
    none for a single process."""
    if options.workers <= 1:
        return None
    from autocnn.workers import WorkerPool

    return WorkerPool(spec, options)


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
    from autocnn.first_use import fetch_on_first_use
    from autocnn.tracking import default_tracking_uri

    quiet = reporter if not options.supervised else SilentReporter()  # the supervisor said it all
    fetch_on_first_use(spec, quiet)  # a dataset by name, pretrained weights: before trial 1, or fail fast
    cache = DataCache(spec, progress=quiet.data_progress)
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
    dataset = dataset_record(spec, cache, data)
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
    from autocnn.tracking import Tracker

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
    the time is spent; Ctrl-C, SIGTERM or SIGHUP ends it gracefully."""
    import optuna
    from optuna.trial import TrialState

    callbacks: list[Any] = [streak, RecoverDeadWorkers(ctx)]
    if target is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    with graceful_interrupts():
        study.optimize(make_objective(ctx), timeout=timeout, catch=(Exception,), callbacks=callbacks)


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
    from autocnn.pareto import front_record

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
    from autocnn.assembly import preprocessing
    from autocnn.models import build_model
    from autocnn.space import config_from_params

    best = best_trial(study, primary(spec))
    run_id = best.user_attrs.get("mlflow_run_id") if best is not None else None
    if not run_id or tracker.run_tags(parent).get("autocnn.best_model_trial") == str(best.number):
        return
    config = config_from_params(spec, best.params)
    pre = preprocessing(spec, config)
    model = build_model(
        config.model, config.model_params, num_classes=data.num_classes, image_size=pre.image_size, load_weights=False
    )
    model.load_state_dict(tracker.load_state_dict(run_id))
    uri = tracker.log_model(run_id, model)
    tracker.set_tags(parent, {"autocnn.best_model_trial": best.number, "autocnn.best_model_uri": uri})
