"""From a finished study to a shippable model: `autocnn finalize`.

The best trial (or `--trial N`, or with `--top-k K --seeds S` the best of the K best configs by
their mean over S re-trainings) is rebuilt from its Optuna params and given weights: refit on
train + val by default (val has picked the config and its epoch count; its images are worth
learning from), the trial's own saved weights with `--no-refit`, or trained again on train with
`--retrain`. The model is evaluated once on the test split, logged to a `final` MLflow run nested
under the study, registered under the study's name, and exported with outputs.bundle.

`--ensemble K` ships several trials as one model; `--distill` ships the study's fastest good trial
trained on such an ensemble's soft labels (autocnn.outputs.distill), beside the same trial refit alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autocnn.data.arrays import Dataset, Split
from autocnn.data.cache import DataCache
from autocnn.errors import ExportError
from autocnn.models.folder import ONNX_FILE, Preprocessing
from autocnn.outputs.bundle import Scores, eval_split, score, torch_logits, write_bundle, write_metrics
from autocnn.outputs.ensemble import Selection
from autocnn.outputs.tta import TtaChoice
from autocnn.search.results import best_epoch, pick_trial, top_trials
from autocnn.search.space import config_from_params, study_settings
from autocnn.spec.objectives import Objective, primary
from autocnn.spec.schema import Spec

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from autocnn.tracking.tracker import Tracker
    from autocnn.training.config import TrialConfig

Say = Callable[[str], None]
TRIAL_WEIGHTS = "trial weights"
RETRAINED = "retrained on train"
REFIT = "refit on train+val"
DISTILLED = "distilled on train+val"
TRADE_OFF_FILE = "trade_off.json"  # the Pareto pick: rule, values, constraints, the front


@dataclass(frozen=True)
class FinalizeOptions:
    trial: int | None = None  # default: the study's best trial
    retrain: bool = False  # train the trial's config again on train (val picks the best epoch)
    refit: bool = True  # train on train + val for the trial's best number of epochs
    top_k: int = 1  # re-train the K best complete configs and pick by their mean val score
    seeds: int = 1  # re-trainings per config when comparing
    storage: str | None = None
    tracking_uri: str | None = None
    out_dir: Path | None = None  # default: ./models/<study>
    pick: str | None = None  # a rule choosing from the Pareto front (autocnn.search.pareto)
    ensemble: int = 1  # ship up to this many trials together, chosen on their val predictions
    tta: bool = False  # judge test-time augmentation on val; ship it where it helps beyond noise
    distill: bool = False  # ship a fast trial trained on an ensemble's soft labels
    student: int | None = None  # the trial --distill teaches (default: the fastest near the best)

    @property
    def compares(self) -> bool:
        """K=1, S=1 is one config trained once: nothing to compare, so no re-training for it."""
        return self.top_k > 1 or self.seeds > 1

    @property
    def weights_from(self) -> str:
        """--retrain wins over the refit default: it asks val to pick the epoch, which a refit cannot."""
        if self.retrain:
            return RETRAINED
        return REFIT if self.refit else TRIAL_WEIGHTS


def check_options(options: FinalizeOptions) -> None:
    """Reject option combinations before anything trains or loads."""
    for name, value in (("--top-k", options.top_k), ("--seeds", options.seeds)):
        if value < 1:
            raise ExportError(f"{name} {value}: must be at least 1")
    if options.trial is not None and options.top_k > 1:
        raise ExportError(f"--trial {options.trial} with --top-k {options.top_k}: --top-k picks the trial; give one")
    if options.pick is not None and (options.trial is not None or options.top_k > 1):
        raise ExportError("--pick with --trial or --top-k: each picks the trial; give one")
    if options.ensemble < 1:
        raise ExportError(f"--ensemble {options.ensemble}: must be at least 1")
    if options.ensemble > 1 and (options.trial is not None or options.compares or options.pick is not None):
        raise ExportError(
            f"--ensemble {options.ensemble} with --trial, --top-k, --seeds or --pick: the ensemble picks its trials; "
            "give one"
        )
    if options.student is not None and not options.distill:
        raise ExportError(f"--student {options.student} without --distill: the student is what --distill trains")
    if options.distill and (options.trial is not None or options.compares or options.pick is not None or options.tta):
        raise ExportError(
            "--distill with --trial, --top-k, --seeds, --pick or --tta: --distill ships the student "
            "(--student N to choose it); give one"
        )
    if options.distill and options.weights_from != REFIT:
        raise ExportError(
            "--distill with --no-refit or --retrain: the student learns the teacher's soft labels on train + val"
        )


@dataclass(frozen=True)
class Retrained:
    """A model trained again, with the Trainer's own val score of its best epoch.

    That score is what a top-k comparison ranks by, so no second evaluation path can disagree with
    the one the study itself used. After a refit it was measured on images the model learnt from.
    """

    model: nn.Module
    value: float
    best_epoch: int


@dataclass(frozen=True)
class Candidate:
    """One configuration re-trained with several seeds: its study value against its mean."""

    trial: int
    model: str
    study_value: float
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1): a few seeds estimate the spread, they are not all of it."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "model": self.model,
            "study_value": self.study_value,
            "mean": self.mean,
            "std": self.std,
            "values": list(self.values),
        }


@dataclass(frozen=True)
class TopK:
    """The top-k comparison: every candidate in the study's order, the pick, and why."""

    metric: str
    direction: str
    seeds: int
    candidates: tuple[Candidate, ...]
    picked: Candidate
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "direction": self.direction,
            "seeds": self.seeds,
            "picked": self.picked.trial,
            "reason": self.reason,
            "candidates": [c.as_dict() for c in self.candidates],
        }


@dataclass(frozen=True)
class Shipped:
    """One row of the ensemble's comparison: a candidate for shipping, its scores and its costs."""

    name: str
    val_score: float  # the study's metric on val, from the trials' own predictions (before any refit)
    accuracy: float  # on the evaluation split (test, or val without one)
    macro_f1: float
    latency_ms: float  # one image through ONNX Runtime on this machine's CPU
    size_mb: float  # weight bytes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EnsembleOutcome:
    """The shipped ensemble: its members and their weights, beside the best single trial."""

    metric: str
    split: str
    selection: Selection
    members: tuple[tuple[int, str, float], ...]  # (trial, model, weight), heaviest first
    ensemble: Shipped
    single: Shipped

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "split": self.split,
            "selection": self.selection.as_dict(),
            "members": [{"trial": t, "model": m, "weight": w} for t, m, w in self.members],
            "ensemble": self.ensemble.as_dict(),
            "single": self.single.as_dict(),
        }


@dataclass(frozen=True)
class DistillOutcome:
    """The shipped student beside its teacher and beside the same trial refit on the labels alone."""

    split: str
    student_trial: int
    student_reason: str  # why this trial: the fastest near the best, or --student
    teacher_trials: tuple[int, ...]
    teacher_weights: tuple[float, ...]
    temperature: float
    teacher_share: float
    teacher: Shipped
    alone: Shipped
    student: Shipped

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinalizeResult:
    study: str
    trial: int
    model: str
    weights_from: str  # TRIAL_WEIGHTS | RETRAINED | REFIT
    scores: Scores
    onnx_max_abs_diff: float
    onnx_accuracy: float
    onnx_size_mb: float
    int8_accuracy: float | None
    int8_size_mb: float | None
    out_dir: Path
    files: list[str]
    run_id: str
    registered: str  # "<name> version <n>"
    warnings: list[str] = field(default_factory=list)
    top_k: TopK | None = None  # only when --top-k or --seeds compared re-trained configs
    trade_off: dict[str, Any] | None = None  # the pick from the Pareto front, in a multi-objective study
    ensemble: EnsembleOutcome | None = None  # only when --ensemble shipped several trials
    tta: TtaChoice | None = None  # only with --tta: the policy judged on val, kept or not
    distill: DistillOutcome | None = None  # only with --distill: the student beside its teacher and alone


def model_preprocessing(spec: Spec, config: TrialConfig) -> Preprocessing:
    """The input size and mean/std the trial trained with (a backbone's own, or the spec's)."""
    from autocnn.training.assembly import preprocessing

    pre = preprocessing(study_settings(spec), config)
    return Preprocessing(pre.image_size, tuple(pre.mean), tuple(pre.std))


def load_trial_weights(tracker: Tracker, trial: optuna.trial.FrozenTrial, model: nn.Module) -> None:
    run_id = trial.user_attrs.get("mlflow_run_id")
    try:
        if not run_id:
            raise FileNotFoundError
        state = tracker.load_state_dict(run_id)
    except Exception:  # noqa: BLE001 - any missing artifact means: no saved weights for this trial
        raise ExportError(
            f"trial {trial.number} has no saved weights (only trials that were the best so far "
            "keep them); drop --no-refit to refit its config, or add --retrain"
        ) from None
    model.load_state_dict(state)


def recorded_budget(trial: optuna.trial.FrozenTrial, config: TrialConfig, data: Dataset) -> dict[str, Any]:
    """The epochs and patience the trial trained with (what `epochs: auto` became for it)."""
    from autocnn.training.budget import BUDGET_ATTR, steps_per_epoch

    recorded = trial.user_attrs.get(BUDGET_ATTR)
    if recorded:
        return dict(recorded)
    return {  # a trial from before budgets were recorded: its epochs were a number
        "steps_per_epoch": steps_per_epoch(len(data.train), config.train.batch_size),
        "epochs": int(config.train.epochs),
        "patience": config.train.early_stopping,
        "auto": False,
    }


def retrain(
    spec: Spec,
    trial: optuna.trial.FrozenTrial,
    config: TrialConfig,
    data: Dataset,
    *,
    refit: bool,
    seed: int = 0,
    targets: np.ndarray | None = None,
) -> Retrained:
    """Train the trial's config again, seeded as the trial was (seed 0) or offset; refit also learns from val.

    `targets` (a refit only): soft labels for train + val, in that order, that the loss aims at.
    """
    from autocnn.training.assembly import assemble_trial, train_settings, trial_seeds
    from autocnn.training.features import process_cache

    study = study_settings(spec)
    settings = train_settings(study, config, recorded_budget(trial, config, data), n_val=len(data.val))
    train_split = None
    if refit:  # no held-out data left to stop on: train as long as the trial's best epoch
        settings = replace(settings, epochs=best_epoch(trial, primary(spec)), early_stopping=0)
        train_split = Split(
            np.concatenate([data.train.images, data.val.images]),
            np.concatenate([data.train.labels, data.val.labels]),
            targets,
        )
    # Augmented exactly as the trial was, if it was; a frozen backbone on the study's cached features.
    assembled = assemble_trial(
        study,
        config,
        data,
        settings,
        seeds=trial_seeds(study, trial.number, seed),
        train_split=train_split,
        features=process_cache(study.feature_folder),
    )
    trainer = assembled.trainer
    for _ in trainer.fit(assembled.train, assembled.val):
        pass
    if not refit:
        trainer.restore_best()
    # The whole model: on the cached-feature path the trainer's own is only the head.
    return Retrained(assembled.model, float(trainer.best_value), trainer.best_epoch)


def pick_by_mean(candidates: list[Candidate], objective: Objective) -> Candidate:
    """The best mean by the objective; a tie goes to the candidate the study ranked higher."""
    return objective.best(candidates, lambda c: c.mean)


def why_picked(picked: Candidate, candidates: list[Candidate], metric: str, seeds: int) -> str:
    """The pick and its reason, in words a user can check against the table."""
    runs = f"{seeds} seed{'s' if seeds > 1 else ''}"
    chosen = (
        f"trial {picked.trial} ({picked.model}): best mean {metric} over {runs}, {picked.mean:.4f} ± {picked.std:.4f}"
    )
    if len(candidates) == 1:
        return f"{chosen}; the only configuration compared, its seeds show how much its score varies"
    first = candidates[0]
    why = f"the maximum of {len(candidates)} noisy validation scores flatters its winner"
    if picked is first:
        return f"{chosen}; also the study's best single value, which held up (ranked by mean: {why})"
    single = f"trial {first.trial}, {first.study_value:.4f}, mean {first.mean:.4f}"
    return f"{chosen}; not the study's best single value ({single}): {why}"


def compare_top_k(
    spec: Spec,
    trials: list[optuna.trial.FrozenTrial],
    cache: DataCache,
    seeds: int,
    say: Say,
) -> tuple[TopK, nn.Module]:
    """Re-train each config with `seeds` seeds on train, val picking each run's epoch; pick by mean.

    Returns the comparison and the pick's seed-0 model, which is exactly what `--retrain` would
    train for it. Only the leader's is kept, so a long comparison does not pile up models.
    """
    objective = primary(spec)
    metric = objective.metric
    say(f"re-training the {len(trials)} best configurations on train, {seeds} seed(s) each, to pick by mean {metric}")
    candidates: list[Candidate] = []
    leader: dict[int, nn.Module] = {}
    for trial in trials:
        candidate, seed0_model = rerun_config(spec, trial, cache, seeds, say)
        candidates.append(candidate)
        if pick_by_mean(candidates, objective) is candidate:
            leader = {candidate.trial: seed0_model}
    picked = pick_by_mean(candidates, objective)
    reason = why_picked(picked, candidates, metric, seeds)
    say(f"picked {reason}")
    return TopK(metric, objective.direction, seeds, tuple(candidates), picked, reason), leader[picked.trial]


def rerun_config(
    spec: Spec, trial: optuna.trial.FrozenTrial, cache: DataCache, seeds: int, say: Say
) -> tuple[Candidate, nn.Module]:
    """One config's seeds on train, and its seed-0 model (the one `--retrain` would give)."""
    config = config_from_params(spec, trial.params)
    pre = model_preprocessing(spec, config)
    data = cache.get(pre.image_size)

    def run(seed: int) -> Retrained:
        done = retrain(spec, trial, config, data, refit=False, seed=seed)
        say(f"trial {trial.number} ({config.model}) seed {seed}: {primary(spec).metric} {done.value:.4f}")
        return done

    first = run(0)
    seed0_model = first.model.cpu()
    values = (first.value, *(run(seed).value for seed in range(1, seeds)))
    return Candidate(trial.number, config.model, float(trial.value), values), seed0_model


def log_final_run(
    tracker: Tracker,
    spec: Spec,
    trial: optuna.trial.FrozenTrial,
    config: TrialConfig,
    model: nn.Module,
    scores: Scores,
    facts: dict[str, float],
    out: Path,
    how: str,
    top_k: TopK | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """A `final` run nested under the study's run; the model registered under the study's name."""
    from autocnn.figures import confusion_matrix_figure
    from autocnn.tracking.tracker import ROLE_TAG, STUDY_TAG

    parent = tracker.find_study_run(spec.name)
    tags = {
        ROLE_TAG: "final",
        STUDY_TAG: spec.name,
        "mlflow.runName": "final",
        "autocnn.trial": str(trial.number),
        "autocnn.model": config.model,
        "autocnn.weights_from": how,
        "autocnn.eval_split": scores.split,
    }
    extra = extra or {}
    ensemble, tta = extra.get("ensemble"), extra.get("tta")
    if ensemble is not None:
        tags["autocnn.model"] = "ensemble"
        tags["autocnn.ensemble"] = ",".join(str(m["trial"]) for m in ensemble["members"])
    if tta is not None:
        tags["autocnn.tta"] = tta["policy"]
    distill = extra.get("distill")
    if distill is not None:
        tags["autocnn.distilled_from"] = ",".join(str(t) for t in distill["teacher_trials"])
    run_id = tracker.start_final_run(parent.info.run_id if parent is not None else None, tags, config.flat())
    try:
        split = scores.split
        metrics = {
            f"{split}_accuracy": scores.accuracy,
            f"{split}_macro_f1": scores.macro_f1,
            f"{split}_balanced_accuracy": scores.balanced_accuracy,
        }
        metrics.update({k.replace("accuracy", f"{split}_accuracy"): v for k, v in facts.items()})
        if top_k is not None:
            metrics.update(topk_mean=top_k.picked.mean, topk_std=top_k.picked.std)
            tracker.log_dict(run_id, top_k.as_dict(), "top_k.json")
        if ensemble is not None:
            metrics.update(
                ensemble_val_score=ensemble["ensemble"]["val_score"],
                single_val_score=ensemble["single"]["val_score"],
                ensemble_latency_ms=ensemble["ensemble"]["latency_ms"],
                single_latency_ms=ensemble["single"]["latency_ms"],
            )
            metrics[f"single_{split}_accuracy"] = ensemble["single"]["accuracy"]
        if distill is not None:
            for row in ("teacher", "alone"):
                metrics[f"{row}_{split}_accuracy"] = distill[row]["accuracy"]
                metrics[f"{row}_latency_ms"] = distill[row]["latency_ms"]
            metrics["student_latency_ms"] = distill["student"]["latency_ms"]
        if tta is not None and f"{split}_accuracy_without" in tta:
            metrics[f"{split}_accuracy_without_tta"] = tta[f"{split}_accuracy_without"]
        for name, record in extra.items():
            tracker.log_dict(run_id, record, f"{name}.json")
        tracker.log_facts(run_id, metrics)
        tracker.flush()  # log_facts only gathers: the run must hold its metrics before it closes
        figure = confusion_matrix_figure(scores.labels, scores.preds, scores.classes)
        tracker.log_figure(run_id, figure, "confusion_matrix.png")
        tracker.log_dict(run_id, scores.per_class, "per_class_metrics.json")
        tracker.log_text(run_id, scores.per_class_text, "per_class_metrics.txt")
        tracker.log_artifact(run_id, out, "export")
        uri = tracker.log_model(run_id, model)
        version = tracker.register_model(
            uri,
            spec.name,
            tags={"trial": str(trial.number), f"{split}_accuracy": f"{scores.accuracy:.4f}"},
        )
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id, "FINISHED")
    return run_id, version


def obtain_model(
    spec: Spec,
    trial: optuna.trial.FrozenTrial,
    config: TrialConfig,
    data: Dataset,
    pre: Preprocessing,
    tracker: Tracker,
    options: FinalizeOptions,
    say: Say,
    *,
    retrained: nn.Module | None = None,
) -> tuple[nn.Module, str]:
    """The final weights, and where they came from: a refit, a retrain or the trial's own.

    `retrained` is a seed-0 run of this config on train (from the top-k comparison): it is exactly
    what `--retrain` trains, so it is used instead of training the same model a second time.
    """
    from autocnn.models.build import build_model

    how = options.weights_from
    if how == REFIT:
        epochs = best_epoch(trial, primary(spec))
        n_images = len(data.train) + len(data.val)
        say(
            f"trial {trial.number} ({config.model}): refitting on train+val ({n_images} images) for {epochs} "
            "epochs, where the trial peaked (--no-refit keeps its saved weights)"
        )
        return retrain(spec, trial, config, data, refit=True).model, how
    if how == RETRAINED:
        if retrained is not None:
            say(f"trial {trial.number} ({config.model}): its seed-0 run on train from the comparison ({how})")
            return retrained, how
        say(f"trial {trial.number} ({config.model}): training its config again ({how})")
        return retrain(spec, trial, config, data, refit=False).model, how
    say(f"trial {trial.number} ({config.model}): its saved best-epoch weights ({how})")
    model = build_model(  # no pretrained weights: the trial's own replace them at once
        config.model,
        config.model_params,
        num_classes=data.num_classes,
        image_size=pre.image_size,
        load_weights=False,
    )
    load_trial_weights(tracker, trial, model)
    return model, how


def choose_trial(
    spec: Spec, study: optuna.Study, cache: DataCache, options: FinalizeOptions, say: Say, warnings: list[str]
) -> tuple[optuna.trial.FrozenTrial, TopK | None, nn.Module | None]:
    """The trial to finalize; with --top-k/--seeds also the comparison and the pick's seed-0 model."""
    objective = primary(spec)
    if not options.compares and options.trial is None and (options.pick is not None or _has_front(spec)):
        from autocnn.search.pareto import pick_from_front
        from autocnn.spec.objectives import study_objectives

        chosen = pick_from_front(study, study_objectives(spec), objective, options.pick)
        say(f"picked trial {chosen.trial.number}: {chosen.reason}")
        return chosen.trial, None, None
    if not options.compares:
        return pick_trial(study, objective, options.trial), None, None
    if options.trial is not None:
        trials = [pick_trial(study, objective, options.trial)]
    else:
        trials, short = top_trials(study, options.top_k, objective)
        warnings.extend(short)
    top_k, seed0_model = compare_top_k(spec, trials, cache, options.seeds, say)
    picked = next(t for t in trials if t.number == top_k.picked.trial)
    return picked, top_k, seed0_model


def _has_front(spec: Spec) -> bool:
    """Several objectives or constraints: the trial comes from the Pareto front."""
    from autocnn.spec.objectives import is_multi_objective

    return is_multi_objective(spec) or bool(spec.study.constraints)


def trade_off(
    spec: Spec, study: optuna.Study, trial: optuna.trial.FrozenTrial, rule: str | None
) -> dict[str, Any] | None:
    """What the exported model trades: its objective values and costs, the rule, the front."""
    from autocnn.search.pareto import pareto_front, trial_quantities
    from autocnn.spec.objectives import study_objectives

    if not _has_front(spec) and rule is None:
        return None
    objectives = study_objectives(spec)
    main = primary(spec)
    return {
        "rule": rule or f"{'max' if main.maximize else 'min'} {main.metric} (no --pick rule)",
        "trial": trial.number,
        "values": trial_quantities(trial, objectives),
        "objectives": spec.study.objective_names,
        "constraints": {name: {"max": bound} for name, bound in (spec.study.constraints or {}).items()},
        "pareto_front": [t.number for t in pareto_front(study, objectives)],
        "latency_machine": trial.user_attrs.get("autocnn.latency_machine"),
    }


def finalize(spec: Spec, options: FinalizeOptions | None = None, say: Say | None = None) -> FinalizeResult:
    """Best trial -> weights -> one evaluation -> ONNX + int8 -> `final` MLflow run + registry.

    Example:
        >>> final = autocnn.finalize(spec, autocnn.FinalizeOptions(top_k=3, seeds=2), say=print)
        >>> final.scores.accuracy, final.out_dir
    """
    from autocnn.search.storage import open_study, storage_url
    from autocnn.tracking.tracker import Tracker, default_tracking_uri

    options = options or FinalizeOptions()
    check_options(options)
    say = say or (lambda _text: None)
    warnings: list[str] = []
    study = open_study(spec, storage_url(spec, options.storage))
    cache = DataCache(spec.data, seed=spec.seed)
    tracker = Tracker(
        options.tracking_uri or spec.mlflow.tracking_uri or default_tracking_uri(),
        spec.experiment_name,
    )
    if options.distill:
        return finalize_distilled(spec, study, cache, tracker, options, say, warnings)
    if options.ensemble > 1:
        selection = select_members(spec, study, cache, tracker, options.ensemble, say, warnings)
        if len(selection.trials) > 1:
            return finalize_ensemble(spec, study, cache, tracker, selection, options, say, warnings)
        options = replace(options, trial=selection.trials[0], ensemble=1)
    trial, top_k, seed0_model = choose_trial(spec, study, cache, options, say, warnings)
    config = config_from_params(spec, trial.params)
    pre = model_preprocessing(spec, config)
    data = cache.get(pre.image_size)
    model, how = obtain_model(spec, trial, config, data, pre, tracker, options, say, retrained=seed0_model)
    member = Member(trial, config, pre, model, 1.0)
    shipment = Shipment(model, pre, data, how, [member])
    return ship(spec, study, cache, tracker, shipment, options, say, warnings, top_k=top_k)


@dataclass(frozen=True)
class Member:
    """One trial in what is shipped: its config, its input and its final weights."""

    trial: optuna.trial.FrozenTrial
    config: TrialConfig
    pre: Preprocessing
    model: nn.Module
    weight: float


@dataclass(frozen=True)
class Shipment:
    """What finalize ships before it is scored: one trial's model, or an ensemble of several."""

    model: nn.Module
    pre: Preprocessing
    data: Dataset  # decoded at pre.image_size
    how: str  # where the weights came from
    members: list[Member]  # heaviest first; one for a single trial
    rebuild: dict[str, Any] | None = None  # model.json for an ensemble

    @property
    def lead(self) -> Member:
        return self.members[0]

    @property
    def name(self) -> str:
        return self.lead.config.model if len(self.members) == 1 else "ensemble"


def ship(
    spec: Spec,
    study: optuna.Study,
    cache: DataCache,
    tracker: Tracker,
    shipment: Shipment,
    options: FinalizeOptions,
    say: Say,
    warnings: list[str],
    *,
    top_k: TopK | None = None,
    selection: Selection | None = None,
    lesson: Lesson | None = None,
) -> FinalizeResult:
    """TTA where it helps, one evaluation, the bundle, ONNX + int8, the `final` run and registry."""
    from autocnn.models.onnx import export_and_check

    trial, pre, data = shipment.lead.trial, shipment.pre, shipment.data
    tta = judge_tta(spec, tracker, shipment, say, warnings) if options.tta else None
    model = shipment.model if tta is None or tta.policy == "none" else with_tta(shipment.model, tta, pre)
    split, evaluated = eval_split(data)
    warnings.extend(_split_warnings(split, shipment.how))
    say(f"evaluating {describe(shipment, tta)} once on the {split} split ({len(evaluated)} images)")
    reference = torch_logits(model, evaluated.images, pre)
    scores = score(split, evaluated.labels, reference, data.classes)

    out = options.out_dir or Path.cwd() / "models" / spec.name
    views = {"flip": tta.flip, "crops": tta.crops} if model is not shipment.model and tta is not None else None
    write_bundle(
        out,
        model=shipment.model,
        config=shipment.lead.config,
        data=data,
        pre=pre,
        spec=spec,
        trial_number=trial.number,
        rebuild=shipment.rebuild,
        tta=views,
    )
    say(f"exporting ONNX (float, then int8) to {out}")
    facts = export_and_check(out, model, evaluated, reference, data, pre, spec.seed, warnings)
    about: dict[str, Any] = {"study": spec.name, "trial": trial.number, "model": shipment.name}
    about["weights_from"] = shipment.how
    if top_k is not None:
        about["top_k"] = top_k.as_dict()
    outcome = None
    if selection is not None:
        name = "ensemble" + ("" if tta is None or tta.policy == "none" else f" + TTA ({tta.policy})")
        outcome = ensemble_outcome(primary(spec).metric, cache, shipment, selection, scores, out / ONNX_FILE, name)
        about["ensemble"] = outcome.as_dict()
    distilled = None
    if lesson is not None:
        distilled = distill_outcome(cache, shipment, lesson, scores, out / ONNX_FILE)
        about["distill"] = distilled.as_dict()
    if tta is not None:
        tta = with_latency(tta, shipment.model, out / ONNX_FILE, pre)
        about["tta"] = tta.as_dict()
        if model is not shipment.model:
            plain = score(split, evaluated.labels, torch_logits(shipment.model, evaluated.images, pre), data.classes)
            about["tta"][f"{split}_accuracy_without"] = plain.accuracy
    chosen = trade_off(spec, study, trial, options.pick)
    if chosen is not None:
        about["trade_off"] = chosen
        (out / TRADE_OFF_FILE).write_text(json.dumps(chosen, indent=2))
    write_metrics(out, about, scores, facts)
    if tracker.find_study_run(spec.name) is None:
        warnings.append(f"no MLflow run for study '{spec.name}': the final run stands on its own")
    say("logging the final run to MLflow and registering the model")
    extra = {key: about[key] for key in ("ensemble", "tta", "distill") if key in about}
    run_id, version = log_final_run(
        tracker, spec, trial, shipment.lead.config, model, scores, facts, out, shipment.how, top_k, extra=extra
    )
    return FinalizeResult(
        study=spec.name,
        trial=trial.number,
        model=shipment.name,
        weights_from=shipment.how,
        scores=scores,
        onnx_max_abs_diff=facts["onnx_max_abs_diff"],
        onnx_accuracy=facts["onnx_accuracy"],
        onnx_size_mb=facts["onnx_size_mb"],
        int8_accuracy=facts.get("int8_accuracy"),
        int8_size_mb=facts.get("int8_size_mb"),
        out_dir=out,
        files=sorted(p.name for p in out.iterdir() if p.is_file()),
        run_id=run_id,
        registered=f"{spec.name} version {version}",
        warnings=warnings,
        top_k=top_k,
        trade_off=chosen,
        ensemble=outcome,
        tta=tta,
        distill=distilled,
    )


def describe(shipment: Shipment, tta: TtaChoice | None) -> str:
    what = f"trial {shipment.lead.trial.number}" if len(shipment.members) == 1 else "the ensemble"
    return what + (f" with TTA ({tta.policy})" if tta is not None and tta.policy != "none" else "")


# --------------------------------------------------------------------------- test-time augmentation


def judge_tta(spec: Spec, tracker: Tracker, shipment: Shipment, say: Say, warnings: list[str]) -> TtaChoice | None:
    """Score TTA on val with weights that never trained on val: the shipped ones unless they were
    refit on train + val, then the trials' own saved weights; None when there are none to judge."""
    from autocnn.outputs.tta import choose_tta, flips_allowed

    judge = shipment.model
    judged_on = "the shipped weights (val held out)"
    if shipment.how == REFIT:
        judge = held_out_model(shipment, tracker)
        judged_on = "the trials' own saved weights (the refit trained on val)"
        if judge is None:
            warnings.append(
                "--tta: the refit trained on val and a trial kept no weights of its own to judge TTA on; "
                "not applied (add --no-refit or --retrain)"
            )
            return None
    augment = spec.augment
    allowed = augment is not None and augment.enabled is not False and flips_allowed(augment.hflip)
    say(
        f"judging test-time augmentation on val ({'flips and crops' if allowed else 'crops; the spec allows no flips'})"
    )
    val = shipment.data.val
    choice = choose_tta(judge, val.images, val.labels, shipment.pre, flips_allowed=allowed, judged_on=judged_on)
    say(f"test-time augmentation {choice.reason()}")
    return choice


def held_out_model(shipment: Shipment, tracker: Tracker) -> nn.Module | None:
    """The shipment rebuilt from its trials' saved weights (trained on train only), or None."""
    from autocnn.models.build import build_model
    from autocnn.models.ensemble import Ensemble

    models = []
    for member in shipment.members:
        model = build_model(
            member.config.model,
            member.config.model_params,
            num_classes=shipment.data.num_classes,
            image_size=member.pre.image_size,
            load_weights=False,
        )
        try:
            load_trial_weights(tracker, member.trial, model)
        except ExportError:
            return None
        models.append(model.eval())
    if len(models) == 1:
        return models[0]
    return Ensemble(models, [m.pre for m in shipment.members], [m.weight for m in shipment.members]).eval()


def with_tta(model: nn.Module, tta: TtaChoice, pre: Preprocessing) -> nn.Module:
    from autocnn.models.tta import TestTimeAugmented

    return TestTimeAugmented(model, flip=tta.flip, crops=tta.crops, image_size=pre.image_size).eval()


def with_latency(tta: TtaChoice, plain: nn.Module, shipped_onnx: Path, pre: Preprocessing) -> TtaChoice:
    """The choice with the cost of one image through ONNX Runtime, with and without the views."""
    from autocnn.models.onnx import onnx_file_latency_ms, onnx_latency_ms

    latency = {"none": onnx_latency_ms(plain, image_size=pre.image_size)}
    if tta.policy != "none":
        latency[tta.policy] = onnx_file_latency_ms(shipped_onnx, image_size=pre.image_size)
    return replace(tta, latency_ms=latency)


# --------------------------------------------------------------------------- several trials as one


def select_members(
    spec: Spec, study: optuna.Study, cache: DataCache, tracker: Tracker, k: int, say: Say, warnings: list[str]
) -> Selection:
    """Up to k trials chosen by forward selection on their saved val predictions."""
    from autocnn.errors import StudyError
    from autocnn.outputs.ensemble import MAX_CANDIDATES, scorer_for, select_ensemble
    from autocnn.search.results import complete_trials, no_complete_trial, ranked

    objective = primary(spec)
    candidates = ranked(complete_trials(study), objective)[:MAX_CANDIDATES]
    if not candidates:
        raise StudyError(no_complete_trial(study))
    labels = cache.get(spec.data.image_size).val.labels
    probs = {t.number: p for t in candidates if (p := saved_val_probs(tracker, t, len(labels))) is not None}
    if not probs:
        raise StudyError(
            f"--ensemble {k}: none of the {len(candidates)} best trials saved its val predictions "
            "(trials from an older autocnn); run more trials with `autocnn study`"
        )
    if len(probs) < len(candidates):
        warnings.append(
            f"--ensemble: {len(candidates) - len(probs)} of the {len(candidates)} best trials saved no val "
            "predictions and were left out of the selection"
        )
    selection = select_ensemble(probs, labels, scorer_for(objective.metric), max_members=k)
    chosen = ", ".join(f"trial {t} x{w:.2f}" for t, w in zip(selection.trials, selection.weights, strict=True))
    say(
        f"ensemble selection over {len(probs)} trials on val {objective.metric}: {chosen} "
        f"({selection.val_score:.4f} against the best single trial's {selection.single_val_score:.4f})"
    )
    if len(selection.trials) == 1:
        warnings.append(
            f"--ensemble {k}: no mix of trials scored better on val than trial {selection.trials[0]} alone; "
            "it ships alone"
        )
    return selection


def saved_val_probs(tracker: Tracker, trial: optuna.trial.FrozenTrial, n_val: int) -> np.ndarray | None:
    """The trial's val probabilities, or None when it saved none (or for another val split)."""
    from autocnn.search.trial import VAL_PROBS_ARTIFACT

    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        return None
    try:
        probs = tracker.load_array(run_id, VAL_PROBS_ARTIFACT)
    except Exception:  # noqa: BLE001 - any missing artifact means: this trial cannot join
        return None
    return probs.astype(np.float32) if probs.ndim == 2 and len(probs) == n_val else None


def finalize_ensemble(
    spec: Spec,
    study: optuna.Study,
    cache: DataCache,
    tracker: Tracker,
    selection: Selection,
    options: FinalizeOptions,
    say: Say,
    warnings: list[str],
) -> FinalizeResult:
    """Each member refit as a single trial would be, then one module, shipped as one model."""
    shipment = ensemble_shipment(spec, study, cache, tracker, selection, options, say)
    return ship(spec, study, cache, tracker, shipment, options, say, warnings, selection=selection)


def ensemble_shipment(
    spec: Spec,
    study: optuna.Study,
    cache: DataCache,
    tracker: Tracker,
    selection: Selection,
    options: FinalizeOptions,
    say: Say,
) -> Shipment:
    """The selected trials, each given its final weights, as one module and its rebuild record."""
    from autocnn.models.ensemble import ENSEMBLE, Ensemble, ensemble_preprocessing, member_description

    members = []
    how = options.weights_from
    for number, weight in zip(selection.trials, selection.weights, strict=True):
        trial = pick_trial(study, primary(spec), number)
        config = config_from_params(spec, trial.params)
        pre = model_preprocessing(spec, config)
        say(f"ensemble member {len(members) + 1} of {len(selection.trials)}: trial {number}, weight {weight:.2f}")
        model, how = obtain_model(spec, trial, config, cache.get(pre.image_size), pre, tracker, options, say)
        members.append(Member(trial, config, pre, model.cpu().eval(), weight))
    pre = ensemble_preprocessing([m.pre for m in members])
    ensemble = Ensemble([m.model for m in members], [m.pre for m in members], [m.weight for m in members]).eval()
    data = cache.get(pre.image_size)
    rebuild = {
        "model": ENSEMBLE,
        "members": [member_description(m.pre, m.config.model, m.config.model_params, m.trial.number) for m in members],
        "weights": [m.weight for m in members],
        "num_classes": data.num_classes,
        "image_size": pre.image_size,
        "study": spec.name,
        "trial": members[0].trial.number,
    }
    return Shipment(ensemble, pre, data, how, members, rebuild)


def ensemble_outcome(
    metric: str, cache: DataCache, shipment: Shipment, selection: Selection, scores: Scores, onnx_file: Path, name: str
) -> EnsembleOutcome:
    """The shipped ensemble (`name`) beside its best single member, scored once on the same split."""
    best = next(m for m in shipment.members if m.trial.number == selection.single_trial)
    split, single_split = eval_split(cache.get(best.pre.image_size))
    single_logits = torch_logits(best.model, single_split.images, best.pre)
    single_scores = score(split, single_split.labels, single_logits, scores.classes)
    return EnsembleOutcome(
        metric=metric,
        split=split,
        selection=selection,
        members=tuple((m.trial.number, m.config.model, m.weight) for m in shipment.members),
        ensemble=shipped_row(name, selection.val_score, scores, shipment.model, shipment.pre, onnx_file=onnx_file),
        single=shipped_row(
            f"trial {best.trial.number} alone", selection.single_val_score, single_scores, best.model, best.pre
        ),
    )


def shipped_row(
    name: str, val_score: float, scores: Scores, model: nn.Module, pre: Preprocessing, *, onnx_file: Path | None = None
) -> Shipped:
    """Scores and costs side by side; latency from the shipped ONNX file where there is one."""
    from autocnn.models.onnx import onnx_file_latency_ms, onnx_latency_ms

    latency = (
        onnx_file_latency_ms(onnx_file, image_size=pre.image_size)
        if onnx_file is not None
        else onnx_latency_ms(model, image_size=pre.image_size)
    )
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    return Shipped(name, val_score, scores.accuracy, scores.macro_f1, latency, size)


# --------------------------------------------------------------------------- a fast student, taught


@dataclass(frozen=True)
class Lesson:
    """What a distilled shipment is compared with: its teacher, and the student trained alone."""

    teacher: Shipment
    selection: Selection
    alone: nn.Module
    student_value: float  # the student trial's own study value (val, before any refit)
    student_reason: str


def finalize_distilled(
    spec: Spec,
    study: optuna.Study,
    cache: DataCache,
    tracker: Tracker,
    options: FinalizeOptions,
    say: Say,
    warnings: list[str],
) -> FinalizeResult:
    """The teacher (an ensemble of the best trials, each refit), the student refit alone, then the
    student trained on the teacher's soft labels and shipped; all three scored once on the same split."""
    from autocnn.outputs.distill import TEACHER_K, TEACHER_SHARE, TEMPERATURE, soft_targets

    k = options.ensemble if options.ensemble > 1 else TEACHER_K
    selection = select_members(spec, study, cache, tracker, k, say, warnings)
    teacher = ensemble_shipment(spec, study, cache, tracker, selection, options, say)
    student, reason = choose_student(spec, study, cache, options.student, say)
    config = config_from_params(spec, student.params)
    pre = model_preprocessing(spec, config)
    data = cache.get(pre.image_size)
    say(f"the student alone: trial {student.number} refit on the labels")
    alone, _ = obtain_model(spec, student, config, data, pre, tracker, options, say)
    labels = np.concatenate([data.train.labels, data.val.labels])
    probs = teacher_probs(teacher, cache)
    held_out = held_out_val_probs(study, tracker, selection, len(data.val))
    if held_out is not None:
        probs[len(data.train) :] = held_out
        say("the teacher's val probabilities: its members' search-time predictions, made before they saw val")
    targets = soft_targets(probs, labels)
    say(
        f"distilling: trial {student.number} refit on train+val against the teacher's soft labels "
        f"(temperature {TEMPERATURE:g}, {TEACHER_SHARE:.0%} teacher, {1 - TEACHER_SHARE:.0%} label)"
    )
    model = retrain(spec, student, config, data, refit=True, targets=targets).model
    shipment = Shipment(model, pre, data, DISTILLED, [Member(student, config, pre, model, 1.0)])
    value = primary(spec).of(student)
    lesson = Lesson(teacher, selection, alone, float("nan") if value is None else value, reason)
    return ship(spec, study, cache, tracker, shipment, options, say, warnings, lesson=lesson)


def choose_student(
    spec: Spec, study: optuna.Study, cache: DataCache, number: int | None, say: Say
) -> tuple[optuna.trial.FrozenTrial, str]:
    """`--student N`, or the fastest trial within one standard error of the best on val, timed as
    `predict` runs them."""
    from autocnn.outputs.distill import STUDENT_POOL, fastest, near_the_best
    from autocnn.search.results import complete_trials, ranked
    from autocnn.training.budget import standard_error

    objective = primary(spec)
    if number is not None:
        return pick_trial(study, objective, number), f"trial {number}, as --student asked"
    pool = ranked(complete_trials(study), objective)[:STUDENT_POOL]
    if not pool:
        return pick_trial(study, objective, None), "the best trial"  # raises the study's own error
    data = cache.get(spec.data.image_size)
    values = {t.number: v for t in pool if (v := objective.of(t)) is not None}
    error = standard_error(objective.metric, values[pool[0].number], len(data.val))
    near = near_the_best(values, maximize=objective.maximize, within=error)
    candidates = [t for t in pool if t.number in near]
    latencies = trial_latencies(spec, candidates, data.num_classes)
    chosen = next(t for t in candidates if t.number == fastest(latencies))
    reason = (
        f"the fastest of the {len(candidates)} trials within one standard error ({error:.4f}) of the best "
        f"{objective.metric}: {latencies[chosen.number]:.2f} ms per image "
        f"(the best trial, {pool[0].number}: {latencies[pool[0].number]:.2f} ms)"
    )
    say(f"student: trial {chosen.number}, {reason}")
    return chosen, reason


def trial_latencies(spec: Spec, trials: list[optuna.trial.FrozenTrial], num_classes: int) -> dict[int, float]:
    """ONNX Runtime latency per trial, best first: the study's recorded cost where it measured one,
    else timed here, once per architecture and input size."""
    from autocnn.models.build import build_model
    from autocnn.models.onnx import onnx_latency_ms
    from autocnn.search.costs import trial_costs

    timed: dict[str, float] = {}
    out = {}
    for trial in trials:
        recorded = trial_costs(trial).get("latency_ms")
        if recorded is not None:
            out[trial.number] = recorded
            continue
        config = config_from_params(spec, trial.params)
        pre = model_preprocessing(spec, config)
        key = json.dumps([config.model, config.model_params, pre.image_size], sort_keys=True, default=str)
        if key not in timed:
            model = build_model(
                config.model,
                config.model_params,
                num_classes=num_classes,
                image_size=pre.image_size,
                load_weights=False,
            )
            timed[key] = onnx_latency_ms(model.eval(), image_size=pre.image_size)
        out[trial.number] = timed[key]
    return out


def teacher_probs(teacher: Shipment, cache: DataCache) -> np.ndarray:
    """The teacher's probabilities for train + val (the refit's images, in its order), each image
    at the teacher's own input size."""
    from autocnn.outputs.predict import softmax

    data = cache.get(teacher.pre.image_size)
    images = np.concatenate([data.train.images, data.val.images])
    return softmax(torch_logits(teacher.model, images, teacher.pre))


def held_out_val_probs(study: optuna.Study, tracker: Tracker, selection: Selection, n_val: int) -> np.ndarray | None:
    """The teacher's val probabilities from before it saw val: its members' saved search-time
    predictions, mixed by the selection's weights; None when a member saved none."""
    from autocnn.outputs.ensemble import mixed

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    probs = [saved_val_probs(tracker, trials[number], n_val) for number in selection.trials]
    if any(p is None for p in probs):
        return None
    return mixed([p for p in probs if p is not None], selection.weights)


def distill_outcome(
    cache: DataCache, shipment: Shipment, lesson: Lesson, scores: Scores, onnx_file: Path
) -> DistillOutcome:
    """The student, its teacher and the student alone, scored once on the same evaluation split."""
    from autocnn.outputs.distill import TEACHER_SHARE, TEMPERATURE

    teacher = lesson.teacher
    split, teacher_split = eval_split(cache.get(teacher.pre.image_size))
    teacher_scores = score(
        split, teacher_split.labels, torch_logits(teacher.model, teacher_split.images, teacher.pre), scores.classes
    )
    _, student_split = eval_split(shipment.data)
    alone_scores = score(
        split, student_split.labels, torch_logits(lesson.alone, student_split.images, shipment.pre), scores.classes
    )
    number = shipment.lead.trial.number
    return DistillOutcome(
        split=split,
        student_trial=number,
        student_reason=lesson.student_reason,
        teacher_trials=lesson.selection.trials,
        teacher_weights=lesson.selection.weights,
        temperature=TEMPERATURE,
        teacher_share=TEACHER_SHARE,
        teacher=shipped_row(
            "teacher (ensemble)", lesson.selection.val_score, teacher_scores, teacher.model, teacher.pre
        ),
        alone=shipped_row(f"trial {number} alone", lesson.student_value, alone_scores, lesson.alone, shipment.pre),
        student=shipped_row(
            f"trial {number} distilled", lesson.student_value, scores, shipment.model, shipment.pre, onnx_file=onnx_file
        ),
    )


def _split_warnings(split: str, how: str) -> list[str]:
    if split == "test":
        return []
    out = ["no test split (split.test is 0 and no test/ folder): evaluated on val, labelled as such"]
    if how in (REFIT, DISTILLED):
        out.append(
            "the refit trained on val too (--no-refit keeps the trial's weights): these val numbers are optimistic"
        )
    return out
