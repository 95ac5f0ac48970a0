"""`autocnn finalize` and `autocnn predict` on a short digits study.

One study and one finalize are shared by the module: the exported folder is then checked file by
file, against PyTorch, against MLflow, and by predicting on digits images written as PNG files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autocnn.cli import app
from autocnn.data import DataCache, Dataset
from autocnn.errors import ExportError, StudyError
from autocnn.export import (
    FinalizeOptions,
    FinalizeResult,
    _split_warnings,
    eval_split,
    finalize,
    load_trial_weights,
    model_preprocessing,
    pick_trial,
    retrain,
    torch_logits,
)
from autocnn.predict import Predictor, Preprocessing, predict_files
from autocnn.space import config_from_params
from autocnn.study import load_study, storage_url
from autocnn.tracking import Tracker
from tests.finished_study import FinishedStudy, finish_study

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

    @property
    def out(self) -> Path:
        return self.result.out_dir


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finalized]:
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        study = finish_study(root)
        result = finalize(study.spec, FinalizeOptions(tracking_uri=study.tracking_uri))
        yield Finalized(study, result, DataCache(study.spec).get(16))


def reference_model(folder: Path):  # type: ignore[no-untyped-def]
    """The exported weights in a freshly built model: what ONNX must agree with."""
    import torch

    from autocnn.models import build_model

    info = json.loads((folder / "model.json").read_text())
    model = build_model(
        info["model"],
        info["model_params"],
        num_classes=info["num_classes"],
        image_size=info["image_size"],
    )
    model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    return model.eval()


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
    assert done.result.weights_from == "trial weights"


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

    from autocnn.predict import normalize

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

    from autocnn.console import finalize_tables

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
    run = tracker.client.get_run(done.result.run_id)
    parent = tracker.find_study_run("digits-test")
    assert run.info.run_name == "final" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["autocnn.eval_split"] == "test"
    assert run.data.metrics["test_accuracy"] == pytest.approx(done.result.scores.accuracy)
    assert run.data.metrics["int8_test_accuracy"] == pytest.approx(done.result.int8_accuracy)
    artifacts = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "per_class_metrics.json", "export"} <= artifacts
    versions = tracker.client.search_model_versions("name = 'digits-test'")
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
    study = load_study(spec, storage_url(spec), create=False)
    with pytest.raises(StudyError, match=r"--trial 99: no such trial"):
        pick_trial(study, 99)
    assert pick_trial(study, 1).number == 1

    class NoWeights:
        def load_state_dict(self, run_id: str) -> dict:
            raise OSError("artifact not found")

    with pytest.raises(ExportError, match=r"trial 1 has no saved weights.*--retrain"):
        load_trial_weights(NoWeights(), pick_trial(study, 1), None)  # type: ignore[arg-type]


def test_no_test_split_evaluates_on_val_and_says_so(done: Finalized) -> None:
    data = done.data
    no_test = Dataset(data.classes, data.train, data.val, None)
    split, images = eval_split(no_test)
    assert split == "val" and images is data.val
    assert "evaluated on val" in _split_warnings("val", FinalizeOptions())[0]
    assert len(_split_warnings("val", FinalizeOptions(refit=True))) == 2
    assert eval_split(data)[0] == "test" and _split_warnings("test", FinalizeOptions()) == []


def test_retrain_reproduces_the_trial(done: Finalized) -> None:
    from sklearn.metrics import accuracy_score

    spec = done.study.spec
    study = load_study(spec, storage_url(spec), create=False)
    trial = study.best_trial
    cfg = config_from_params(spec, trial.params)
    pre = model_preprocessing(spec, cfg)
    model = retrain(spec, trial, cfg, done.data, pre, refit=False)
    val = torch_logits(model, done.data.val.images, pre).argmax(1)
    assert accuracy_score(done.data.val.labels, val) == pytest.approx(trial.value, abs=0.03)


def test_finalize_command_refit_exports_and_reports_both_models(done: Finalized) -> None:
    out = done.study.root / "refit"
    result = CliRunner().invoke(
        app,
        [
            "finalize",
            str(done.study.spec_path),
            "--refit",
            "--trial",
            "1",
            "--out",
            str(out),
            "--tracking-uri",
            done.study.tracking_uri,
        ],
        env={"COLUMNS": "200"},  # rich wraps table cells to the terminal width
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == BUNDLE
    assert "trial 1 (custom_cnn, refit on train+val) on test" in result.output
    assert "model.onnx (float32)" in result.output and "model.int8.onnx (int8 QDQ)" in result.output
    assert "registered as digits-test version 2" in result.output


def test_a_timm_backbone_exports_to_onnx_and_int8(tmp_path: Path) -> None:
    """Not only the custom CNN: a timm model takes the same export, check and quantization."""
    import torch

    from autocnn.models import build_model
    from autocnn.onnx_export import export_onnx, onnx_logits, quantize_int8
    from autocnn.predict import normalize

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
