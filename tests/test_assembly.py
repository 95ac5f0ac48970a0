"""The one place a configuration becomes a trainable trial: every key the spec accepts must
change what is trained, and the study's trial and finalize's re-training must be the same run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from autocnn.data.cache import DataCache
from autocnn.search.plan import make_plan
from autocnn.search.space import config_from_params, study_settings
from autocnn.search.trial import trial_budget
from autocnn.spec.load import load_spec
from autocnn.spec.schema import AugmentSpace, CustomCNNSpace, HeadSpace, Spec, TimmSpace, TrainSpec
from autocnn.training.assembly import assemble_trial, parameter_groups, preprocessing, train_settings, trial_seeds
from autocnn.training.config import TrialConfig
from autocnn.training.features import FeatureCache
from tests.conftest import digits_spec_dict, write_spec

# Every key of each section: what the base spec sets around it, and a value that must change the
# trial. A key the spec gains without a row here fails the coverage test below.
BASE_TIMM: dict[str, Any] = {"pretrained": False}
# timm's test_resnet: a ResNet's stages, stem and norms at 0.5M parameters (resnet18: 11.7M); the
# cases below only need the structure, and saving and probing resnet18 weights cost seconds each.
CASES: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {
    "train": [
        ("epochs", {}, {"epochs": 3}),
        ("batch_size", {}, {"batch_size": 16}),
        ("lr", {}, {"lr": 0.01}),
        ("weight_decay", {}, {"weight_decay": 0.05}),
        ("scheduler", {}, {"scheduler": "onecycle"}),
        ("early_stopping", {}, {"early_stopping": 2}),
        ("label_smoothing", {}, {"label_smoothing": 0.1}),
        ("precision", {"precision": "fp32"}, {"precision": "mixed"}),
        ("class_weights", {}, {"class_weights": "balanced"}),
        ("sampler", {}, {"sampler": "balanced"}),
    ],
    "custom_cnn": [
        ("depth", {}, {"depth": 2}),
        ("width", {}, {"width": 8}),
        ("dropout", {}, {"dropout": 0.5}),
        ("activation", {}, {"activation": "gelu"}),
    ],
    "test_resnet": [
        ("pretrained", {}, {"pretrained": "weights/test_resnet.pt"}),
        ("freeze", {}, {"freeze": "backbone"}),
        ("unfreeze_last", {"freeze": "partial"}, {"freeze": "partial", "unfreeze_last": 2}),
        ("backbone_lr_mult", {}, {"backbone_lr_mult": 0.1}),
        ("layer_decay", {}, {"layer_decay": 0.8}),
        (
            "norm_stats",
            {"pretrained": "weights/test_resnet.pt", "norm_stats": "pretrained"},
            {"pretrained": "weights/test_resnet.pt", "norm_stats": "batch"},
        ),
        (
            "probe_first",
            {"pretrained": "weights/test_resnet.pt", "probe_first": False},
            {"pretrained": "weights/test_resnet.pt", "probe_first": True},
        ),
        ("head", {}, {"head": {"hidden": 0}}),
        ("dropout", {}, {"dropout": 0.3}),
        ("image_size", {}, {"image_size": 24}),
    ],
    "head": [
        ("hidden", {}, {"hidden": 16}),
        ("activation", {"hidden": 16}, {"hidden": 16, "activation": "gelu"}),
        ("dropout", {}, {"dropout": 0.4}),
    ],
    "augment": [
        ("enabled", {"enabled": False, "rotate": 10.0}, {"enabled": True, "rotate": 10.0}),
        ("hflip", {}, {"hflip": 0.5}),
        ("vflip", {}, {"vflip": 0.5}),
        ("rotate", {}, {"rotate": 10.0}),
        ("shift_scale", {}, {"shift_scale": 0.1}),
        ("random_resized_crop", {}, {"random_resized_crop": 0.5}),
        ("color_jitter", {}, {"color_jitter": 0.2}),
        ("gamma", {}, {"gamma": 0.5}),
        ("blur", {}, {"blur": 0.5}),
        ("noise", {}, {"noise": 0.5}),
        ("cutout", {}, {"cutout": 0.5}),
        # on a frozen backbone (spec_for): views cached, or augmented every epoch
        ("cached_views", {"hflip": 0.5, "cached_views": 0}, {"hflip": 0.5, "cached_views": 2}),
    ],
}
SECTIONS: dict[str, type[BaseModel]] = {
    "train": TrainSpec,
    "custom_cnn": CustomCNNSpace,
    "test_resnet": TimmSpace,
    "head": HeadSpace,
    "augment": AugmentSpace,
}


def spec_for(folder: Path, section: str, values: dict[str, Any]) -> Spec:
    """A fixed (unsearched) digits spec whose `section` holds `values`."""
    raw = digits_spec_dict(train={"epochs": 2, "batch_size": 32, "lr": 1e-3})
    raw["models"] = {"custom_cnn": {"depth": 2}}
    if section == "train":
        raw["train"] |= values
    elif section == "custom_cnn":
        raw["models"] = {"custom_cnn": values}
    elif section == "test_resnet":
        raw["models"] = {"test_resnet": {**BASE_TIMM, **values}}
    elif section == "head":
        raw["models"] = {"test_resnet": {**BASE_TIMM, "head": values}}
    elif section == "augment":
        raw["augment"] = {"enabled": True, **values}
        if "cached_views" in values:
            raw["models"] = {"test_resnet": {**BASE_TIMM, "freeze": "backbone"}}
    return load_spec(write_spec(folder, raw))


def first_config(spec: Spec) -> TrialConfig:
    return config_from_params(spec, {"model": next(iter(spec.models.spaces()))})


def fingerprint(spec: Spec) -> dict[str, Any]:
    """What a trial trains with, as comparable values: settings, batches, model, optimizer, augmentation."""
    from autocnn.training import augment

    cache = DataCache(spec.data, seed=spec.seed)
    config = first_config(spec)
    data = cache.get(preprocessing(study_settings(spec), config).image_size)
    budget = trial_budget(config, make_plan(spec, cache.get()))
    settings = train_settings(study_settings(spec), config, budget, n_val=len(data.val))
    trial = assemble_trial(
        study_settings(spec),
        config,
        data,
        settings,
        seeds=trial_seeds(study_settings(spec), 0),
        features=FeatureCache(None),
    )
    trainer = trial.trainer
    return {
        "settings": asdict(settings),
        "preprocessing": trial.pre,
        "batches_per_epoch": len(trial.train),
        "model": repr(trainer.model),
        "drop_rate": getattr(getattr(trainer.model, "body", None), "drop_rate", None),
        "weights": float(sum(p.double().sum() for p in trainer.model.state_dict().values() if p.is_floating_point())),
        "trainable": [name for name, p in trainer.model.named_parameters() if p.requires_grad],
        "norms_in_eval_mode": list(getattr(trainer.model, "frozen_norms", [])),
        "groups": [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in trainer.optimizer.param_groups],
        "scheduler": type(trainer.scheduler).__name__,
        "loss": trainer.criterion.label_smoothing,
        "loss_weights": None if trainer.criterion.weight is None else trainer.criterion.weight.tolist(),
        "first_batch": next(iter(trial.train))[1].tolist(),
        "autocast": str(trainer.amp_dtype),
        "augmentation": None if trial.augmentation is None else augment.describe(trial.augmentation),
        "feature_path": None if trial.path is None else (trial.path.name, trial.path.views),
    }


def test_every_key_of_every_section_has_a_case() -> None:
    for section, model in SECTIONS.items():
        covered = {key for key, _, _ in CASES[section]}
        assert covered == set(model.model_fields), f"{section}: add a case for {set(model.model_fields) - covered}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("section", "key", "base", "changed"),
    [(section, *case) for section, cases in CASES.items() for case in cases],
    ids=[f"{section}.{case[0]}" for section, cases in CASES.items() for case in cases],
)
def test_every_spec_key_changes_the_assembled_trial(
    in_tmp: Path, section: str, key: str, base: dict[str, Any], changed: dict[str, Any]
) -> None:
    """A key that is sampled and logged but then ignored would leave the trial as it was."""
    for side, values in (("a", base), ("b", changed)):
        if "pretrained" in values:  # a weight file unlike the random initialisation
            import timm

            torch.manual_seed(123)
            (in_tmp / side / "weights").mkdir(parents=True)
            torch.save(timm.create_model("test_resnet").state_dict(), in_tmp / side / "weights" / "test_resnet.pt")
    before = fingerprint(spec_for(in_tmp / "a", section, base))
    after = fingerprint(spec_for(in_tmp / "b", section, changed))
    assert before != after, f"{section}.{key} = {changed} assembled the same trial as {base}"


def test_a_trial_and_its_retraining_start_from_the_same_model_and_batches(in_tmp: Path) -> None:
    spec = spec_for(in_tmp, "train", {})
    data = DataCache(spec.data, seed=spec.seed).get()
    config = first_config(spec)
    settings = train_settings(
        study_settings(spec), config, trial_budget(config, make_plan(spec, data)), n_val=len(data.val)
    )
    first, again, other = (
        assemble_trial(
            study_settings(spec), config, data, settings, seeds=trial_seeds(study_settings(spec), 4, retraining)
        )
        for retraining in (0, 0, 1)
    )
    pairs = zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert torch.equal(next(iter(first.train))[1], next(iter(again.train))[1])
    assert not torch.equal(next(iter(first.train))[1], next(iter(other.train))[1])


def test_a_backbone_gets_a_backbone_and_a_head_group_the_custom_cnn_one_each_with_a_no_decay_twin() -> None:
    from autocnn.models.build import build_model

    cnn = build_model("custom_cnn", {"depth": 2, "width": 8}, num_classes=3, image_size=16)
    groups = parameter_groups(cnn, lr=0.01, backbone_lr_mult=None)
    assert [g["name"] for g in groups] == ["model", "model.no_decay"] and all(g["lr"] == 0.01 for g in groups)
    net = build_model("resnet18", {"pretrained": False, "freeze": "partial"}, num_classes=3, image_size=16)
    groups = parameter_groups(net, lr=0.01, backbone_lr_mult=0.1)
    assert [g["name"] for g in groups] == ["backbone", "backbone.no_decay", "head", "head.no_decay"]
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.001, 0.01, 0.01])
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in net.parameters() if p.requires_grad
    )


def test_norm_scales_and_biases_and_nothing_else_train_without_weight_decay() -> None:
    import torch

    from autocnn.models.build import build_model
    from autocnn.training.loop import Trainer, TrainSettings

    net = build_model("resnet18", {"pretrained": False}, num_classes=3, image_size=16)
    groups = parameter_groups(net, lr=0.01, backbone_lr_mult=0.1)
    settings = TrainSettings(epochs=1, lr=0.01, weight_decay=0.05, scheduler="none")
    trainer = Trainer(net, settings, steps_per_epoch=1, device=torch.device("cpu"), param_groups=groups)
    no_decay = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    norms_and_biases = {
        id(p)
        for name, module in net.named_modules()
        for pname, p in module.named_parameters(recurse=False)
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or pname == "bias"
    }
    assert no_decay == norms_and_biases and len(no_decay) > 40
    assert decayed == {id(p) for p in net.parameters()} - norms_and_biases


def test_layer_decay_gives_each_backbone_stage_a_rate_shrinking_toward_the_stem() -> None:
    from autocnn.models.build import build_model

    net = build_model("resnet18", {"pretrained": False}, num_classes=3, image_size=16)
    groups = [
        g for g in parameter_groups(net, lr=0.01, backbone_lr_mult=0.5, layer_decay=0.8) if "no_decay" not in g["name"]
    ]
    stages = [g for g in groups if g["name"].startswith("backbone.")]
    assert len(stages) >= 4 and groups[-1]["name"] == "head" and groups[-1]["lr"] == 0.01
    rates = [g["lr"] for g in stages]
    assert rates[-1] == pytest.approx(0.005)  # the last stage: lr x backbone_lr_mult
    assert rates == pytest.approx([0.005 * 0.8 ** (len(rates) - 1 - i) for i in range(len(rates))])
    everything = parameter_groups(net, lr=0.01, backbone_lr_mult=0.5, layer_decay=0.8)
    assert sum(p.numel() for g in everything for p in g["params"]) == sum(p.numel() for p in net.parameters())
