"""Where the model looks: Grad-CAM heat maps in the report and from `autocnn predict --explain`.

A small custom CNN trained for a few seconds on scikit-learn's digits (at 16 px, through the same
loader a study uses) is explained directly, through a model folder as `autocnn finalize` writes
it, and through a finished study's report; timm backbones are built with random weights.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.data.arrays import Dataset
from autocnn.data.cache import load_digits_dataset
from autocnn.errors import ExportError
from autocnn.models.build import build_model
from autocnn.models.custom_cnn import CustomCNN
from autocnn.models.ensemble import Ensemble
from autocnn.models.folder import Preprocessing, normalize
from autocnn.models.tta import TestTimeAugmented
from autocnn.outputs.explain import (
    MIN_SIDE,
    explain_examples,
    explained_module,
    heat_maps,
    pick_examples,
    png_bytes,
    side_by_side,
    target_layer,
)
from autocnn.outputs.predict import Predictor, predict_files
from tests.finished_study import FinishedStudy, finished_study_in

SIZE = 16
PRE = Preprocessing(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the custom CNN's [-1, 1] scaling


@dataclass(frozen=True)
class Trained:
    model: CustomCNN
    data: Dataset

    def inputs(self, n: int) -> np.ndarray:
        return normalize(self.data.test.images[:n], PRE.mean, PRE.std)

    def logits(self, n: int) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(self.inputs(n))).numpy()


@pytest.fixture(scope="module")
def trained() -> Trained:
    """Four epochs of Adam on the digits train split: a model that has learnt where digits are."""
    data = load_digits_dataset(SIZE, val=0.2, test=0.2, seed=0)
    torch.manual_seed(0)
    model = CustomCNN(num_classes=data.num_classes, image_size=SIZE, depth=2, width=8, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.from_numpy(normalize(data.train.images, PRE.mean, PRE.std))
    y = torch.from_numpy(data.train.labels.astype(np.int64))
    model.train()
    for _ in range(4):
        for i in range(0, len(x), 64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            optimizer.step()
    return Trained(model.eval(), data)


# ------------------------------------------------------------------- heat maps


def test_heat_maps_have_the_image_shape_values_in_0_1_and_show_a_place(trained: Trained) -> None:
    logits = trained.logits(12)
    assert (logits.argmax(1) == trained.data.test.labels[:12]).mean() >= 0.5  # it did learn
    maps = heat_maps(trained.model, trained.inputs(12), logits.argmax(1).tolist())
    assert maps.shape == (12, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for heat in maps:
        assert heat.max() == pytest.approx(1.0, abs=1e-3) and heat.std() > 0.05  # a place, not a flat map


def test_heat_map_depends_on_the_class_explained(trained: Trained) -> None:
    inputs = trained.inputs(4)
    first = heat_maps(trained.model, inputs, [0, 0, 0, 0])
    other = heat_maps(trained.model, inputs, [7, 7, 7, 7])
    assert not np.allclose(first, other, atol=1e-3)
    assert np.array_equal(first, heat_maps(trained.model, inputs, [0, 0, 0, 0]))  # deterministic


def test_heat_maps_leave_the_model_as_they_found_it(trained: Trained) -> None:
    before = trained.logits(8)
    heat_maps(trained.model, trained.inputs(8), [1] * 8)
    assert not trained.model.training
    assert not trained.model._forward_hooks and all(not m._forward_hooks for m in trained.model.modules())
    assert all(p.grad is None for p in trained.model.parameters())
    np.testing.assert_array_equal(before, trained.logits(8))


def test_custom_cnn_is_read_at_its_last_block_before_pooling(trained: Trained) -> None:
    layer = target_layer(trained.model, SIZE)
    assert layer is trained.model.features[-2]  # conv-BN-activation-pool: the activation


def test_timm_backbone_is_read_at_its_last_stage_wider_than_one_pixel() -> None:
    model = build_model("resnet18", {"pretrained": False}, num_classes=3, image_size=64)
    assert target_layer(model, 64) is model.body.layer4  # 2x2 at 64 px
    assert target_layer(model, 32) is model.body.layer3  # layer4 is 1x1 at 32 px: says nothing of where


def test_frozen_timm_backbone_is_explained_too() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", {"pretrained": False, "freeze": "backbone"}, num_classes=3, image_size=64)
    trains = [p.requires_grad for p in model.parameters()]
    assert not any(p.requires_grad for p in model.body.layer4.parameters())  # only the classifier trains
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    maps = heat_maps(model, x, [0, 2])
    assert maps.shape == (2, 64, 64) and maps.min() >= 0.0 and maps.max() <= 1.0
    assert [p.requires_grad for p in model.parameters()] == trains  # still frozen as it was


def test_transformer_is_refused_in_one_line() -> None:
    model = build_model("vit_tiny_patch16_224", {"pretrained": False}, num_classes=3, image_size=224)
    with pytest.raises(ExportError, match=r"^Grad-CAM: .*token sequences, not feature maps"):
        target_layer(model, 224)


def test_tta_is_unwrapped_and_an_ensemble_explained_by_its_heaviest_member(trained: Trained) -> None:
    assert explained_module(TestTimeAugmented(trained.model, flip=True, crops=False, image_size=SIZE)) is trained.model
    other = CustomCNN(num_classes=trained.data.num_classes, image_size=SIZE, depth=1, width=4)
    ensemble = Ensemble([other, trained.model], [PRE, PRE], [0.3, 0.7]).eval()
    assert explained_module(ensemble).model is trained.model
    raw = trained.data.test.images[:3].transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # the ensemble's input
    maps = heat_maps(ensemble, raw, [1, 2, 3])
    direct = heat_maps(trained.model, trained.inputs(3), [1, 2, 3])
    np.testing.assert_allclose(maps, direct, atol=1e-4)  # the member normalises as its own input did


# ------------------------------------------------------------------- pictures and examples


def test_side_by_side_is_the_image_then_its_overlay_enlarged(trained: Trained) -> None:
    image = trained.data.test.images[0]
    heat = heat_maps(trained.model, trained.inputs(1), [0])[0]
    picture = side_by_side(image, heat)
    scale = MIN_SIDE // SIZE
    assert picture.dtype == np.uint8 and picture.shape == (SIZE * scale, 2 * SIZE * scale + 4, 3)
    np.testing.assert_array_equal(picture[::scale, : SIZE * scale : scale], image)
    overlay = picture[:, -SIZE * scale :]
    assert not np.array_equal(overlay[::scale, ::scale], image)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(picture))))
    np.testing.assert_array_equal(decoded, picture)


def test_pick_examples_takes_right_and_wrong_of_each_class_in_order() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    preds = np.array([0, 1, 0, 1, 1, 1, 2, 2])
    assert pick_examples(labels, preds, per_class=2, max_classes=5) == [0, 2, 1, 7, 3, 4, 6]
    assert pick_examples(labels, preds, per_class=1, max_classes=2) == [0, 1, 3]


def test_explain_examples_pairs_each_image_with_its_prediction(trained: Trained) -> None:
    n = 120
    logits = trained.logits(n)
    examples = explain_examples(
        trained.model, trained.data.test.images[:n], trained.inputs(n), trained.data.test.labels[:n], logits
    )
    assert {e.label for e in examples} == set(trained.data.test.labels[:n].tolist())
    assert any(e.correct for e in examples) and any(not e.correct for e in examples)
    for e in examples:
        assert e.pred == int(logits[e.index].argmax()) and e.label == trained.data.test.labels[e.index]
        np.testing.assert_array_equal(e.image, trained.data.test.images[e.index])
        assert e.heat.shape == (SIZE, SIZE) and 0.0 < e.prob <= 1.0


# ------------------------------------------------------------------- predict --explain


@pytest.fixture(scope="module")
def bundle(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as `autocnn finalize` writes it, with the trained weights and its ONNX file."""
    from autocnn.models.onnx import export_onnx

    out = tmp_path_factory.mktemp("bundle")
    torch.save(trained.model.state_dict(), out / "weights.pt")
    (out / "labels.json").write_text(json.dumps(trained.data.classes))
    (out / "preprocess.json").write_text(json.dumps(PRE.as_dict()))
    params = {"depth": 2, "width": 8, "dropout": 0.0}
    (out / "model.json").write_text(json.dumps({"model": "custom_cnn", "model_params": params}))
    export_onnx(trained.model, out / "model.onnx", trained.inputs(2))
    return out


@pytest.fixture(scope="module")
def pngs(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three test digits as PNG files, two of them with the same name in different folders."""
    folder = tmp_path_factory.mktemp("pngs")
    (folder / "more").mkdir()
    images = trained.data.test.images
    Image.fromarray(images[0]).save(folder / "a.png")
    Image.fromarray(images[1]).resize((64, 64)).save(folder / "b.png")
    Image.fromarray(images[2]).save(folder / "more" / "a.png")
    return folder


def test_predict_files_writes_one_explanation_per_image(bundle: Path, pngs: Path, tmp_path: Path) -> None:
    predictor = Predictor(bundle)  # ONNX predicts; the PyTorch model is rebuilt for the gradients
    result = predict_files(predictor, [pngs], explain_dir=tmp_path / "why")
    written = sorted(Path(p.explanation) for p in result.predictions if p.explanation)
    assert len(written) == len(result.predictions) == 3
    assert sorted(p.name for p in written) == ["a-2.gradcam.png", "a.gradcam.png", "b.gradcam.png"]
    for path in written:
        picture = np.asarray(Image.open(path))
        assert path.parent == tmp_path / "why" and picture.shape == (128, 260, 3)
    plain = predict_files(predictor, [pngs])
    assert [p.top for p in plain.predictions] == [p.top for p in result.predictions]
    assert all(p.explanation is None and "explanation" not in p.as_dict() for p in plain.predictions)


def test_predict_explain_command_says_where_it_wrote(
    bundle: Path, pngs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(bundle), str(pngs / "a.png"), str(pngs / "b.png"), "--explain"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "explanations").iterdir()) == ["a.gradcam.png", "b.gradcam.png"]
    assert "2 Grad-CAM pictures in explanations" in result.output
    out = tmp_path / "chosen"
    named = runner.invoke(
        app, ["predict", str(bundle), str(pngs / "b.png"), "--torch", "--explain", "--explain-dir", str(out), "--json"]
    )
    assert named.exit_code == 0, named.output
    payload = json.loads(named.stdout)
    assert payload["predictions"][0]["explanation"] == str(out / "b.gradcam.png")
    assert (out / "b.gradcam.png").is_file()
    without = runner.invoke(app, ["predict", str(bundle), str(pngs / "b.png"), "--json"])
    assert "explanation" not in json.loads(without.stdout)["predictions"][0]


def test_predict_explain_user_errors_are_one_line_exit_2(bundle: Path, pngs: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["predict", str(tmp_path / "no-model"), str(pngs), "--explain"])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")
    assert len(missing.output.strip().splitlines()) == 1
    (tmp_path / "a-file").write_text("")
    clash = runner.invoke(
        app, ["predict", str(bundle), str(pngs / "a.png"), "--explain", "--explain-dir", str(tmp_path / "a-file")]
    )
    assert clash.exit_code == 2 and clash.output.startswith("error: ") and "not a folder" in clash.output
    assert len(clash.output.strip().splitlines()) == 1
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = runner.invoke(
        app, ["predict", str(bundle), str(tmp_path / "broken.png"), "--explain", "--explain-dir", str(tmp_path / "o")]
    )
    assert broken.exit_code == 1 and "unreadable image" in broken.output  # skipped, as without --explain
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------- the report


def explain_section(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text.split("<section id='explain'>")[1].split("</section>")[0]


def section_pictures(section: str) -> list[np.ndarray]:
    sources = re.findall(r"src='data:image/png;base64,([^']+)'", section)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in sources]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedStudy]:
    with finished_study_in(tmp_path_factory.mktemp("explain-report")) as finished:
        yield finished


@pytest.fixture(scope="module")
def trial_report(study: FinishedStudy) -> Path:
    """The report before anything is finalized: the best trial's saved weights are explained."""
    from autocnn.outputs.report import build_report

    return build_report(study.spec, tracking_uri=study.tracking_uri, out=study.root / "trial.html").path


@pytest.mark.slow
def test_report_explains_the_best_trial_before_anything_is_shipped(study: FinishedStudy, trial_report: Path) -> None:
    section = explain_section(trial_report)
    assert f"the best trial, {study.result.best_number} (custom_cnn)" in section
    assert "test images" in section
    pictures = section_pictures(section)
    rows = re.findall(r"<tr><td>(\d)</td>", section)
    assert rows == [str(d) for d in range(10)]  # every digit class has its row
    assert len(pictures) >= 10 and all(p.shape == (128, 260, 3) for p in pictures)


@pytest.mark.slow
def test_report_explains_the_shipped_model_once_finalized(study: FinishedStudy, trial_report: Path) -> None:
    from autocnn.outputs.finalize import FinalizeOptions, finalize
    from autocnn.outputs.report import build_report

    final = finalize(study.spec, FinalizeOptions(tracking_uri=study.tracking_uri, refit=False))
    path = build_report(study.spec, tracking_uri=study.tracking_uri, out=study.root / "shipped.html").path
    section = explain_section(path)
    assert f"the shipped model: trial {final.trial} (custom_cnn)" in section and final.run_id in section
    pictures = section_pictures(section)
    assert len(pictures) >= 10 and all(p.shape == (128, 260, 3) for p in pictures)
    captions = re.findall(r"<figcaption class=note>#\d+: predicted (\d) \(", section)
    assert len(captions) == len(pictures)
