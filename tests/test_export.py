"""`autocnn finalize` and `autocnn predict` on a short digits study.

One study and one finalize (the default: a refit on train + val) are shared by the module: the
exported folder is then checked file by file, against PyTorch, against MLflow, and by predicting
on digits images written as PNG files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.data.arrays import Dataset
from autocnn.data.cache import DataCache
from autocnn.errors import ExportError, StudyError
from autocnn.models.folder import Preprocessing
from autocnn.outputs.bundle import eval_split, torch_logits
from autocnn.outputs.finalize import (
    REFIT,
    RETRAINED,
    TRIAL_WEIGHTS,
    Candidate,
    FinalizeOptions,
    FinalizeResult,
    Retrained,
    _split_warnings,
    check_options,
    finalize,
    load_trial_weights,
    model_preprocessing,
    pick_by_mean,
    retrain,
    why_picked,
)
from autocnn.outputs.predict import Predictor, predict_files
from autocnn.search.results import pick_trial, top_trials
from autocnn.search.space import config_from_params, study_settings
from autocnn.search.storage import open_study, storage_url
from autocnn.spec.objectives import Objective
from autocnn.tracking.tracker import Tracker
from autocnn.training.assembly import Seeds, trial_seeds
from tests.finished_study import FinishedStudy, finish_study

ACCURACY = Objective("val_accuracy", "maximize")
LOSS = Objective("val_loss", "minimize")

pytestmark = pytest.mark.slow
BUNDLE = {
    "weights.pt",
    "model.onnx",
    "model.int8.onnx",
    "labels.json",
    "preprocess.json",
    "model.json",
    "metrics.json",
}


@dataclass(frozen=True)
class Finalized:
    study: FinishedStudy
    result: FinalizeResult
    data: Dataset
    said: list[str]

    @property
    def out(self) -> Path:
        return self.result.out_dir


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finalized]:
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        study = finish_study(root)
        said: list[str] = []
        result = finalize(study.spec, FinalizeOptions(tracking_uri=study.tracking_uri), say=said.append)
        yield Finalized(study, result, DataCache(study.spec.data, seed=study.spec.seed).get(16), said)


def reference_model(folder: Path):  # type: ignore[no-untyped-def]
    """The exported weights in a freshly built model: what ONNX must agree with."""
    import torch

    from autocnn.models.build import build_model

    info = json.loads((folder / "model.json").read_text())
    model = build_model(
        info["model"],
        info["model_params"],
        num_classes=info["num_classes"],
        image_size=info["image_size"],
    )
    model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    return model.eval()


def exported_state(folder: Path) -> dict[str, Any]:
    import torch

    return torch.load(folder / "weights.pt", weights_only=True)


def trial_state(done: Finalized, number: int) -> dict[str, Any]:
    """The weights the study saved for trial `number` in its MLflow run."""
    spec = done.study.spec
    trial = open_study(spec, storage_url(spec)).trials[number]
    return Tracker(done.study.tracking_uri, spec.name).load_state_dict(trial.user_attrs["mlflow_run_id"])


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def exported_pre(folder: Path) -> Preprocessing:
    pre = json.loads((folder / "preprocess.json").read_text())
    return Preprocessing(pre["image_size"], tuple(pre["mean"]), tuple(pre["std"]))


def test_finalize_writes_the_bundle_into_models_study(done: Finalized) -> None:
    assert done.out == done.study.root / "models" / "digits-test"  # default: ./models/<study>
    names = {p.name for p in done.out.iterdir()}
    assert names == BUNDLE  # one-file ONNX: no model.onnx.data beside it
    assert json.loads((done.out / "labels.json").read_text()) == [str(d) for d in range(10)]
    pre = json.loads((done.out / "preprocess.json").read_text())
    assert (pre["image_size"], pre["mean"], pre["std"]) == (16, [0.5] * 3, [0.5] * 3)
    assert done.result.trial == done.study.result.best_number
    assert done.result.top_k is None  # K=1, S=1: no comparison, no re-training for it


def test_finalize_refits_on_train_and_val_by_default(done: Finalized) -> None:
    assert done.result.weights_from == REFIT
    n_images = len(done.data.train) + len(done.data.val)
    assert any(f"refitting on train+val ({n_images} images)" in line for line in done.said), done.said
    assert not same_weights(exported_state(done.out), trial_state(done, done.result.trial))
    metrics = json.loads((done.out / "metrics.json").read_text())
    assert metrics["weights_from"] == REFIT and "top_k" not in metrics


def test_evaluation_is_on_the_test_split_and_matches_the_weights(done: Finalized) -> None:
    from sklearn.metrics import f1_score

    scores = done.result.scores
    assert scores.split == "test" and scores.n_images == len(done.data.test) == 360
    logits = torch_logits(reference_model(done.out), done.data.test.images, exported_pre(done.out))
    preds = logits.argmax(1)
    assert scores.accuracy == pytest.approx(float((preds == done.data.test.labels).mean()))
    assert scores.macro_f1 == pytest.approx(f1_score(done.data.test.labels, preds, average="macro"))
    assert scores.accuracy > 0.5  # 2 epochs on 16 px digits: well above chance (0.1)
    assert set(scores.per_class) >= {str(d) for d in range(10)} and len(scores.confusion()) == 10


def test_onnx_agrees_with_pytorch_for_any_batch_size(done: Finalized) -> None:
    import onnxruntime as ort
    import torch

    from autocnn.models.folder import normalize

    assert done.result.onnx_max_abs_diff <= 1e-4
    model = reference_model(done.out)
    session = ort.InferenceSession(str(done.out / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 7, 300):
        x = normalize(done.data.test.images[:n], [0.5] * 3, [0.5] * 3)
        onnx_out = session.run(None, {"images": x})[0]
        with torch.no_grad():
            torch_out = model(torch.from_numpy(x)).numpy()
        assert onnx_out.shape == (n, 10)
        assert np.abs(onnx_out - torch_out).max() <= 1e-4


def test_int8_model_is_reported_beside_the_float_one(done: Finalized) -> None:
    import onnx
    from rich.console import Console

    from autocnn.cli.console import finalize_tables

    metrics = json.loads((done.out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "macro_f1",
        "onnx_accuracy",
        "onnx_size_mb",
        "int8_accuracy",
        "int8_size_mb",
    ):
        assert isinstance(metrics[key], float), key
    assert metrics["onnx_accuracy"] == pytest.approx(metrics["accuracy"], abs=1 / 360)
    assert metrics["int8_accuracy"] >= metrics["accuracy"] - 0.1
    assert metrics["int8_size_mb"] < 0.6 * metrics["onnx_size_mb"]
    ops = {node.op_type for node in onnx.load(done.out / "model.int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ, not a float copy
    console = Console(record=True, width=160)
    for table in finalize_tables(done.result):
        console.print(table)
    text = console.export_text()
    float_row = next(line for line in text.splitlines() if "model.onnx" in line)
    int8_row = next(line for line in text.splitlines() if "model.int8.onnx" in line)
    assert f"{done.result.onnx_accuracy:.4f}" in float_row and f"{done.result.onnx_size_mb:.3f}" in float_row
    assert f"{done.result.int8_accuracy:.4f}" in int8_row and f"{done.result.int8_size_mb:.3f}" in int8_row


def test_final_run_is_nested_under_the_study_and_the_model_registered(done: Finalized) -> None:
    tracker = Tracker(done.study.tracking_uri, "digits-test")
    run = MlflowClient(tracker.tracking_uri).get_run(done.result.run_id)
    parent = tracker.find_study_run("digits-test")
    assert run.info.run_name == "final" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["autocnn.eval_split"] == "test"
    assert run.data.metrics["test_accuracy"] == pytest.approx(done.result.scores.accuracy)
    assert run.data.metrics["int8_test_accuracy"] == pytest.approx(done.result.int8_accuracy)
    artifacts = {a.path for a in MlflowClient(tracker.tracking_uri).list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "per_class_metrics.json", "export"} <= artifacts
    versions = MlflowClient(tracker.tracking_uri).search_model_versions("name = 'digits-test'")
    mine = [v for v in versions if v.run_id == run.info.run_id]
    assert len(mine) == 1 and done.result.registered == f"digits-test version {mine[0].version}"


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def images(done: Finalized) -> tuple[Path, list[int]]:
    """20 test-split digits as PNG files (10 at the model's size, 10 upscaled), 1 broken file."""
    from PIL import Image

    folder = done.study.root / "to_predict"
    (folder / "big").mkdir(parents=True)
    labels = []
    for i in range(20):
        img = Image.fromarray(done.data.test.images[i])
        if i >= 10:
            img.resize((64, 64), Image.Resampling.NEAREST).save(folder / "big" / f"digit_{i:02d}.png")
        else:
            img.save(folder / f"digit_{i:02d}.png")
        labels.append(int(done.data.test.labels[i]))
    (folder / "broken.png").write_bytes(b"not a png")
    return folder, labels


def ordered(result) -> list[str]:  # type: ignore[no-untyped-def]
    """Top-1 labels by file name (digit_00 ... digit_19)."""
    by_name = {Path(p.path).name: p.top[0][0] for p in result.predictions}
    return [by_name[f"digit_{i:02d}.png"] for i in range(20)]


def test_predict_returns_the_true_label_for_most_images(done: Finalized, images: tuple[Path, list[int]]) -> None:
    folder, labels = images
    result = predict_files(Predictor(done.out), [folder], top=3)
    assert [Path(p).name for p, _ in result.skipped] == ["broken.png"]
    assert "unreadable image" in result.skipped[0][1]
    top1 = ordered(result)
    correct = sum(int(label) == true for label, true in zip(top1, labels, strict=True))
    assert correct >= 14, (top1, labels)  # "most": the model scores ~0.85-0.9 on test
    for p in result.predictions:
        probs = [prob for _, prob in p.top]
        assert len(p.top) == 3 and probs == sorted(probs, reverse=True) and 0.0 < sum(probs) <= 1.0 + 1e-9
    # Files at the model's own size decode to the very pixels the test split holds: same answers.
    logits = torch_logits(reference_model(done.out), done.data.test.images[:10], exported_pre(done.out))
    assert top1[:10] == [str(i) for i in logits.argmax(1)]


def test_predict_with_torch_agrees_with_onnx(done: Finalized, images: tuple[Path, list[int]]) -> None:
    folder, _ = images
    onnx_result = predict_files(Predictor(done.out), [folder])
    torch_result = predict_files(Predictor(done.out, backend="torch"), [folder])
    assert ordered(torch_result) == ordered(onnx_result)
    for a, b in zip(onnx_result.predictions, torch_result.predictions, strict=True):
        assert a.top[0][1] == pytest.approx(b.top[0][1], abs=1e-4)


def test_predict_command_json_and_skipped_files(done: Finalized, images: tuple[Path, list[int]]) -> None:
    folder, _ = images
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "predict",
            str(done.out),
            str(folder / "digit_00.png"),
            str(folder / "nope.png"),
            "--json",
            "--top",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [p["file"] for p in payload["predictions"]] == [str(folder / "digit_00.png")]
    assert len(payload["predictions"][0]["top"]) == 2
    assert payload["skipped"] == [{"file": str(folder / "nope.png"), "reason": "no such file or folder"}]
    only_bad = runner.invoke(app, ["predict", str(done.out), str(folder / "broken.png")])
    assert only_bad.exit_code == 1 and "broken.png" in only_bad.output
    missing = runner.invoke(app, ["predict", str(done.study.root / "no-model"), str(folder)])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")


# ------------------------------------------------------------------- choosing and retraining


def test_pick_trial_and_missing_weights_are_user_errors(done: Finalized) -> None:
    spec = done.study.spec
    study = open_study(spec, storage_url(spec))
    with pytest.raises(StudyError, match=r"--trial 99: no such trial"):
        pick_trial(study, ACCURACY, 99)
    assert pick_trial(study, ACCURACY, 1).number == 1

    class NoWeights:
        def load_state_dict(self, run_id: str) -> dict:
            raise OSError("artifact not found")

    with pytest.raises(ExportError, match=r"trial 1 has no saved weights.*--no-refit.*--retrain"):
        load_trial_weights(NoWeights(), pick_trial(study, ACCURACY, 1), None)  # type: ignore[arg-type]


def test_no_test_split_evaluates_on_val_and_says_so(done: Finalized) -> None:
    data = done.data
    no_test = Dataset(data.classes, data.train, data.val, None)
    split, images = eval_split(no_test)
    assert split == "val" and images is data.val
    assert "evaluated on val" in _split_warnings("val", TRIAL_WEIGHTS)[0]
    assert "refit trained on val too" in _split_warnings("val", REFIT)[1]
    assert len(_split_warnings("val", RETRAINED)) == 1
    assert eval_split(data)[0] == "test" and _split_warnings("test", REFIT) == []


@pytest.fixture(scope="module")
def best_retrained(done: Finalized) -> Retrained:
    """`--retrain` of the best trial (seed 0): shared, as training is what makes these tests slow."""
    spec = done.study.spec
    trial = open_study(spec, storage_url(spec)).best_trial
    config = config_from_params(spec, trial.params)
    return retrain(spec, trial, config, done.data, refit=False)


def test_retrain_reproduces_the_trial(done: Finalized, best_retrained: Retrained) -> None:
    from sklearn.metrics import accuracy_score

    spec = done.study.spec
    trial = open_study(spec, storage_url(spec)).best_trial
    pre = model_preprocessing(spec, config_from_params(spec, trial.params))
    val = torch_logits(best_retrained.model, done.data.val.images, pre).argmax(1)
    val_accuracy = accuracy_score(done.data.val.labels, val)
    assert val_accuracy == pytest.approx(trial.value, abs=0.03)
    # The value top-k ranks by is the Trainer's val score of the weights it returns (one image of slack
    # for a CPU where autocast runs in bf16).
    assert best_retrained.value == pytest.approx(val_accuracy, abs=1 / len(done.data.val))
    assert 1 <= best_retrained.best_epoch <= 2
    assert not same_weights(best_retrained.model.state_dict(), exported_state(done.out))  # the refit learnt val too


def test_finalize_command_no_refit_exports_the_trials_own_weights(done: Finalized) -> None:
    out = done.study.root / "no-refit"
    best = done.study.result.best_number  # a best-so-far trial: its weights were saved
    result = CliRunner().invoke(
        app,
        [
            "finalize",
            str(done.study.spec_path),
            "--no-refit",
            "--trial",
            str(best),
            "--out",
            str(out),
            "--tracking-uri",
            done.study.tracking_uri,
        ],
        env={"COLUMNS": "200"},  # rich wraps table cells to the terminal width
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == BUNDLE
    assert same_weights(exported_state(out), trial_state(done, best))
    assert f"trial {best} (custom_cnn, trial weights) on test" in result.output
    assert "model.onnx (float32)" in result.output and "model.int8.onnx (int8 QDQ)" in result.output
    version = re.search(r"registered as digits-test version (\d+)", result.output)
    assert version, result.output
    tracker = Tracker(done.study.tracking_uri, "digits-test")
    registered = MlflowClient(tracker.tracking_uri).get_model_version("digits-test", version.group(1))
    assert (
        MlflowClient(tracker.tracking_uri).get_run(registered.run_id).data.tags["autocnn.weights_from"] == TRIAL_WEIGHTS
    )


# --------------------------------------------------------------------------- top-k by mean over seeds


def test_top_k_retrains_k_configs_with_s_seeds_and_picks_by_mean(
    done: Finalized, best_retrained: Retrained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import autocnn.outputs.finalize as export

    runs: list[tuple[int, int, bool, dict[str, Any]]] = []

    def counted(*args: Any, **kwargs: Any) -> Retrained:
        run = retrain(*args, **kwargs)
        state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        runs.append((args[1].number, kwargs.get("seed", 0), kwargs["refit"], state))
        return run

    monkeypatch.setattr(export, "retrain", counted)
    spec = done.study.spec
    options = FinalizeOptions(
        retrain=True, top_k=2, seeds=2, tracking_uri=done.study.tracking_uri, out_dir=done.study.root / "top-k"
    )
    result = finalize(spec, options)

    # 2 configs x 2 seeds on train, and no fifth run: --retrain's model is the pick's seed-0 run.
    top_k = result.top_k
    assert top_k is not None
    ranked = sorted(open_study(spec, storage_url(spec)).trials, key=lambda t: (-t.value, t.number))
    assert [c.trial for c in top_k.candidates] == [t.number for t in ranked]
    assert sorted((n, seed, refit) for n, seed, refit, _ in runs) == [(n, s, False) for n in (0, 1) for s in (0, 1)]
    for n in (0, 1):  # distinct seeds train distinct models
        seed0, seed1 = (state for m, _, _, state in sorted(runs, key=lambda r: r[1]) if m == n)
        assert not same_weights(seed0, seed1)
    for c in top_k.candidates:
        assert len(c.values) == 2
        assert c.mean == pytest.approx(np.mean(c.values)) and c.std == pytest.approx(np.std(c.values, ddof=1))
    best_mean = max(top_k.candidates, key=lambda c: c.mean)
    assert top_k.picked == best_mean and result.trial == best_mean.trial
    assert result.weights_from == RETRAINED

    # Seed 0 of the comparison is --retrain's model bit for bit, and --retrain exports the pick's seed-0 run.
    seed0 = {n: state for n, seed, _, state in runs if seed == 0}
    assert same_weights(seed0[done.study.result.best_number], best_retrained.model.state_dict())
    assert same_weights(exported_state(result.out_dir), seed0[result.trial])

    # The table reaches metrics.json, the final run and the terminal.
    assert json.loads((result.out_dir / "metrics.json").read_text())["top_k"] == top_k.as_dict()
    tracker = Tracker(done.study.tracking_uri, spec.name)
    run = MlflowClient(tracker.tracking_uri).get_run(result.run_id)
    assert run.data.metrics["topk_mean"] == pytest.approx(best_mean.mean)
    assert run.data.metrics["topk_std"] == pytest.approx(best_mean.std)
    logged = MlflowClient(tracker.tracking_uri).download_artifacts(result.run_id, "top_k.json", str(tmp_path))
    assert json.loads(Path(logged).read_text()) == top_k.as_dict()
    text = rendered(result)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines()]
    for c in top_k.candidates:
        row = next(row for row in rows if row[:2] == [str(c.trial), c.model])
        assert row[2:] == [
            f"{c.study_value:.4f}",
            f"{c.mean:.4f}",
            f"{c.std:.4f}",
            ", ".join(f"{v:.4f}" for v in c.values),
            "✓" if c is top_k.picked else "",
        ]
    assert "the maximum of 2 noisy validation scores flatters its winner" in " ".join(text.split())


def rendered(result: FinalizeResult) -> str:
    from rich.console import Console

    from autocnn.cli.console import finalize_tables

    console = Console(record=True, width=200)
    for table in finalize_tables(result):
        console.print(table)
    return console.export_text()


def test_top_k_picks_the_best_mean_not_the_best_single_value() -> None:
    lucky = Candidate(4, "custom_cnn", study_value=0.95, values=(0.90, 0.88))
    steady = Candidate(7, "resnet18", study_value=0.93, values=(0.92, 0.93))
    assert pick_by_mean([lucky, steady], ACCURACY) is steady
    assert pick_by_mean([lucky, steady], LOSS) is lucky  # val_loss: lower is better
    tied = Candidate(9, "custom_cnn", study_value=0.90, values=(0.925, 0.925))
    assert pick_by_mean([steady, tied], ACCURACY) is steady  # a tie keeps the study's order
    reason = why_picked(steady, [lucky, steady], "val_accuracy", 2)
    assert reason.startswith("trial 7 (resnet18): best mean val_accuracy over 2 seeds, 0.9250 ± 0.0071")
    assert "not the study's best single value (trial 4, 0.9500, mean 0.8900)" in reason
    assert "the maximum of 2 noisy validation scores flatters its winner" in reason
    assert "also the study's best single value, which held up" in why_picked(lucky, [lucky, steady], "val_accuracy", 2)
    assert "the only configuration compared" in why_picked(steady, [steady], "val_accuracy", 2)
    assert Candidate(1, "m", 0.5, (0.5,)).std == 0.0


def test_seeds_are_distinct_and_seed_zero_is_the_trials_own(done: Finalized) -> None:
    spec = done.study.spec
    seeds = {(n, s): trial_seeds(study_settings(spec), n, s) for n in range(200) for s in range(5)}
    assert len({pair.torch for pair in seeds.values()}) == len(seeds)
    assert len({pair.batches for pair in seeds.values()}) == len(seeds)
    assert trial_seeds(study_settings(spec), 7) == Seeds(spec.seed * 100_003 + 7, spec.seed + 7)


def test_top_k_options_and_too_few_trials(done: Finalized) -> None:
    spec = done.study.spec
    study = open_study(spec, storage_url(spec))
    trials, warnings = top_trials(study, 5, ACCURACY)
    assert [t.number for t in trials] == sorted((0, 1), key=lambda n: -study.trials[n].value)
    assert warnings == ["--top-k 5: the study has 2 complete trials; compared those"]
    assert top_trials(study, 1, LOSS)[0][0].number == min((0, 1), key=lambda n: study.trials[n].value)
    with pytest.raises(ExportError, match=r"^--seeds 0: must be at least 1$"):
        check_options(FinalizeOptions(seeds=0))
    with pytest.raises(ExportError, match=r"^--trial 1 with --top-k 2"):
        check_options(FinalizeOptions(trial=1, top_k=2))
    assert FinalizeOptions(retrain=True).weights_from == RETRAINED  # --retrain wins over the refit default
    assert FinalizeOptions(refit=False).weights_from == TRIAL_WEIGHTS
    assert not FinalizeOptions().compares and FinalizeOptions(seeds=3).compares
    for option in ("--top-k", "--seeds"):
        refused = CliRunner().invoke(app, ["finalize", str(done.study.spec_path), option, "0"])
        assert refused.exit_code == 2 and f"Invalid value for '{option}'" in refused.output, refused.output


def test_a_timm_backbone_exports_to_onnx_and_int8(tmp_path: Path) -> None:
    """Not only the custom CNN: a timm model takes the same export, check and quantization."""
    import torch

    from autocnn.models.build import build_model
    from autocnn.models.folder import normalize
    from autocnn.models.onnx import export_onnx, onnx_logits, quantize_int8

    torch.manual_seed(0)
    model = build_model("resnet10t", {"pretrained": False}, num_classes=3, image_size=32).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    x = normalize(images, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    export_onnx(model, tmp_path / "model.onnx", x[:2])
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_logits(tmp_path / "model.onnx", x) - expected).max() <= 1e-4
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", x)
    assert onnx_logits(tmp_path / "model.int8.onnx", x).shape == (12, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]
