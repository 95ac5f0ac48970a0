"""One Optuna trial: its config sampled, its model assembled and trained (resumed from a checkpoint
when it was cut short), reported to the pruner each epoch, and logged to its MLflow run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from autocnn.data.arrays import Dataset
from autocnn.data.cache import DataCache, DatasetRecord
from autocnn.files import disk_full
from autocnn.search.defaults import DEFAULT_ATTR
from autocnn.search.options import Reporter
from autocnn.search.plan import Plan
from autocnn.search.results import best_trial
from autocnn.search.resume import (
    OWNER_ATTR,
    REASON_ATTR,
    RESUME_FROM_ATTR,
    RESUMED_AT_ATTR,
    RETRY_OF_ATTR,
    Checkpoints,
    enqueue_retry,
    owner_id,
)
from autocnn.search.space import sample_config, study_settings
from autocnn.search.storage import lost_the_connection
from autocnn.spec.objectives import Objective, is_multi_objective, primary
from autocnn.spec.schema import Spec
from autocnn.training.budget import BUDGET_ATTR, auto_epochs, steps_per_epoch
from autocnn.training.config import TrialConfig

if TYPE_CHECKING:
    import optuna

    from autocnn.tracking.tracker import Tracker

# A complete trial's softmax outputs on val at its best epoch, float32 (float16 ties flip argmaxes),
# in the val split's order.
VAL_PROBS_ARTIFACT = "predictions/val_probs.npy"


# Optuna user attribute and MLflow tag: the epoch after which study.timeout stopped the trial.
STOPPED_AT_DEADLINE_ATTR = "autocnn.stopped_at_deadline"


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
    deadline: float | None = None  # time.monotonic() when study.timeout is spent: a running trial stops there
    stop_reason: str | None = None  # set by a trial that stopped the study (a full disk), said at its end

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

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

    from autocnn.models.build import freeze_mode, model_facts
    from autocnn.search.costs import LATENCY_MACHINE_TAG, objective_values, record_costs
    from autocnn.search.pruning import report_value, should_prune
    from autocnn.training.assembly import assemble_trial, preprocessing, train_settings, trial_seeds
    from autocnn.training.features import FULL, process_cache
    from autocnn.training.loop import NonFiniteLossError

    spec = ctx.spec
    study = study_settings(spec)
    pre = preprocessing(study, config)
    data = ctx.cache.get(pre.image_size)
    budget = trial.user_attrs.get(BUDGET_ATTR) or trial_budget(config, ctx.plan)  # a retry keeps its original's
    trial.set_user_attr(BUDGET_ATTR, budget)
    ctx.tracker.set_tags(
        run_id, {"autocnn.max_epochs": budget["epochs"], "autocnn.steps_per_epoch": budget["steps_per_epoch"]}
    )
    settings = train_settings(study, config, budget, n_val=len(data.val))
    seeds = trial_seeds(study, trial.number)
    features = process_cache(study.feature_folder)
    assembled = assemble_trial(study, config, data, settings, seeds=seeds, pre=pre, features=features)
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
            if ctx.past_deadline():  # the timeout is a promise: kept within one epoch, this trial's best kept
                trial.set_user_attr(STOPPED_AT_DEADLINE_ATTR, metrics.epoch)
                ctx.tracker.set_tags(run_id, {STOPPED_AT_DEADLINE_ATTR: str(metrics.epoch)})
                break
    except NonFiniteLossError as exc:
        raise optuna.TrialPruned(f"diverged: {exc}") from None
    trainer.restore_best()
    # The best epoch's evaluation when this process saw it (not after a resume): no second pass.
    evaluation = trainer.best_eval or trainer.evaluate(val)
    _log_evaluation(ctx, run_id, evaluation, data)
    # Every complete trial's val probabilities: an ensemble is chosen from them without retraining.
    ctx.tracker.log_array(run_id, evaluation.probs.astype(np.float32), VAL_PROBS_ARTIFACT)
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
    from autocnn.training import augment

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
    from autocnn.search.pruning import report_value

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


def queue_again(ctx: TrialContext, trial: optuna.Trial, run_id: str, reason: str) -> None:
    """A trial ended by something not its fault (a stop signal, a full disk, a cut connection):
    the same parameters are queued to continue from its checkpoint, which is kept, and its run is
    closed with the reason."""
    trial.set_user_attr(REASON_ATTR, reason)
    enqueue_retry(trial.study, trial)  # type: ignore[arg-type]
    ctx.tracker.end_trial(run_id, "INTERRUPTED", reason=reason)


def stop_for_a_full_disk(ctx: TrialContext, trial: optuna.Trial, run_id: str, error: OSError) -> None:
    """A full disk is not the trial's fault, and the next trial would meet it too: the trial is
    queued to continue from its last whole checkpoint, and the study stops, naming the file."""
    where = error.filename or "a file"
    reason = f"disk full writing {where}: free some space, then run `autocnn study` again; trial {trial.number} continues from its last checkpoint"
    queue_again(ctx, trial, run_id, f"disk full writing {where}")
    ctx.reporter.trial_finished(trial.number, "FAIL", None)
    ctx.stop_reason = reason
    trial.study.stop()


def retry_after_a_lost_connection(ctx: TrialContext, trial: optuna.Trial, run_id: str, error: Exception) -> None:
    """The database server cut the connection mid-call (a restart): the trial is queued to continue
    from its last checkpoint, as after a stop signal, and the study goes on on a new connection."""
    reason = f"the database connection was cut: {error.__class__.__name__}"
    queue_again(ctx, trial, run_id, reason)
    ctx.reporter.message(f"trial {trial.number}: {reason}; queued again to resume from its checkpoint")
    ctx.reporter.trial_finished(trial.number, "FAIL", None)


class TrialEndedElsewhere(BaseException):
    """This worker's trial was ended by another one while this one was stopped (SIGSTOP, a laptop
    lid): its retry continues it. A BaseException, so that Optuna neither tells the finished trial
    again nor records it as this worker's failure; `optimize` goes on with the next trial."""


ENDED_ELSEWHERE = "ended by another worker while this one was stopped; its retry continues it"


def make_objective(ctx: TrialContext) -> Callable[[optuna.Trial], float | list[float]]:
    import optuna

    def objective(trial: optuna.Trial) -> float | list[float]:
        done_with = [trial.number, trial.user_attrs.get(RESUME_FROM_ATTR, trial.number)]
        run_id: str | None = None

        def run_for_the_record() -> str:
            """The trial's MLflow run, opened late when setup stopped before it: one run per trial."""
            return run_id or ctx.tracker.start_trial(ctx.parent_run_id, trial.number, dict(trial.params), {})

        # Everything from the first user attribute on is inside the try: a stop signal or an error
        # while the trial is being set up ends it like one during training (queued again, or failed
        # with its reason), never as a FAIL without a retry and an MLflow run left RUNNING.
        try:
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
            value = run_trial(ctx, trial, config, run_id)
            if not all(math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
                raise ValueError(f"objective value is {value}")
            trial.set_user_attr(OWNER_ATTR, owner_id())  # still this worker's trial, or it ends here
        except optuna.exceptions.UpdateFinishedTrialError:
            # The checkpoint stays: the retry resumes from it. The trial's attributes are no longer
            # this worker's to write.
            ctx.tracker.end_trial(run_for_the_record(), "INTERRUPTED", reason=ENDED_ELSEWHERE)
            ctx.reporter.message(f"trial {trial.number}: {ENDED_ELSEWHERE}")
            raise TrialEndedElsewhere(trial.number) from None
        except optuna.TrialPruned as exc:
            ctx.checkpoints.discard(*done_with)
            ctx.tracker.end_trial(run_for_the_record(), "PRUNED", reason=str(exc) or None)
            ctx.reporter.trial_finished(trial.number, "PRUNED", None)
            raise
        except KeyboardInterrupt:
            queue_again(ctx, trial, run_for_the_record(), "interrupted: Ctrl-C or a stop signal")
            raise
        except Exception as exc:
            full = disk_full(exc)
            if full is not None:
                stop_for_a_full_disk(ctx, trial, run_for_the_record(), full)
                raise
            if lost_the_connection(exc):
                retry_after_a_lost_connection(ctx, trial, run_for_the_record(), exc)
                raise
            reason = f"{exc.__class__.__name__}: {exc}"
            trial.set_user_attr(REASON_ATTR, reason)
            ctx.checkpoints.discard(*done_with)
            ctx.tracker.end_trial(run_for_the_record(), "FAIL", reason=reason)
            ctx.reporter.message(f"warning: trial {trial.number} failed: {reason}")
            ctx.reporter.trial_finished(trial.number, "FAIL", None)
            raise
        ctx.checkpoints.discard(*done_with)
        ctx.tracker.end_trial(run_id, "COMPLETE")
        shown = value[max(ctx.objective.index, 0)] if isinstance(value, list) else value
        ctx.reporter.trial_finished(trial.number, "COMPLETE", shown)
        return value

    return objective
