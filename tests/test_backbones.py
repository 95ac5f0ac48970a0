"""timm backbones: local weights, freeze modes, offline failure, facts in MLflow, name checks.

No network anywhere: weights are random models saved by the tests, and the hub cache is a
temporary folder (empty, or filled by hand the way `autocnn weights fetch` would fill it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.errors import SpecError
from autocnn.models.build import build_model, freeze_mode, model_facts, preprocess_for
from autocnn.models.hub import WeightsError, cached_weights, check_backbones
from autocnn.spec.load import load_spec, parse_spec
from autocnn.training.assembly import parameter_groups
from tests.conftest import digits_spec_dict, write_spec

N_CLASSES = 5


def _n_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _numel(module: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def _fill_hub_cache(cache: Path, hub_id: str, state: dict[str, torch.Tensor]) -> None:
    """Lay out one repo the way huggingface_hub stores a download: blob, snapshot link, ref."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "snapshots" / commit).mkdir(parents=True)
    blob = repo / "blobs" / "a1b2c3"
    save_file({k: v.contiguous() for k, v in state.items()}, str(blob))
    (repo / "snapshots" / commit / "model.safetensors").symlink_to(Path("../../blobs/a1b2c3"))
    (repo / "refs" / "main").write_text(commit)


# --------------------------------------------------------------------------- local weight files


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weight_file_loads_with_a_new_classifier(tmp_path: Path, suffix: str) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", num_classes=1000)
    state = source.state_dict()
    file = tmp_path / "weights" / f"resnet18{suffix}"
    file.parent.mkdir()
    if suffix == ".safetensors":
        save_file(state, str(file))
    else:
        torch.save({"state_dict": state}, file)  # the common training-checkpoint wrapping

    # A relative path is read from the spec's folder, not from the working directory: resolved at load.
    spec = write_spec(tmp_path, digits_spec_dict(models={"resnet18": {"pretrained": f"weights/resnet18{suffix}"}}))
    params = {"pretrained": load_spec(spec).models.spaces()["resnet18"].pretrained, "freeze": "none"}
    model = build_model("resnet18", params, num_classes=N_CLASSES, image_size=32)
    random = build_model("resnet18", {"pretrained": False}, num_classes=N_CLASSES, image_size=32)

    assert torch.equal(model.body.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.body.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert not torch.equal(random.body.conv1.weight, state["conv1.weight"])
    assert model.body.fc.weight.shape == (N_CLASSES, 512)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, N_CLASSES)


def test_pth_is_loaded_with_weights_only(tmp_path: Path) -> None:
    """A pickle that needs arbitrary globals is refused, with the file named, not executed."""
    import fractions

    import timm

    file = tmp_path / "unsafe.pth"
    state = timm.create_model("mobilenetv2_035").state_dict()
    torch.save({"state_dict": state, "note": fractions.Fraction(1, 3)}, file)
    with pytest.raises(WeightsError, match=r"^models\.mobilenetv2_035\.pretrained: .*unsafe\.pth"):
        build_model("mobilenetv2_035", {"pretrained": str(file)}, num_classes=3, image_size=32)


def test_missing_weight_file_is_a_spec_error_naming_the_path(tmp_path: Path) -> None:
    raw = digits_spec_dict(models={"resnet18": {"pretrained": "nowhere/resnet18.safetensors"}})
    spec = parse_spec(raw)
    with pytest.raises(SpecError, match=r"models\.resnet18\.pretrained: weight file not found: .*nowhere"):
        check_backbones(spec.models)


# --------------------------------------------------------------------------- freeze modes


def _expected_resnet18(mode: str, unfreeze_last: int) -> int:
    """Counted from timm's own module names, independently of autocnn's grouping."""
    import timm

    ref = timm.create_model("resnet18", num_classes=N_CLASSES)
    head = _numel(ref, "fc.")
    if mode == "none":
        return _numel(ref)
    if mode == "backbone":
        return head
    stages = ["layer4.", "layer3.", "layer2.", "layer1."][:unfreeze_last]
    return head + sum(_numel(ref, s) for s in stages)


FREEZE_CASES = [
    ({"freeze": "none"}, "none", 0),
    ({"freeze": "backbone"}, "backbone", 0),
    ({"freeze": "partial", "unfreeze_last": 1}, "partial", 1),
    ({"freeze": "partial", "unfreeze_last": 2}, "partial", 2),
    ({"freeze": "none", "backbone_lr_mult": 0.0}, "backbone", 0),  # lr 0 is the same as frozen
]


def _one_step(model: torch.nn.Module, params: dict[str, Any], lr: float = 1e-2) -> None:
    from autocnn.training.loop import Trainer, TrainSettings

    settings = TrainSettings(epochs=1, lr=lr, weight_decay=0.0, scheduler="none")
    groups = parameter_groups(model, lr=lr, backbone_lr_mult=float(params.get("backbone_lr_mult", 1.0)))
    trainer = Trainer(model, settings, steps_per_epoch=1, device=torch.device("cpu"), param_groups=groups)
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 3, 32, 32, generator=gen), torch.arange(8) % N_CLASSES)
    trainer.train_one_epoch([batch])


@pytest.mark.parametrize(("extra", "mode", "unfreeze_last"), FREEZE_CASES)
def test_freeze_modes_train_exactly_the_expected_parameters(
    extra: dict[str, Any], mode: str, unfreeze_last: int
) -> None:
    params = {"pretrained": False, **extra}
    model = build_model("resnet18", params, num_classes=N_CLASSES, image_size=32)
    assert freeze_mode(model) == mode
    assert _n_trainable(model) == _expected_resnet18(mode, unfreeze_last)

    with torch.no_grad():  # timm zero-inits each block's last BN gamma, which zeroes some gradients
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    _one_step(model, params)
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    params_changed = changed & {n for n, _ in model.named_parameters()}
    assert params_changed == trainable
    # Frozen BatchNorm kept its running statistics: it stayed in eval mode during the step.
    stem_stats = "body.bn1.running_mean"
    assert (stem_stats in changed) == (mode == "none")
    if mode == "partial":
        assert "body.layer4.1.bn2.running_mean" in changed


def test_frozen_batchnorm_stays_in_eval_mode_after_train() -> None:
    model = build_model(
        "efficientnet_b0",
        {"pretrained": False, "freeze": "backbone"},
        num_classes=3,
        image_size=32,
    )
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms)
    assert model.training and model.body.classifier.training


def test_head_and_backbone_lr_mult_make_two_optimizer_groups() -> None:
    params = {
        "pretrained": False,
        "freeze": "partial",
        "unfreeze_last": 1,
        "backbone_lr_mult": 0.1,
        "head": {"hidden": 32, "activation": "gelu", "dropout": 0.3},
    }
    model = build_model("mobilenetv2_035", params, num_classes=N_CLASSES, image_size=32)
    head = model.head
    assert [type(m).__name__ for m in head] == ["Linear", "GELU", "Dropout", "Linear"]
    assert head[0].in_features == model.body.num_features and head[-1].out_features == N_CLASSES
    groups = parameter_groups(model, lr=1e-3, backbone_lr_mult=params["backbone_lr_mult"])
    assert [g["name"] for g in groups] == ["backbone", "backbone.no_decay", "head", "head.no_decay"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3])
    assert sum(p.numel() for g in groups[2:] for p in g["params"]) == _numel(head)
    assert sum(p.numel() for g in groups for p in g["params"]) == _n_trainable(model)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, N_CLASSES)


# ------------------------------------------------------------------------- preprocessing and facts


def test_preprocessing_follows_the_backbone() -> None:
    custom = preprocess_for("custom_cnn", {}, image_size=48)
    spec_size = preprocess_for("resnet18", {}, image_size=48)
    own_size = preprocess_for("resnet18", {"image_size": 64}, image_size=48)
    native = preprocess_for("resnet18", {}, image_size=48, native_size=True)
    assert custom.mean == (0.5, 0.5, 0.5) and custom.image_size == 48
    assert spec_size.mean == pytest.approx((0.485, 0.456, 0.406)) and spec_size.image_size == 48
    assert own_size.image_size == 64
    assert native.image_size == 224  # timm's pretrained input size when the spec sets none


def test_model_facts_measure_size_and_latency() -> None:
    model = build_model(
        "mobilenetv2_035",
        {"pretrained": False, "freeze": "backbone"},
        num_classes=3,
        image_size=16,
    )
    facts = model_facts(model, image_size=16, device="cpu")
    assert facts["params_total"] == _numel(model)
    assert facts["params_trainable"] == 1280 * 3 + 3
    assert 4 * facts["params_total"] / 1e6 < facts["weights_mb"] < 4 * facts["params_total"] / 1e6 * 1.3
    assert facts["latency_ms"] > 0
    assert model.training  # measuring left the mode as it was


# --------------------------------------------------------------------------- offline


def _study_spec(tmp: Path, models: dict[str, Any], **overrides: Any) -> Path:
    return write_spec(tmp, digits_spec_dict(models=models, **overrides))


def test_pretrained_true_with_empty_cache_stops_before_trial_1(in_tmp: Path, hub_cache: Path) -> None:
    import timm  # noqa: F401 - imported up front: the limit is on the check, not on Python's imports

    models = {"custom_cnn": {"depth": 2}, "resnet18": {"pretrained": True}, "efficientnet_b0": {}}
    path = _study_spec(in_tmp, models)
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["study", str(path)])
    seconds = time.perf_counter() - start

    assert result.exit_code == 2, result.output
    assert seconds < 5
    text = " ".join(result.output.split())
    assert "Traceback" not in text
    assert "pretrained weights for resnet18, efficientnet_b0 are not in the local cache" in text
    assert "autocnn weights fetch resnet18 efficientnet_b0" in text
    assert ".safetensors / .pth file" in text
    assert not (in_tmp / "mlruns").exists() and not (in_tmp / "digits-test.optuna.db").exists()


def test_building_a_backbone_whose_weights_vanished_says_how_to_get_them(hub_cache: Path) -> None:
    """The check passed, then the cache was emptied: the build itself fails with the same advice."""
    with pytest.raises(WeightsError, match=r"^resnet18: .*autocnn weights fetch resnet18"):
        build_model("resnet18", {"pretrained": True}, num_classes=N_CLASSES, image_size=32)


def test_cached_weights_are_found_and_loaded_offline(hub_cache: Path) -> None:
    """The other side of the check: weights in the hub cache pass it and load with no network."""
    import timm
    from timm.models import get_pretrained_cfg

    state = timm.create_model("resnet18").state_dict()
    _fill_hub_cache(hub_cache, get_pretrained_cfg("resnet18").hf_hub_id, state)
    assert cached_weights("resnet18") is not None
    assert cached_weights("efficientnet_b0") is None
    check_backbones(parse_spec(digits_spec_dict(models={"resnet18": {"pretrained": True}})).models)

    model = build_model("resnet18", {"pretrained": True}, num_classes=N_CLASSES, image_size=32)
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"])
    listed = CliRunner().invoke(app, ["weights", "list"])
    assert listed.exit_code == 0 and "resnet18.a1_in1k" in listed.output


def test_model_without_pretrained_weights_names_relatives(hub_cache: Path) -> None:
    spec = parse_spec(digits_spec_dict(models={"mobilenetv2_035": {"pretrained": True}}))
    with pytest.raises(
        SpecError,
        match=r"models\.mobilenetv2_035\.pretrained: timm has no pretrained .*mobilenetv2_050",
    ):
        check_backbones(spec.models)


# --------------------------------------------------------------------------- names and spec keys


def test_validate_suggests_the_timm_name_for_a_typo(tmp_path: Path) -> None:
    path = _study_spec(tmp_path, {"custom_cnn": {}, "resnt50": {"pretrained": False}})
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "models.resnt50: unknown model 'resnt50'" in result.output
    assert "did you mean 'resnet50'" in result.output


def test_unknown_key_inside_a_backbone_names_its_path() -> None:
    with pytest.raises(SpecError, match=r"models\.resnet50\.head\.hiden: unknown key.*did you mean 'hidden'"):
        parse_spec(digits_spec_dict(models={"resnet50": {"head": {"hiden": 64}}}))
    with pytest.raises(SpecError, match=r"models\.resnet50\.dropout: with a head, set head\.dropout"):
        parse_spec(digits_spec_dict(models={"resnet50": {"head": {"hidden": 64}, "dropout": 0.2}}))


def test_issue_example_validates_with_pretrained_false(tmp_path: Path) -> None:
    from autocnn.search.checks import check_spec

    models = {
        "custom_cnn": {
            "depth": {"low": 2, "high": 3},
            "width": {"choices": [16, 32]},
            "dropout": {"low": 0.1, "high": 0.5},
        },
        "resnet50": {
            "pretrained": False,
            "freeze": {"choices": ["backbone", "none"]},
            "head": {"hidden": 256, "dropout": {"low": 0.2, "high": 0.6}},
        },
        "efficientnet_b0": {
            "pretrained": False,
            "freeze": {"choices": ["backbone", "partial", "none"]},
            "unfreeze_last": {"low": 1, "high": 3},
        },
        "mobilenetv2_035": {
            "pretrained": False,
            "backbone_lr_mult": {"low": 0.01, "high": 1.0, "log": True},
        },
    }
    report = check_spec(parse_spec(digits_spec_dict(models=models)))
    names = {row.name: row.distribution for row in report.params}
    assert names["models.resnet50.head.dropout"] == "float uniform"
    assert names["models.efficientnet_b0.unfreeze_last"] == "int uniform"
    assert names["models.mobilenetv2_035.backbone_lr_mult"] == "float log-uniform"


# --------------------------------------------------------------------------- a short study


@pytest.mark.slow
def test_study_mixing_custom_cnn_and_two_backbones_logs_their_facts(in_tmp: Path) -> None:
    import optuna
    from mlflow import MlflowClient

    from autocnn.search.options import StudyOptions
    from autocnn.search.storage import storage_url
    from autocnn.search.study import run_study
    from autocnn.spec.load import load_spec
    from autocnn.tracking.tracker import default_tracking_uri

    models = {
        "custom_cnn": {"depth": 2, "width": 8},
        "resnet18": {"pretrained": False, "freeze": "none", "backbone_lr_mult": 0.5},
        "mobilenetv2_035": {"pretrained": False, "freeze": "backbone", "head": {"hidden": 16}},
    }
    # fp32: the test is about the facts each family logs. In one full-suite run a trial of this study
    # was pruned before its first epoch ended (cause not pinned down; bf16 autocast of random weights
    # at 8 px is the suspect), so the precision is taken out of play.
    train = {"epochs": 1, "batch_size": 128, "lr": 1e-3, "precision": "fp32"}
    data = {"image_size": 8}  # the digits' own size: the backbones run, cheaply
    path = _study_spec(in_tmp, models, train=train, study={"trials": 3}, data=data)
    spec = load_spec(path)
    # Each model gets one trial: queue them so the test does not depend on the sampler's luck.
    study = optuna.create_study(study_name=spec.name, storage=storage_url(spec), direction="maximize")
    for name in models:
        study.enqueue_trial({"model": name})

    result = run_study(spec, StudyOptions())
    assert result.counts["COMPLETE"] == 3, result

    client = MlflowClient(default_tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id], "tags.`autocnn.role` = 'trial'")
    facts = {r.data.params["model"]: (r.data.metrics, r.data.tags) for r in runs}
    assert set(facts) == set(models)
    for metrics, _ in facts.values():
        assert metrics["params_total"] >= metrics["params_trainable"] > 0
        assert metrics["weights_mb"] > 0 and metrics["latency_ms"] > 0
    resnet, mobilenet = facts["resnet18"], facts["mobilenetv2_035"]
    assert resnet[0]["params_total"] == resnet[0]["params_trainable"] == 11_181_642
    assert resnet[0]["weights_mb"] > 40
    assert mobilenet[0]["params_trainable"] == (1280 * 16 + 16) + (16 * 10 + 10)
    assert (resnet[1]["autocnn.freeze"], mobilenet[1]["autocnn.freeze"]) == ("none", "backbone")
    assert facts["custom_cnn"][1]["autocnn.freeze"] == "none"


def test_20classes_backbones_exist_and_only_lack_cached_weights(hub_cache: Path) -> None:
    """The shipped comparison names real timm models that all have pretrained weights."""
    from autocnn.spec.load import load_spec
    from tests.conftest import REPO

    with pytest.raises(WeightsError, match=r"autocnn weights fetch resnet50 efficientnet_b0 mobilenetv2_050`"):
        check_backbones(load_spec(REPO / "studies" / "20classes.yaml").models)


def test_model_facts_measure_each_architecture_once_per_study() -> None:
    latencies: dict[tuple, float] = {}

    def cnn(width: int, dropout: float) -> torch.nn.Module:
        return build_model("custom_cnn", {"depth": 2, "width": width, "dropout": dropout}, num_classes=3, image_size=16)

    first = model_facts(cnn(8, 0.1), image_size=16, device="cpu", latencies=latencies)
    again = model_facts(cnn(8, 0.4), image_size=16, device="cpu", latencies=latencies)  # same forward pass
    assert len(latencies) == 1 and again["latency_ms"] == first["latency_ms"] > 0
    wider = model_facts(cnn(16, 0.1), image_size=16, device="cpu", latencies=latencies)
    assert len(latencies) == 2 and wider["params_total"] > first["params_total"]
    model_facts(cnn(8, 0.1), image_size=32, device="cpu", latencies=latencies)  # other input size
    assert len(latencies) == 3


def test_a_weight_file_that_cannot_be_read_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autocnn.models.hub import weight_file_problem

    file = tmp_path / "resnet18.pt"
    file.write_bytes(b"weights")
    assert weight_file_problem(file, path="models.resnet18") is None
    assert "weight file not found" in (weight_file_problem(tmp_path / "no.pt", path="models.resnet18") or "")

    def refused(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refused)  # root reads anything: stand in for another user
    problem = weight_file_problem(file, path="models.resnet18") or ""
    assert problem.startswith("models.resnet18.pretrained: cannot read weight file") and "Permission denied" in problem
