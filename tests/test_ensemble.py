"""`autocnn finalize --ensemble K`: selection on saved val predictions, one module, one ONNX graph."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.data.cache import DataCache
from autocnn.errors import ExportError
from autocnn.models.ensemble import Ensemble, ensemble_preprocessing
from autocnn.models.folder import Preprocessing, normalize
from autocnn.outputs.bundle import eval_split
from autocnn.outputs.ensemble import Selection, accuracy, negative_log_loss, select_ensemble
from autocnn.outputs.finalize import (
    FinalizeOptions,
    FinalizeResult,
    check_options,
    finalize_ensemble,
    saved_val_probs,
    select_members,
)
from autocnn.outputs.predict import Predictor, softmax
from autocnn.search.storage import open_study, storage_url
from autocnn.tracking.tracker import Tracker
from tests.finished_study import FinishedStudy, finish_study

# --------------------------------------------------------------------------- selection


def _one_hot(labels: np.ndarray, classes: int, confidence: float = 0.7) -> np.ndarray:
    out = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    out[np.arange(len(labels)), labels] = confidence
    return out


def _wrong_on(labels: np.ndarray, rows: slice, classes: int = 3) -> np.ndarray:
    """A model right everywhere but on `rows`, where it says the next class, confidently."""
    guessed = labels.copy()
    guessed[rows] = (labels[rows] + 1) % classes
    return _one_hot(guessed, classes)


def test_forward_selection_mixes_models_whose_mistakes_differ() -> None:
    labels = np.arange(30) % 3
    probs = {
        4: _wrong_on(labels, slice(0, 6)),  # 0.800, the best single model
        7: _wrong_on(labels, slice(10, 17)),  # 0.767
        9: _wrong_on(labels, slice(20, 27)),  # 0.767
        2: _wrong_on(labels, slice(0, 15)),  # 0.500: never helps
    }
    chosen = select_ensemble(probs, labels, accuracy, max_members=3)
    assert chosen.single_trial == 4 and chosen.single_val_score == pytest.approx(0.8)
    assert chosen.trials[0] == 4 and set(chosen.trials) == {4, 7, 9}
    assert chosen.val_score == 1.0  # each image is right in two of the three
    assert sum(chosen.weights) == pytest.approx(1.0) and chosen.rounds == 3
    mix = sum(w * probs[t] for t, w in zip(chosen.trials, chosen.weights, strict=True))
    assert accuracy(mix, labels) == chosen.val_score
    # at most max_members distinct trials: with two, the second is the one that helps most
    two = select_ensemble(probs, labels, accuracy, max_members=2)
    assert len(two.trials) == 2 and two.val_score > two.single_val_score


def test_selection_stops_when_no_addition_helps_and_scores_by_the_studys_metric() -> None:
    labels = np.arange(20) % 2
    same = _wrong_on(labels, slice(0, 4), classes=2)
    alone = select_ensemble({3: same, 5: same.copy()}, labels, accuracy, max_members=5)
    assert alone.trials == (3,) and alone.weights == (1.0,) and alone.rounds == 1
    # log loss: a confident model and a hedging one; the mix is better calibrated than either
    confident = np.where(np.arange(20)[:, None] < 4, [[0.99, 0.01]], [[0.01, 0.99]])
    hedging = np.full((20, 2), 0.5)
    labels = np.array([0] * 4 + [1] * 16)
    labels[:3] = 1  # three confident mistakes
    chosen = select_ensemble({1: confident, 2: hedging}, labels, negative_log_loss, max_members=2)
    assert chosen.trials[0] == 1 and 2 in chosen.trials
    assert chosen.val_score > negative_log_loss(confident, labels)


# --------------------------------------------------------------------------- the module


class Pixel(nn.Module):
    """A fixed 'model' whose logits are the mean of each channel: easy to compute by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 3.0


def test_the_ensemble_resizes_and_normalises_per_member_and_averages_probabilities(tmp_path: Path) -> None:
    from autocnn.models.onnx import export_onnx, onnx_logits

    small = Preprocessing(8, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    large = Preprocessing(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pre = ensemble_preprocessing([small, large])
    assert pre == Preprocessing(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    ensemble = Ensemble([Pixel(), Pixel()], [small, large], [3.0, 1.0]).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    x = torch.from_numpy(normalize(images, pre.mean, pre.std))
    with torch.no_grad():
        out = ensemble(x)
    # by hand: the small member sees the image resized to 8 px and its own normalisation
    resized = nn.functional.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    p_small = Pixel()((resized - torch.tensor(small.mean).view(1, 3, 1, 1)) / torch.tensor(small.std).view(1, 3, 1, 1))
    x_large = torch.from_numpy(normalize(images, large.mean, large.std))
    p_large = Pixel()(x_large)
    expected = 0.75 * p_small.softmax(1) + 0.25 * p_large.softmax(1)
    assert torch.allclose(out.softmax(1), expected, atol=1e-6)
    # one ONNX graph that ONNX Runtime runs to the same numbers, resizes included
    export_onnx(ensemble, tmp_path / "e.onnx", x.numpy())
    assert np.abs(onnx_logits(tmp_path / "e.onnx", x.numpy()) - out.numpy()).max() < 1e-5


# --------------------------------------------------------------------------- a study, finalized as an ensemble


@dataclass(frozen=True)
class Shipped:
    study: FinishedStudy
    result: FinalizeResult
    said: list[str]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipped]:
    """Three digits trials; trials 0 and 2 shipped together, each refit on train + val."""
    root = tmp_path_factory.mktemp("ensemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        study = finish_study(root, study={"trials": 3, "pruner": "none"})
        spec = study.spec
        tracker = Tracker(study.tracking_uri, spec.experiment_name)
        said: list[str] = []
        selection = Selection((2, 0), (0.6, 0.4), 0.99, 2, 0.98, 5)
        result = finalize_ensemble(
            spec,
            open_study(spec, storage_url(spec)),
            DataCache(spec.data, seed=spec.seed),
            tracker,
            selection,
            FinalizeOptions(tracking_uri=study.tracking_uri, ensemble=2),
            said.append,
            [],
        )
        yield Shipped(study, result, said)


@pytest.mark.slow
def test_every_complete_trial_saved_its_val_predictions(shipped: Shipped) -> None:
    spec = shipped.study.spec
    tracker = Tracker(shipped.study.tracking_uri, spec.experiment_name)
    val = DataCache(spec.data, seed=spec.seed).get(spec.data.image_size).val
    for trial in open_study(spec, storage_url(spec)).trials:
        probs = saved_val_probs(tracker, trial, len(val))
        assert probs is not None and probs.shape == (len(val), 10)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # softmax rows
        assert accuracy(probs, val.labels) == pytest.approx(trial.value)  # the epoch the trial reported
    assert saved_val_probs(tracker, trial, len(val) + 1) is None  # another val split: not usable


@pytest.mark.slow
def test_the_ensemble_ships_as_one_model_that_predict_runs(shipped: Shipped) -> None:
    out = shipped.result.out_dir
    info = json.loads((out / "model.json").read_text())
    assert info["model"] == "ensemble" and [m["trial"] for m in info["members"]] == [2, 0]
    assert info["weights"] == [0.6, 0.4]
    assert {"model.onnx", "model.int8.onnx", "weights.pt", "preprocess.json", "labels.json"} <= set(
        shipped.result.files
    )
    spec = shipped.study.spec
    data = DataCache(spec.data, seed=spec.seed).get(spec.data.image_size)
    _, test = eval_split(data)
    onnx = Predictor(out)
    ran_torch = Predictor(out, backend="torch")
    logits = onnx.logits(test.images)
    assert np.abs(logits - ran_torch.logits(test.images)).max() < 1e-4
    # the reported test accuracy is that of the shipped graph
    assert float((logits.argmax(1) == test.labels).mean()) == pytest.approx(shipped.result.scores.accuracy)
    assert np.allclose(softmax(logits).sum(axis=1), 1.0, atol=1e-5)
    outcome = shipped.result.ensemble
    assert outcome is not None and outcome.members == ((2, "custom_cnn", 0.6), (0, "custom_cnn", 0.4))
    assert outcome.ensemble.accuracy == shipped.result.scores.accuracy
    assert outcome.single.name == "trial 2 alone" and 0.5 < outcome.single.accuracy <= 1.0
    # two members weigh more than one of them
    assert outcome.ensemble.size_mb > outcome.single.size_mb
    assert outcome.ensemble.latency_ms > 0 and outcome.single.latency_ms > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "ensemble" and metrics["ensemble"]["members"][0]["trial"] == 2
    assert any("ensemble member 2 of 2: trial 0" in line for line in shipped.said)


@pytest.mark.slow
def test_the_final_run_records_the_ensemble(shipped: Shipped) -> None:
    client = MlflowClient(shipped.study.tracking_uri)
    run = client.get_run(shipped.result.run_id)
    assert run.data.tags["autocnn.ensemble"] == "2,0" and run.data.tags["autocnn.model"] == "ensemble"
    assert run.data.metrics["test_accuracy"] == pytest.approx(shipped.result.scores.accuracy)
    assert "single_test_accuracy" in run.data.metrics and "ensemble_latency_ms" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "ensemble.json" in names


@pytest.mark.slow
def test_select_members_reads_the_saved_predictions(shipped: Shipped) -> None:
    spec = shipped.study.spec
    said: list[str] = []
    warnings: list[str] = []
    selection = select_members(
        spec,
        open_study(spec, storage_url(spec)),
        DataCache(spec.data, seed=spec.seed),
        Tracker(shipped.study.tracking_uri, spec.experiment_name),
        3,
        said.append,
        warnings,
    )
    best = max(open_study(spec, storage_url(spec)).trials, key=lambda t: (t.value, -t.number))
    assert selection.single_trial == best.number and selection.single_val_score == pytest.approx(best.value)
    assert selection.val_score >= selection.single_val_score
    assert said and said[0].startswith("ensemble selection over 3 trials on val val_accuracy")
    assert (len(selection.trials) == 1) == bool(warnings)  # shipping alone is said


@pytest.mark.slow
def test_the_finalize_command_takes_ensemble_and_tta_and_refuses_ensemble_beside_a_trial(
    shipped: Shipped, monkeypatch: pytest.MonkeyPatch
) -> None:
    import autocnn

    spec_path = str(shipped.study.spec_path)
    uri = shipped.study.tracking_uri
    runner = CliRunner()
    refused = runner.invoke(app, ["finalize", spec_path, "--ensemble", "2", "--trial", "0", "--tracking-uri", uri])
    assert refused.exit_code == 2 and "--ensemble 2 with --trial" in refused.output
    with pytest.raises(ExportError, match="--ensemble 0"):
        check_options(FinalizeOptions(ensemble=0))
    asked: list[FinalizeOptions] = []

    def finalized(_spec: object, options: FinalizeOptions, say: object) -> FinalizeResult:
        asked.append(options)
        return shipped.result  # what the module's ensemble finalize returned, shown by the command

    monkeypatch.setattr(autocnn, "finalize", finalized, raising=False)
    ran = runner.invoke(
        app, ["finalize", spec_path, "--ensemble", "3", "--tta", "--tracking-uri", uri], env={"COLUMNS": "200"}
    )
    assert ran.exit_code == 0, ran.output
    assert asked[0].ensemble == 3 and asked[0].tta is True
    shown = " ".join(ran.output.split())  # a table's title wraps at the table's width
    assert "ensemble members (forward selection on val predictions)" in shown
    assert "ensemble against the best single trial" in shown and "trial 2 alone" in shown


@pytest.mark.slow
def test_finalize_tta_judges_on_the_trials_own_weights_and_ships_only_a_kept_policy(shipped: Shipped) -> None:
    from autocnn.outputs.finalize import finalize

    spec = shipped.study.spec
    out = shipped.study.root / "tta"
    said: list[str] = []
    result = finalize(
        spec, FinalizeOptions(tracking_uri=shipped.study.tracking_uri, tta=True, out_dir=out), said.append
    )
    tta = result.tta
    assert tta is not None and tta.judged_on.startswith("the trials' own saved weights")
    assert [s.name for s in tta.scores] == ["crops"]  # the digits spec allows no flips
    assert tta.n_val == len(DataCache(spec.data, seed=spec.seed).get(spec.data.image_size).val)
    assert "none" in tta.latency_ms
    info = json.loads((out / "model.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tta"]["policy"] == tta.policy
    if tta.policy == "none":
        assert "tta" not in info and "test_accuracy_without" not in metrics["tta"]
    else:
        assert info["tta"] == {"flip": False, "crops": True} and tta.policy in tta.latency_ms
        assert "test_accuracy_without" in metrics["tta"]
    # whatever was decided, both backends run the shipped graph the same way
    _, test = eval_split(DataCache(spec.data, seed=spec.seed).get(spec.data.image_size))
    logits = Predictor(out).logits(test.images)
    assert np.abs(logits - Predictor(out, backend="torch").logits(test.images)).max() < 1e-4
    assert float((logits.argmax(1) == test.labels).mean()) == pytest.approx(result.scores.accuracy)
    run = MlflowClient(shipped.study.tracking_uri).get_run(result.run_id)
    assert run.data.tags["autocnn.tta"] == tta.policy


@pytest.mark.slow
def test_the_report_shows_the_shipped_ensemble_beside_its_best_single_trial(shipped: Shipped) -> None:
    from autocnn.outputs.report import build_report

    spec = shipped.study.spec
    report = build_report(spec, tracking_uri=shipped.study.tracking_uri, out=shipped.study.root / "r.html")
    assert report.sections[-1] == "shipped"
    section = report.path.read_text(encoding="utf-8").split("id='shipped'")[1].split("</section>")[0]
    assert "ensemble of trials 2,0" in section and "its best single trial, alone (2)" in section
    outcome = shipped.result.ensemble
    assert outcome is not None
    assert f"{outcome.ensemble.accuracy:.4f}".rstrip("0").rstrip(".") in section
    assert f"{outcome.single.accuracy:.4f}".rstrip("0").rstrip(".") in section


# --------------------------------------------------------------------------- distillation


def test_soft_targets_mix_the_softened_teacher_with_the_label() -> None:
    from autocnn.outputs.distill import fastest, soft_targets, soften

    teacher = np.array([[0.8, 0.15, 0.05], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(soften(teacher, 1.0), teacher, rtol=1e-6)
    warm = soften(teacher, 2.0)
    assert warm[0, 0] < 0.8 and warm[0, 2] > 0.05  # a temperature above 1 spreads the mass
    targets = soft_targets(teacher, np.array([1, 2]), temperature=2.0, teacher_share=0.5)
    assert targets.dtype == np.float32 and np.allclose(targets.sum(axis=1), 1.0)
    np.testing.assert_allclose(targets[0], 0.5 * warm[0] + 0.5 * np.array([0, 1, 0]), rtol=1e-5)
    assert targets[0].argmax() == 1  # the label keeps its say where the teacher disagrees
    with pytest.raises(ValueError, match="for 2 images, labels for 3"):
        soft_targets(teacher, np.array([0, 1, 2]))
    assert fastest({5: 2.0, 3: 1.0, 8: 1.0}) == 3  # a tie goes to the earlier, better trial


def test_the_student_is_chosen_among_the_trials_near_the_best() -> None:
    from autocnn.outputs.distill import near_the_best

    accuracies = {4: 0.90, 7: 0.88, 2: 0.86, 9: 0.70}
    assert near_the_best(accuracies, maximize=True, within=0.021) == [4, 7]
    assert near_the_best(accuracies, maximize=True, within=0.0) == [4]
    assert near_the_best({1: 0.30, 2: 0.35, 3: 0.50}, maximize=False, within=0.05) == [1, 2]  # val_loss
    assert near_the_best({}, maximize=True, within=1.0) == []


@pytest.mark.slow
def test_a_refit_against_soft_targets_learns_them(shipped: Shipped) -> None:
    """A teacher that puts 40% of every image on the next class: the taught refit follows it, the
    refit on the labels alone does not."""
    from autocnn.outputs.distill import soft_targets
    from autocnn.outputs.finalize import model_preprocessing, retrain
    from autocnn.search.space import config_from_params

    spec = shipped.study.spec
    trial = open_study(spec, storage_url(spec)).trials[0]
    config = config_from_params(spec, trial.params)
    data = DataCache(spec.data, seed=spec.seed).get(spec.data.image_size)
    labels = np.concatenate([data.train.labels, data.val.labels])
    teacher = 0.6 * np.eye(10)[labels] + 0.4 * np.eye(10)[(labels + 1) % 10]
    targets = soft_targets(teacher, labels, temperature=1.0, teacher_share=1.0)
    pre = model_preprocessing(spec, config)
    images = torch.from_numpy(normalize(np.concatenate([data.train.images, data.val.images]), pre.mean, pre.std))

    def next_class_mass(model: nn.Module) -> float:
        with torch.no_grad():
            probs = model.eval()(images).softmax(dim=1).numpy()
        return float(probs[np.arange(len(labels)), (labels + 1) % 10].mean())

    taught = retrain(spec, trial, config, data, refit=True, targets=targets).model
    alone = retrain(spec, trial, config, data, refit=True).model
    assert next_class_mass(taught) > next_class_mass(alone) + 0.1


@pytest.mark.slow
def test_distill_ships_the_fastest_trial_taught_by_the_ensemble(shipped: Shipped) -> None:
    from autocnn.outputs.finalize import choose_student, finalize, held_out_val_probs, trial_latencies
    from autocnn.outputs.predict import Predictor
    from autocnn.training.budget import standard_error

    spec = shipped.study.spec
    uri = shipped.study.tracking_uri
    out = shipped.study.root / "student"
    said: list[str] = []
    result = finalize(spec, FinalizeOptions(tracking_uri=uri, distill=True, out_dir=out), said.append)
    outcome = result.distill
    assert outcome is not None and result.weights_from == "distilled on train+val"
    study = open_study(spec, storage_url(spec))
    cache = DataCache(spec.data, seed=spec.seed)
    # the student is the fastest, as predict would run them, of the trials within one standard
    # error of the best val accuracy
    val = cache.get(spec.data.image_size).val
    error = standard_error("val_accuracy", study.best_value, len(val))
    near = [t for t in study.trials if t.value >= study.best_value - error]
    latencies = trial_latencies(spec, near, 10)
    assert latencies[outcome.student_trial] == min(latencies.values())
    assert result.trial == outcome.student_trial
    assert outcome.student_reason.startswith(f"the fastest of the {len(near)} trials within one standard error")
    # the teacher's val probabilities are its members' search-time ones, mixed by their weights
    tracker = Tracker(uri, spec.experiment_name)
    selection = Selection(outcome.teacher_trials, outcome.teacher_weights, 0.0, 0, 0.0, 1)
    held_out = held_out_val_probs(study, tracker, selection, len(val))
    assert held_out is not None and np.allclose(held_out.sum(axis=1), 1.0, atol=1e-5)
    saved = [saved_val_probs(tracker, study.trials[n], len(val)) for n in outcome.teacher_trials]
    np.testing.assert_allclose(
        held_out, sum(w * p for w, p in zip(outcome.teacher_weights, saved, strict=True)), atol=1e-6
    )
    assert any("search-time predictions" in line for line in said)
    # what ships is the student: one custom CNN that predict runs, scored as reported
    info = json.loads((out / "model.json").read_text())
    assert info["model"] == "custom_cnn"
    _, test = eval_split(cache.get(spec.data.image_size))
    logits = Predictor(out).logits(test.images)
    assert float((logits.argmax(1) == test.labels).mean()) == pytest.approx(result.scores.accuracy)
    assert outcome.student.accuracy == result.scores.accuracy
    assert outcome.teacher.size_mb > outcome.student.size_mb and outcome.alone.size_mb == outcome.student.size_mb
    # recorded in MLflow and shown by the report
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.data.tags["autocnn.distilled_from"] == ",".join(map(str, outcome.teacher_trials))
    assert {"teacher_test_accuracy", "alone_test_accuracy", "student_latency_ms"} <= set(run.data.metrics)
    assert choose_student(spec, study, cache, 1, said.append)[0].number == 1
    refused = CliRunner().invoke(
        app, ["finalize", str(shipped.study.spec_path), "--student", "1", "--tracking-uri", uri]
    )
    assert refused.exit_code == 2 and "--student 1 without --distill" in refused.output
    from autocnn.outputs.report import build_report

    page = build_report(spec, tracking_uri=uri, out=shipped.study.root / "d.html").path.read_text()
    assert "taught by the ensemble of trials" in page and "the same trial, trained alone" in page


def test_distill_refuses_what_it_cannot_combine() -> None:
    with pytest.raises(ExportError, match="--student 2 without --distill"):
        check_options(FinalizeOptions(student=2))
    with pytest.raises(ExportError, match="--distill with --trial"):
        check_options(FinalizeOptions(distill=True, tta=True))
    with pytest.raises(ExportError, match="--distill with --no-refit"):
        check_options(FinalizeOptions(distill=True, refit=False))
