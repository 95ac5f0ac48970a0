"""Linear probe, then fine-tune: the probe's arithmetic, and a fine-tuning trial that starts from
the head a probe fitted on the study's cached features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autocnn.training.features import FeatureCache, pooled_features
from autocnn.training.transfer import Probe, fit_probe, linear_head
from tests.test_features import BACKBONE, assemble, folder, frozen_spec  # noqa: F401 - `folder` is a fixture


def logits(probe: Probe, x: np.ndarray) -> np.ndarray:
    return x @ probe.weight.T + probe.bias


def test_the_probe_in_raw_feature_terms_gives_the_standardised_models_decisions() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    x = rng.normal(size=(90, 8)) * [1, 10, 100, 1, 1, 1, 1, 1] + labels[:, None] * [2, 0, 50, 0, 0, 0, 0, 1]
    probe = fit_probe(x, labels, 3)
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    reference = LogisticRegression(C=probe.c, max_iter=1000).fit(z, labels)
    np.testing.assert_allclose(logits(probe, x), reference.decision_function(z), rtol=1e-4, atol=1e-4)
    assert (logits(probe, x).argmax(axis=1) == reference.predict(z)).all()
    assert probe.c == 1.0 and probe.train_accuracy == reference.score(z, labels)


def test_two_classes_and_a_class_without_images_keep_one_logit_per_class() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.array([0, 2]), 10)  # class 1 has no training image
    x = rng.normal(size=(20, 4)) + labels[:, None]
    probe = fit_probe(x, labels, 3)
    assert probe.weight.shape == (3, 4) and probe.bias.shape == (3,)
    predicted = logits(probe, x).argmax(axis=1)
    assert (predicted == labels).mean() > 0.8 and 1 not in predicted


def test_a_fine_tuning_trial_starts_from_the_head_a_probe_fitted_on_cached_features(folder: Path) -> None:  # noqa: F811
    spec = frozen_spec(
        folder,
        models={BACKBONE: {"pretrained": "weights/resnet10t.safetensors", "freeze": "none", "probe_first": True}},
    )
    cache = FeatureCache(None)
    trial = assemble(spec, cache)
    assert trial.probe is not None and "linear probe" in trial.tags()["autocnn.head_start"]
    head = linear_head(trial.model)
    assert head is not None
    # the same probe fitted here from the backbone's own features of the training images
    from autocnn.data.cache import DataCache

    data = DataCache(spec.data, seed=spec.seed).get(trial.pre.image_size)
    fresh = assemble(
        frozen_spec(
            folder,
            models={BACKBONE: {"pretrained": "weights/resnet10t.safetensors", "freeze": "none", "probe_first": False}},
        ),
        None,
    )
    features = pooled_features(fresh.model, data.train, trial.pre, device=torch.device("cpu"))
    expected = fit_probe(features.numpy(), data.train.labels, data.num_classes)
    np.testing.assert_allclose(head.weight.detach().numpy(), expected.weight, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head.bias.detach().numpy(), expected.bias, rtol=1e-4, atol=1e-5)
    # without probe_first the head starts where timm initialised it
    fresh_head = linear_head(fresh.model)
    assert fresh.probe is None and not torch.allclose(fresh_head.weight, head.weight)
    # and fine-tuning then trains every layer from there
    trained = {id(p) for g in trial.trainer.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in trial.model.parameters()}
    assert cache.sources["computed"] == 1  # the features were computed once, into the study's cache
    again = assemble(spec, cache, number=1)
    assert cache.sources["computed"] == 1 and again.probe is trial.probe  # fitted once, reused


def test_a_frozen_backbone_trains_its_head_on_from_the_probe_and_a_hidden_head_without_one(folder: Path) -> None:  # noqa: F811
    cache = FeatureCache(None)
    frozen = assemble(
        frozen_spec(
            folder,
            models={
                BACKBONE: {"pretrained": "weights/resnet10t.safetensors", "freeze": "backbone", "probe_first": True}
            },
        ),
        cache,
    )
    assert frozen.path is not None and frozen.path.cached and frozen.probe is not None
    head = linear_head(frozen.model)
    assert head is not None and np.allclose(head.weight.detach().numpy(), frozen.probe.weight)
    assert cache.sources["computed"] == 2  # the training and the validation features, once each
    hidden = frozen_spec(
        folder,
        models={BACKBONE: {"pretrained": "weights/resnet10t.safetensors", "freeze": "none", "head": {"hidden": 16}}},
    )
    assert assemble(hidden, FeatureCache(None)).probe is None
    untrained = frozen_spec(folder, models={BACKBONE: {"pretrained": False, "freeze": "none"}})
    assert assemble(untrained, FeatureCache(None)).probe is None


@pytest.mark.parametrize("value", [True, False])
def test_probe_first_is_a_searchable_backbone_key(value: bool) -> None:
    from autocnn.search.defaults import default_trials
    from autocnn.spec.load import parse_spec
    from tests.conftest import digits_spec_dict

    spec = parse_spec(
        digits_spec_dict(models={"resnet10t": {"pretrained": False, "probe_first": {"choices": [value, not value]}}})
    )
    (params,) = [p for p in default_trials(spec) if p["model"] == "resnet10t"]
    assert params["models.resnet10t.probe_first"] is True  # the default trial fine-tunes from a probe
