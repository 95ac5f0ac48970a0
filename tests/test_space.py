"""Spec -> Optuna: names, distributions and the conditional model choice."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autocnn.search.space import config_from_params, sample_config, searched_params
from autocnn.spec.load import load_spec, parse_spec
from tests.conftest import REPO, digits_spec_dict


def test_digits_search_space_table() -> None:
    rows = {p.name: (p.distribution, p.domain) for p in searched_params(load_spec(REPO / "studies" / "digits.yaml"))}
    assert rows["model"][0] == "categorical"
    assert rows["train.lr"] == ("float log-uniform", "[0.0001, 0.01]")
    assert rows["models.custom_cnn.depth"] == ("int uniform", "[2, 4]")
    assert rows["models.custom_cnn.width"] == ("categorical", "16, 32")
    assert "train.epochs" not in rows  # fixed values are not searched


def test_optuna_distributions_match_the_spec() -> None:
    spec = parse_spec(
        digits_spec_dict(
            train={"epochs": 3, "lr": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_size": {"choices": [32, 64]}},
            models={"custom_cnn": {"depth": {"low": 2, "high": 4}, "dropout": {"low": 0.0, "high": 0.5, "step": 0.1}}},
        )
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    config = sample_config(trial, spec)
    dists = trial.distributions
    assert dists["train.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["train.batch_size"] == CategoricalDistribution([32, 64])
    assert dists["models.custom_cnn.depth"] == IntDistribution(2, 4)
    assert dists["models.custom_cnn.dropout"] == FloatDistribution(0.0, 0.5, step=0.1)
    assert config.train.epochs == 3 and "train.epochs" not in dists
    assert set(dists) <= set(config.flat())  # every Optuna param is an MLflow param, same name
    assert config.flat()["train.lr"] == trial.params["train.lr"]


def test_fixed_trial_rebuilds_a_config() -> None:
    spec = load_spec(REPO / "studies" / "digits.yaml")
    params = {
        "model": "custom_cnn",
        "train.lr": 0.003,
        "train.weight_decay": 1e-4,
        "models.custom_cnn.depth": 3,
        "models.custom_cnn.width": 32,
        "models.custom_cnn.dropout": 0.25,
        "augment.rotate": 5.0,
        "augment.shift_scale": 0.05,
    }
    config = config_from_params(spec, params)
    assert config.model == "custom_cnn"
    assert config.augment.rotate == 5.0 and config.augment.hflip == 0.0
    assert config.model_params == {"depth": 3, "width": 32, "dropout": 0.25, "activation": "relu"}
    assert config.train.lr == 0.003 and config.train.epochs == 10


def test_out_of_range_fixed_param_is_rejected() -> None:
    spec = load_spec(REPO / "studies" / "digits.yaml")
    with pytest.raises(ValueError):
        config_from_params(spec, {"model": "custom_cnn", "train.lr": 5.0})
