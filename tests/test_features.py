"""Frozen backbones on cached features: the same head as the full path, computed once, reused
across trials and resumed studies, invalidated by anything that changes the features.

Backbones are tiny timm models with random weights saved to a local file; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from autocnn.data.arrays import Split
from autocnn.data.cache import DataCache
from autocnn.models.backbones import FeatureHead
from autocnn.models.build import build_model, preprocess_for
from autocnn.search.space import config_from_params, study_settings
from autocnn.spec.load import load_spec, parse_spec
from autocnn.spec.schema import Spec
from autocnn.training.assembly import AssembledTrial, assemble_trial, preprocessing, train_settings, trial_seeds
from autocnn.training.features import CACHED, FULL, PATH_TAG, REASON_TAG, FeatureCache, choose_path, pooled_features
from autocnn.training.loop import TensorBatches
from tests.conftest import digits_spec_dict, write_images, write_spec

BACKBONE = "resnet10t"
WEIGHTS = "weights/resnet10t.safetensors"
# The cached path computes the backbone's features in other batch sizes than the full path, so a
# float rounding or two may differ; the head then trains on the same batches from the same start.
# Its validation accuracy may differ by at most one image in 20 (the split has 15 val images).
ACCURACY_TOLERANCE = 0.05


def save_random_weights(file: Path, *, seed: int = 0) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(timm.create_model(BACKBONE).state_dict(), str(file))
    return file


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """3 classes x 20 images and a backbone weight file, beside the spec that uses them."""
    for label, name in enumerate(["cat", "dog", "fox"]):
        write_images(tmp_path / "images" / name, label, 20, size=32)
    save_random_weights(tmp_path / WEIGHTS)
    return tmp_path


def frozen_raw(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "frozen",
        "seed": 0,
        "data": {"source": "imagefolder", "root": "images", "image_size": 32, "split": {"val": 0.25, "test": 0.2}},
        "study": {"trials": 2, "pruner": "none", "sampler": "random", "defaults": False},
        "train": {"epochs": 3, "batch_size": 8, "lr": 1e-2, "precision": "fp32"},
        # The head starts where timm put it: how a head starts (probe_first) is tests/test_transfer.py's.
        "models": {BACKBONE: {"pretrained": WEIGHTS, "freeze": "backbone", "probe_first": False}},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def frozen_spec(folder: Path, **overrides: Any) -> Spec:
    return load_spec(write_spec(folder, frozen_raw(**overrides)))


def assemble(spec: Spec, features: FeatureCache | None, *, number: int = 0) -> AssembledTrial:
    config = config_from_params(spec, {"model": BACKBONE})
    pre = preprocessing(study_settings(spec), config)
    data = DataCache(spec.data, seed=spec.seed).get(pre.image_size)
    budget = {"epochs": spec.train.epochs, "patience": 0, "steps_per_epoch": len(data.train) // 8}
    settings = train_settings(study_settings(spec), config, budget, n_val=len(data.val))
    device = torch.device("cpu")
    return assemble_trial(
        study_settings(spec),
        config,
        data,
        settings,
        seeds=trial_seeds(study_settings(spec), number),
        pre=pre,
        features=features,
        device=device,
    )


def train(trial: AssembledTrial, epochs: int | None = None) -> list[float]:
    accuracies = []
    for metrics in trial.trainer.fit(trial.train, trial.val):
        accuracies.append(metrics.val_accuracy)
        if epochs is not None and len(accuracies) == epochs:
            break
    return accuracies


def feature_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- the head on features


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("resnet10t", {"freeze": "backbone", "dropout": 0.3}),  # timm's dropout and classifier
        ("mobilenetv3_small_050", {"freeze": "backbone"}),  # a conv head between pooling and classifier
        ("mobilenetv2_035", {"backbone_lr_mult": 0.0, "head": {"hidden": 8, "dropout": 0.2}}),  # autocnn's head
    ],
)
def test_the_head_on_pooled_features_gives_the_whole_models_logits(name: str, params: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = build_model(name, {"pretrained": False, **params}, num_classes=3, image_size=32)
    pre = preprocess_for(name, params, image_size=32)
    split = Split(np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.zeros(10, np.int64))
    features = pooled_features(model, split, pre, device=torch.device("cpu"))
    head = FeatureHead(model)
    assert {id(p) for p in head.parameters()} == {id(p) for p in model.head_parameters()}  # shared, not copied
    model.eval(), head.eval()
    x, _ = next(iter(TensorBatches(split, pre, batch_size=10, shuffle=False)))
    with torch.no_grad():
        assert torch.allclose(head(features), model(x), atol=1e-5)


def test_which_path_a_trial_takes_and_why() -> None:
    def path(model: dict[str, Any], augment: dict[str, Any] | None = None, study: dict[str, Any] | None = None):
        raw = digits_spec_dict(models={BACKBONE: {"pretrained": False, **model}, "custom_cnn": {}}, train={"lr": 1e-3})
        raw["study"] = {**raw["study"], **(study or {})}
        if augment is not None:
            raw["augment"] = augment
        spec = parse_spec(raw)
        config = config_from_params(spec, {"model": BACKBONE})
        return choose_path(config, augmenting=bool(augment), feature_cache=spec.study.feature_cache)

    frozen = {"freeze": "backbone"}
    assert path(frozen).cached and "no augmentation" in path(frozen).reason
    assert path({"backbone_lr_mult": 0.0}).cached
    assert not path({"freeze": "partial"}).cached and "freeze: partial" in path({"freeze": "partial"}).reason
    assert not path({"freeze": "none"}).cached
    off = path(frozen, study={"feature_cache": False})
    assert not off.cached and off.reason == "study.feature_cache is false"
    augmenting = path(frozen, {"hflip": 0.5})
    assert not augmenting.cached and "augment.cached_views" in augmenting.reason
    views = path(frozen, {"hflip": 0.5, "cached_views": 3})
    assert views.cached and views.views == 3 and views.tags()[PATH_TAG] == CACHED
    assert augmenting.tags() == {PATH_TAG: FULL, REASON_TAG: augmenting.reason}
    spec = parse_spec(digits_spec_dict(train={"lr": 1e-3}))
    assert not choose_path(
        config_from_params(spec, {"model": "custom_cnn", "models.custom_cnn.depth": 2}),
        augmenting=False,
        feature_cache=True,
    ).cached


# --------------------------------------------------------------------------- same results as the full path


def test_cached_path_reaches_the_full_paths_validation_accuracy(folder: Path) -> None:
    spec = frozen_spec(folder)
    full = assemble(spec, None)
    cached = assemble(spec, FeatureCache(folder / "features"))
    assert full.path is None and cached.path is not None and cached.path.cached
    assert cached.trainer.model is not cached.model and len(cached.train) == len(full.train)

    full_acc, cached_acc = train(full), train(cached)
    assert len(full_acc) == len(cached_acc) == 3
    assert abs(full_acc[-1] - cached_acc[-1]) <= ACCURACY_TOLERANCE, (full_acc, cached_acc)
    assert abs(full.trainer.best_value - cached.trainer.best_value) <= ACCURACY_TOLERANCE
    # The same head, and a whole model to log and export: backbone untouched, head trained.
    full_state, cached_state = full.model.state_dict(), cached.model.state_dict()
    assert full_state.keys() == cached_state.keys()
    assert torch.equal(full_state["body.conv1.0.weight"], cached_state["body.conv1.0.weight"])
    assert torch.allclose(full_state["body.fc.weight"], cached_state["body.fc.weight"], atol=1e-3)
    assert not torch.allclose(cached_state["body.fc.weight"], assemble(spec, None).model.state_dict()["body.fc.weight"])


def test_a_resumed_head_continues_where_it_stopped(folder: Path) -> None:
    spec = frozen_spec(folder)
    cache = FeatureCache(folder / "features")
    whole = assemble(spec, cache)
    train(whole)
    first = assemble(spec, cache)
    train(first, epochs=1)
    state = first.trainer.state_dict()
    resumed = assemble(spec, cache)
    resumed.trainer.load_state_dict(state)
    assert len(train(resumed)) == 2  # epochs 2 and 3
    for key, value in whole.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key]), key


def test_a_checkpoint_from_the_other_path_starts_the_trial_over() -> None:
    from autocnn.search.resume import RESUME_FROM_ATTR
    from autocnn.search.trial import resume_trainer

    said: list[str] = []
    state = {"trainer": {}, "history": [(1, 0.5)], "feature_path": "full"}
    ctx = SimpleNamespace(
        checkpoints=SimpleNamespace(load=lambda n: state), reporter=SimpleNamespace(message=said.append)
    )
    trial = SimpleNamespace(number=4, user_attrs={RESUME_FROM_ATTR: 3})
    assert resume_trainer(ctx, trial, trainer=None, feature_path="cached") == []  # type: ignore[arg-type]
    assert said == ["trial 4 starts over: trial 3 was checkpointed on the full path, this run takes the cached path"]


# --------------------------------------------------------------------------- reuse and invalidation


def test_features_are_reused_from_memory_then_from_disk_and_written_whole(folder: Path) -> None:
    spec = frozen_spec(folder)
    where = folder / "features"
    first = assemble(spec, FeatureCache(where))
    assert first.path is not None and first.path.source.startswith("computed in ")
    assert first.path.tags()[REASON_TAG].endswith(first.path.source)
    files = feature_files(where)
    assert len(files) == 2 and all(f.endswith(".safetensors") for f in files)  # train and val; no temp file left
    cache = FeatureCache(where)  # another process
    assert assemble(spec, cache, number=1).path.source == "from disk"
    assert assemble(spec, cache, number=2).path.source == "from memory"
    assert cache.sources == {"computed": 0, "memory": 2, "disk": 2}
    assert feature_files(where) == files


def test_a_changed_weight_file_or_image_size_computes_new_features(folder: Path) -> None:
    spec = frozen_spec(folder)
    where = folder / "features"
    cache = FeatureCache(where)
    before = assemble(spec, cache)
    save_random_weights(folder / WEIGHTS, seed=1)  # same name, other bytes
    changed = assemble(spec, cache)
    assert changed.path.source.startswith("computed")
    assert not torch.equal(before.train.features, changed.train.features)
    resized = assemble(frozen_spec(folder, data={"image_size": 24}), cache)
    assert resized.path.source.startswith("computed") and resized.pre.image_size == 24
    mixed = assemble(frozen_spec(folder, train={"precision": "mixed"}), cache)  # bf16 autocast: other numbers
    assert mixed.path.source.startswith("computed")
    assert len(feature_files(where)) == 8
    assert assemble(spec, FeatureCache(where)).path.source == "from disk"  # the current file's


def test_features_over_the_memory_budget_stay_on_disk(folder: Path) -> None:
    spec = frozen_spec(folder)
    cache = FeatureCache(folder / "features", memory_budget=1000)
    assemble(spec, cache)
    assert cache.memory_bytes() == 0
    assert assemble(spec, cache).path.source == "from disk"
    memory_only = FeatureCache(None)
    assemble(spec, memory_only)
    assert assemble(spec, memory_only).path.source == "from memory" and memory_only.memory_bytes() > 0


def test_unwritable_folder_costs_only_the_reuse(folder: Path) -> None:
    spec = frozen_spec(folder)
    blocker = folder / "not-a-folder"
    blocker.write_text("")
    cache = FeatureCache(blocker / "features")
    assert assemble(spec, cache).path.cached
    (warning,) = cache.take_warnings()
    assert warning.startswith(f"features not written to {blocker / 'features'}")
    assert assemble(spec, cache).path.source == "from memory" and not cache.take_warnings()


# --------------------------------------------------------------------------- augmentation


def test_augmenting_trial_takes_the_full_path_unless_views_are_cached(folder: Path) -> None:
    augment = {"hflip": 0.5, "rotate": 15.0}
    where = folder / "features"
    plain = assemble(frozen_spec(folder, augment=augment), FeatureCache(where))
    assert plain.path is not None and not plain.path.cached and plain.augmentation is not None
    assert type(plain.train).__name__ == "AugmentedBatches"

    spec = frozen_spec(folder, augment={**augment, "cached_views": 2})
    views = assemble(spec, FeatureCache(where))
    n_train = len(views.train.labels)
    assert views.path.cached and views.path.views == 2 and views.augmentation is not None
    assert views.train.features.shape[:2] == (2, n_train)
    assert not torch.equal(views.train.features[0], views.train.features[1])
    again = assemble(spec, FeatureCache(None))  # computed afresh: the same views, from the same seeds
    assert torch.equal(views.train.features, again.train.features)
    assert assemble(spec, FeatureCache(where), number=5).path.source == "from disk"  # any trial, same views
    batches = [x for x, _ in views.train]
    views.train.set_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(batches, [x for x, _ in views.train], strict=True))
    assert len(train(views)) == 3


# --------------------------------------------------------------------------- a study, resumed, finalized


@pytest.mark.slow
def test_a_study_reuses_features_across_trials_and_a_resume_and_finalize_exports_onnx(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from autocnn.outputs.finalize import FinalizeOptions, finalize
    from autocnn.outputs.predict import Predictor, predict_files
    from autocnn.outputs.report import build_report
    from autocnn.search.options import StudyOptions
    from autocnn.search.study import run_study
    from autocnn.tracking.tracker import default_tracking_uri
    from autocnn.training import features

    monkeypatch.chdir(folder)
    monkeypatch.setattr(features, "_caches", {})
    spec = frozen_spec(folder, train={"lr": {"low": 3e-3, "high": 3e-2, "log": True}})
    assert run_study(spec, StudyOptions()).counts["COMPLETE"] == 2
    monkeypatch.setattr(features, "_caches", {})  # a new process: nothing in memory
    assert run_study(spec, StudyOptions(trials=3)).counts["COMPLETE"] == 3

    client = MlflowClient(default_tracking_uri())
    experiment = client.get_experiment_by_name(spec.name).experiment_id
    runs = client.search_runs([experiment], "tags.`autocnn.role` = 'trial'")
    tags = {int(r.data.tags["optuna.trial_number"]): r.data.tags for r in runs}
    assert {t[PATH_TAG] for t in tags.values()} == {CACHED}
    assert "features computed in" in tags[0][REASON_TAG]
    assert tags[1][REASON_TAG].endswith("features from memory")
    assert tags[2][REASON_TAG].endswith("features from disk")
    assert len(feature_files(study_settings(spec).feature_folder)) == 2

    report = build_report(spec, out=folder / "report.html").path.read_text()
    assert "s/trial frozen: cached · full (trials)" in report and "cached " in report

    final = finalize(spec, FinalizeOptions(refit=False))  # the trial's own logged weights: the whole model
    assert "model.onnx" in final.files and final.onnx_max_abs_diff < 1e-3
    assert final.onnx_accuracy == final.scores.accuracy
    image = next((folder / "images" / "fox").iterdir())
    (prediction,) = predict_files(Predictor(final.out_dir), [image], top=1).predictions
    assert prediction.top[0][0] in {"cat", "dog", "fox"}
