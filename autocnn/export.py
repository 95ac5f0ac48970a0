"""From a finished study to a shippable model: `autocnn finalize`.

The best trial (or `--trial N`) is rebuilt from its Optuna params, given weights (its own saved
best-epoch weights, or trained again with `--retrain` / `--refit`), evaluated once on the test
split, logged to a `final` MLflow run nested under the study, registered under the study's name,
and exported to a folder that `autocnn predict` (or any ONNX runtime) can use on its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autocnn.data import DataCache, Dataset, Split
from autocnn.errors import ExportError, StudyError
from autocnn.predict import (
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREPROCESS_FILE,
    WEIGHTS_FILE,
    Preprocessing,
    normalize,
)
from autocnn.spec import Spec

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from autocnn.space import TrialConfig
    from autocnn.tracking import Tracker

Say = Callable[[str], None]


@dataclass(frozen=True)
class FinalizeOptions:
    trial: int | None = None  # default: the study's best trial
    retrain: bool = False  # train the trial's config again on train (val picks the best epoch)
    refit: bool = False  # train on train + val for the trial's best number of epochs
    storage: str | None = None
    tracking_uri: str | None = None
    out_dir: Path | None = None  # default: ./models/<study>


@dataclass(frozen=True)
class Scores:
    """One evaluation: which split, and what the model got right there."""

    split: str
    n_images: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, Any]
    per_class_text: str
    labels: np.ndarray
    preds: np.ndarray
    classes: list[str]

    def confusion(self) -> list[list[int]]:
        from sklearn.metrics import confusion_matrix

        return confusion_matrix(self.labels, self.preds, labels=list(range(len(self.classes)))).tolist()


@dataclass
class FinalizeResult:
    study: str
    trial: int
    model: str
    weights_from: str  # "trial weights" | "retrained on train" | "refit on train+val"
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


# ------------------------------------------------------------------- which trial, which weights


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    """The best complete trial, or trial `number` if it completed."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number is None:
        try:
            return study.best_trial
        except ValueError:
            raise StudyError(
                f"study '{study.study_name}' has no complete trial yet; run `autocnn study` first"
            ) from None
    if number not in trials:
        raise StudyError(f"--trial {number}: no such trial in study '{study.study_name}' (0..{len(trials) - 1})")
    if trials[number].state.name != "COMPLETE":
        raise StudyError(f"--trial {number}: trial is {trials[number].state.name}; pick a COMPLETE trial")
    return trials[number]


def model_preprocessing(spec: Spec, config: TrialConfig) -> Preprocessing:
    """The input size and mean/std the trial trained with (a backbone's own, or the spec's)."""
    from autocnn.models import preprocess_for
    from autocnn.study import native_size

    pre = preprocess_for(
        config.model,
        config.model_params,
        image_size=spec.data.image_size,
        native_size=native_size(spec),
    )
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
            "keep them); add --retrain to train its config again"
        ) from None
    model.load_state_dict(state)


def best_epoch(trial: optuna.trial.FrozenTrial, direction: str) -> int:
    """The epoch at which the trial's metric peaked: how long a refit on train+val trains."""
    curve = trial.intermediate_values
    if not curve:
        return 1
    pick = max if direction == "maximize" else min
    return int(pick(curve, key=lambda step: curve[step]))


def retrain(
    spec: Spec,
    trial: optuna.trial.FrozenTrial,
    config: TrialConfig,
    data: Dataset,
    pre: Preprocessing,
    *,
    refit: bool,
) -> nn.Module:
    """Train the trial's config again, seeded as the trial was; refit also learns from val."""
    import torch

    from autocnn.models import build_model, optimizer_groups
    from autocnn.study import make_train_batches
    from autocnn.train import TensorBatches, Trainer, TrainSettings, pick_device

    torch.manual_seed(spec.seed * 100_003 + trial.number)
    model = build_model(
        config.model,
        config.model_params,
        num_classes=data.num_classes,
        image_size=pre.image_size,
        base_dir=spec.base_dir,
    )
    settings = TrainSettings.from_trial(config.train, monitor=spec.study.metric, direction=spec.study.direction)
    train_split = data.train
    if refit:  # no held-out data left to stop on: train as long as the trial's best epoch
        settings = replace(settings, epochs=best_epoch(trial, spec.study.direction), early_stopping=0)
        train_split = Split(
            np.concatenate([data.train.images, data.val.images]),
            np.concatenate([data.train.labels, data.val.labels]),
        )
    device = pick_device()
    batch_size = int(config.train["batch_size"])
    train, _ = make_train_batches(  # augmented exactly as the trial was, if it was
        config.augment,
        train_split,
        pre,
        batch_size=batch_size,
        seed=spec.seed + trial.number,
        device=device,
    )
    val = TensorBatches(data.val, pre, batch_size=max(256, batch_size), shuffle=False, device=device)
    groups = optimizer_groups(config.model, model, config.model_params, lr=settings.lr)
    trainer = Trainer(model, settings, steps_per_epoch=len(train), device=device, param_groups=groups)
    for _ in trainer.fit(train, val):
        pass
    if not refit:
        trainer.restore_best()
    return trainer.model


# --------------------------------------------------------------------------- evaluation


def torch_logits(model: nn.Module, images: np.ndarray, pre: Preprocessing, *, batch: int = 256) -> np.ndarray:
    """float32 CPU logits: the reference the ONNX files are checked and compared against."""
    import torch

    model = model.cpu().eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(normalize(images[i : i + batch], pre.mean, pre.std))
            out.append(model(x).float().numpy())
    return np.concatenate(out)


def score(split: str, labels: np.ndarray, logits: np.ndarray, classes: list[str]) -> Scores:
    from sklearn.metrics import accuracy_score, f1_score

    from autocnn.figures import per_class_table

    preds = logits.argmax(axis=1)
    table, text = per_class_table(labels, preds, classes)
    return Scores(
        split=split,
        n_images=len(labels),
        accuracy=float(accuracy_score(labels, preds)),
        macro_f1=float(f1_score(labels, preds, average="macro", labels=list(range(len(classes))), zero_division=0)),
        per_class=table,
        per_class_text=text,
        labels=labels,
        preds=preds,
        classes=list(classes),
    )


def eval_split(data: Dataset) -> tuple[str, Split]:
    """The test split, or val (labelled as such) when the spec keeps no test images."""
    return ("test", data.test) if data.test is not None and len(data.test) else ("val", data.val)


# --------------------------------------------------------------------------- the exported folder


def write_bundle(
    out: Path,
    *,
    model: nn.Module,
    config: TrialConfig,
    data: Dataset,
    pre: Preprocessing,
    spec: Spec,
    trial_number: int,
) -> None:
    """Weights, labels, preprocessing and how to rebuild the model: all `autocnn predict` reads."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        out / WEIGHTS_FILE,
    )
    (out / LABELS_FILE).write_text(json.dumps(list(data.classes), indent=2))
    (out / PREPROCESS_FILE).write_text(json.dumps(pre.as_dict(), indent=2))
    rebuild = {
        "model": config.model,
        "model_params": config.model_params,
        "num_classes": data.num_classes,
        "image_size": pre.image_size,
        "study": spec.name,
        "trial": trial_number,
        "train": config.train,
    }
    (out / MODEL_FILE).write_text(json.dumps(rebuild, indent=2, default=str))


def write_metrics(out: Path, about: dict[str, Any], scores: Scores, facts: dict[str, float]) -> None:
    """metrics.json: the one evaluation, float and int8 side by side, for machines and audits."""
    summary = {
        **about,
        "split": scores.split,
        "n_images": scores.n_images,
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        **facts,
        "classes": scores.classes,
        "per_class": scores.per_class,
        "confusion_matrix": scores.confusion(),
    }
    (out / METRICS_FILE).write_text(json.dumps(summary, indent=2))


# --------------------------------------------------------------------------- MLflow


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
) -> tuple[str, str]:
    """A `final` run nested under the study's run; the model registered under the study's name."""
    from autocnn.figures import confusion_matrix_figure
    from autocnn.tracking import ROLE_TAG, STUDY_TAG

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
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.info.run_id
    run_id = tracker.client.create_run(tracker.experiment_id, run_name="final", tags=tags).info.run_id
    try:
        for key, value in config.flat().items():
            tracker.client.log_param(run_id, key, str(value))
        split = scores.split
        metrics = {f"{split}_accuracy": scores.accuracy, f"{split}_macro_f1": scores.macro_f1}
        metrics.update({k.replace("accuracy", f"{split}_accuracy"): v for k, v in facts.items()})
        tracker.log_facts(run_id, metrics)
        figure = confusion_matrix_figure(scores.labels, scores.preds, scores.classes)
        tracker.log_figure(run_id, figure, "confusion_matrix.png")
        tracker.log_dict(run_id, scores.per_class, "per_class_metrics.json")
        tracker.log_text(run_id, scores.per_class_text, "per_class_metrics.txt")
        tracker.client.log_artifacts(run_id, str(out), "export")
        uri = tracker.log_model(run_id, model)
        version = tracker.register_model(
            uri,
            spec.name,
            tags={"trial": str(trial.number), f"{split}_accuracy": f"{scores.accuracy:.4f}"},
        )
    except BaseException:
        tracker.client.set_terminated(run_id, status="FAILED")
        raise
    tracker.client.set_terminated(run_id, status="FINISHED")
    return run_id, version


# --------------------------------------------------------------------------- the whole finalize


def obtain_model(
    spec: Spec,
    trial: optuna.trial.FrozenTrial,
    config: TrialConfig,
    data: Dataset,
    pre: Preprocessing,
    tracker: Tracker,
    options: FinalizeOptions,
    say: Say,
) -> tuple[nn.Module, str]:
    """The trial's saved best-epoch weights, or its config trained again; and which it was."""
    from autocnn.models import build_model

    if options.retrain or options.refit:
        how = "refit on train+val" if options.refit else "retrained on train"
        say(f"trial {trial.number} ({config.model}): training its config again ({how})")
        return retrain(spec, trial, config, data, pre, refit=options.refit), how
    model = build_model(  # no pretrained weights: the trial's own replace them at once
        config.model,
        config.model_params,
        num_classes=data.num_classes,
        image_size=pre.image_size,
        load_weights=False,
    )
    load_trial_weights(tracker, trial, model)
    return model, "trial weights"


def finalize(spec: Spec, options: FinalizeOptions | None = None, say: Say | None = None) -> FinalizeResult:
    """Best trial -> weights -> one evaluation -> ONNX + int8 -> `final` MLflow run + registry."""
    from autocnn.onnx_export import export_and_check
    from autocnn.space import config_from_params
    from autocnn.study import load_study, storage_url
    from autocnn.tracking import Tracker, default_tracking_uri

    options = options or FinalizeOptions()
    say = say or (lambda _text: None)
    study = load_study(spec, storage_url(spec, options.storage), create=False)
    trial = pick_trial(study, options.trial)
    config = config_from_params(spec, trial.params)
    pre = model_preprocessing(spec, config)
    data = DataCache(spec).get(pre.image_size)
    tracker = Tracker(
        options.tracking_uri or spec.mlflow.tracking_uri or default_tracking_uri(),
        spec.experiment_name,
    )
    model, how = obtain_model(spec, trial, config, data, pre, tracker, options, say)

    split, evaluated = eval_split(data)
    warnings = _split_warnings(split, options)
    say(f"evaluating trial {trial.number} once on the {split} split ({len(evaluated)} images)")
    reference = torch_logits(model, evaluated.images, pre)
    scores = score(split, evaluated.labels, reference, data.classes)

    out = options.out_dir or Path.cwd() / "models" / spec.name
    write_bundle(out, model=model, config=config, data=data, pre=pre, spec=spec, trial_number=trial.number)
    say(f"exporting ONNX (float, then int8) to {out}")
    facts = export_and_check(out, model, evaluated, reference, data, pre, spec.seed, warnings)
    about = {"study": spec.name, "trial": trial.number, "model": config.model, "weights_from": how}
    write_metrics(out, about, scores, facts)
    if tracker.find_study_run(spec.name) is None:
        warnings.append(f"no MLflow run for study '{spec.name}': the final run stands on its own")
    say("logging the final run to MLflow and registering the model")
    run_id, version = log_final_run(tracker, spec, trial, config, model, scores, facts, out, how)
    return FinalizeResult(
        study=spec.name,
        trial=trial.number,
        model=config.model,
        weights_from=how,
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
    )


def _split_warnings(split: str, options: FinalizeOptions) -> list[str]:
    if split == "test":
        return []
    out = ["no test split (split.test is 0 and no test/ folder): evaluated on val, labelled as such"]
    if options.refit:
        out.append("--refit trained on val too: these val numbers are optimistic")
    return out
