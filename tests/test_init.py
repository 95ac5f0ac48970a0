"""`autocnn init`: a spec from a folder that validates and runs, and whose choices follow the data,
the machine (the device query faked) and which pretrained weights can be had."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from autocnn.cli import init_spec as init
from autocnn.cli.app import app
from autocnn.cli.init_spec import DataProfile, Machine, Weights, choose
from autocnn.spec.load import load_spec
from tests.conftest import write_images

CPU = Machine("cpu", "", 2)
GPU = Machine("gpu", "Fake GPU", 16)


@pytest.fixture
def empty_hub(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No cached weights, and offline (the tests' HF_HUB_OFFLINE=1): only the custom CNN can run."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def _profile(
    per_class: int, *, n_classes: int = 5, size: tuple[int, int] = (300, 200), channels: int = 3
) -> DataProfile:
    counts = [per_class] * n_classes
    return DataProfile(Path("data"), [f"c{i}" for i in range(n_classes)], counts, counts, 0, False, size, channels)


def _all_weights(names: list[str]) -> Weights:
    return Weights(dict.fromkeys(names, "cached"))


def fast_cpu(_name: str, size: int) -> float:
    """A CPU on which every backbone trains 1,000 images a second at 96 px: the timed probe, faked."""
    return 1e-3 * (size / 96) ** 2


def _choices(profile: DataProfile, machine: Machine, **kw: object) -> init.Choices:
    wanted = init.BACKBONES[(machine.device, profile.regime)]
    options = {"budget_s": 1800, "flip": True, "name": "x", "root": "data", "seconds_per_image": fast_cpu, **kw}
    return choose(profile, machine, _all_weights(wanted), **options)  # type: ignore[arg-type]


def test_choices_follow_the_number_of_images_and_the_hardware() -> None:
    small_cpu = _choices(_profile(40), CPU)
    small_gpu = _choices(_profile(40), GPU)
    large_cpu = _choices(_profile(3000), CPU)
    large_gpu = _choices(_profile(3000), GPU)

    assert list(small_cpu.backbones) == ["resnet18", "mobilenetv3_large_100"]
    assert len(small_gpu.backbones) == 3 and "resnet50" in small_gpu.backbones
    assert list(large_cpu.backbones) == ["mobilenetv3_large_100", "efficientnet_b0"]
    # small data trains the head (and the last stages); large data fine-tunes everything
    assert small_cpu.backbones["resnet18"]["freeze"] == {"choices": ["backbone", "partial"]}
    assert large_gpu.backbones["convnext_tiny"]["freeze"] == "none"
    # input size: the hardware's limit, and the memory the decoded images take
    assert (small_cpu.image_size, small_gpu.image_size) == (96, 192)
    assert _choices(_profile(30_000), GPU).image_size == 64  # 150,000 x 64 x 64 x 3 bytes fit in 3 GB
    assert small_gpu.custom_cnn["width"] == {"choices": [32, 64, 128]}
    assert small_cpu.batch_size == {"choices": [16, 32]} and large_gpu.batch_size == {"choices": [64, 128]}
    assert small_cpu.augment["enabled"] is True and large_cpu.augment["enabled"] == {"choices": [True, False]}
    # small data freezes backbones whole: their heads train on cached augmented views, not the full path
    assert small_cpu.augment["cached_views"] == init.CACHED_VIEWS and "cached_views" not in large_cpu.augment


def test_flips_budget_imbalance_and_grayscale() -> None:
    profile = DataProfile(Path("d"), ["a", "b"], [100, 20], [100, 20], 0, False, (28, 28), 1)
    chosen = _choices(profile, CPU, flip=False, budget_s=3 * 3600)
    assert "hflip" not in chosen.augment and "color_jitter" not in chosen.augment
    assert chosen.metric == "val_macro_f1" and chosen.pruner == "hyperband" and chosen.timeout == "3h"
    assert chosen.image_size == 32 and chosen.custom_cnn["depth"] == {"low": 2, "high": 4}  # never below 32 px
    assert _choices(_profile(40), CPU).metric == "val_accuracy"


def test_offline_with_an_empty_cache_comments_the_backbones_out() -> None:
    profile = _profile(40)
    chosen = choose(profile, CPU, Weights({}, "HF_HUB_OFFLINE=1 is set"), budget_s=1800, flip=True, name="x", root="d")
    text = init.render(chosen)
    assert chosen.backbones == {}
    assert "none can be fetched now: HF_HUB_OFFLINE=1 is set" in text
    assert "autocnn weights fetch resnet18 mobilenetv3_large_100" in text
    assert "  # resnet18:" in text and "searches the custom CNN only" in text
    assert list(yaml.safe_load(text)["models"]) == ["custom_cnn"]


def test_partly_cached_weights_keep_the_cached_ones(empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("autocnn.models.hub.cached_weights", lambda name: Path("/x") if name == "resnet18" else None)
    weights = init.weights_status(["resnet18", "mobilenetv3_large_100"])
    assert weights.usable == {"resnet18": "cached"} and weights.offline == "HF_HUB_OFFLINE=1 is set"


def _fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")


def _folder(root: Path, per_class: int, size: int = 64) -> Path:
    for label, name in enumerate(["ant", "bee"]):
        write_images(root / name, label, per_class, size=size)
    return root


def test_init_on_folders_follows_their_size_and_the_device(
    tmp_path: Path, empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(init, "weights_status", _all_weights)
    timed = {"seconds_per_image": fast_cpu}
    small = init.init_spec(_folder(tmp_path / "small", 12), out=tmp_path / "s" / "small.yaml", **timed)
    medium = init.init_spec(_folder(tmp_path / "medium", 160, size=40), out=tmp_path / "s" / "medium.yaml", **timed)
    _fake_gpu(monkeypatch)
    on_gpu = init.init_spec(tmp_path / "small", out=tmp_path / "s" / "gpu.yaml", **timed)

    assert small.machine.device == "cpu" and on_gpu.machine == Machine("gpu", "Fake GPU", small.machine.cores)
    assert small.profile.per_class == [12, 12] and medium.profile.per_class == [160, 160]
    assert list(small.choices.backbones) == ["resnet18", "mobilenetv3_large_100"]
    assert list(medium.choices.backbones) == ["efficientnet_b0", "resnet18"]
    assert list(on_gpu.choices.backbones) == ["resnet50", "efficientnet_b0", "convnext_tiny"]
    assert (small.choices.image_size, medium.choices.image_size, on_gpu.choices.image_size) == (64, 32, 64)
    # each backbone at its own size: the largest the CPU budget allows, its pretrained size on a GPU
    assert [space["image_size"] for space in small.choices.backbones.values()] == [160, 160]
    assert [space["image_size"] for space in on_gpu.choices.backbones.values()] == [224, 224, 224]
    for result in (small, medium, on_gpu):
        spec = load_spec(result.path)  # every written spec is valid
        folder = "medium" if result is medium else "small"
        assert f"root: ../{folder}" in result.path.read_text()  # relative to the spec, as written
        assert Path(spec.data.root).resolve() == (tmp_path / folder).resolve()  # resolved at load
    assert "machine: GPU Fake GPU" in on_gpu.path.read_text()


def test_a_given_test_split_does_not_count_as_training_data(tmp_path: Path, empty_hub: Path) -> None:
    """40 training images per class beside a 400-per-class test set is small data: the backbones
    train their head and last stages, and are sized for 80 training images, not 880."""
    root = tmp_path / "presplit"
    for split, n in (("train", 40), ("val", 10), ("test", 400)):
        _folder(root / split, n, size=32)
    timed: list[int] = []

    def sized(name: str, size: int) -> float:
        timed.append(size)
        return fast_cpu(name, size)

    chosen = choose(
        init.inspect_data(root),
        CPU,
        _all_weights(["resnet18"]),
        budget_s=60,
        flip=True,
        name="x",
        root="d",
        seconds_per_image=sized,
    )
    assert init.inspect_data(root).per_class == [450, 450] and chosen.backbones
    assert all(space["freeze"] == {"choices": ["backbone", "partial"]} for space in chosen.backbones.values())
    # 4 trials x 10 epochs x 80 images at 1 ms/image (96 px) fit 60 s at 160 px; 880 images would not
    assert [space["image_size"] for space in chosen.backbones.values()][0] == 160


def test_init_refuses_to_overwrite_and_names_a_missing_folder(tmp_path: Path, empty_hub: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "spec.yaml"
    out.write_text("mine\n")
    result = runner.invoke(app, ["init", str(_folder(tmp_path / "d", 6)), "-o", str(out)])
    assert result.exit_code == 2 and f"error: {out}: exists" in result.output
    assert out.read_text() == "mine\n"
    result = runner.invoke(app, ["init", str(tmp_path / "nope"), "-o", str(tmp_path / "n.yaml")])
    assert result.exit_code == 2 and "data root not found" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["init", str(tmp_path / "d"), "-o", str(tmp_path / "n.yaml"), "--budget", "soon"])
    assert result.exit_code == 2 and "--budget: expected seconds" in result.output
    result = runner.invoke(app, ["init", str(tmp_path / "d"), "-o", str(tmp_path / "n.yaml"), "--budget", "0"])
    assert result.exit_code == 2 and "--budget: at least a minute, got '0'" in result.output
    assert not (tmp_path / "n.yaml").exists()


# --------------------------------------------------------------------------- pretrained backbones


def test_a_backbone_trains_at_its_pretrained_size_on_a_gpu_and_the_largest_affordable_on_a_cpu() -> None:
    def cpu(seconds_at_96: float):  # noqa: ANN202 - a fake probe
        return lambda _name, size: seconds_at_96 * (size / 96) ** 2

    budget = 1800.0  # 4 trials of 10 epochs over 600 images: 4 x 6,000 images in 30 min
    assert init.backbone_size("resnet18", GPU, n_train=600, budget_s=budget, seconds_per_image=cpu(1.0))[0] == 224
    assert init.backbone_size("resnet18", CPU, n_train=600, budget_s=budget, seconds_per_image=cpu(0.02))[0] == 160
    assert init.backbone_size("resnet18", CPU, n_train=600, budget_s=budget, seconds_per_image=cpu(0.03))[0] == 128
    assert init.backbone_size("resnet18", CPU, n_train=600, budget_s=budget, seconds_per_image=cpu(0.07))[0] == 96
    size, why = init.backbone_size("resnet18", CPU, n_train=600, budget_s=budget, seconds_per_image=cpu(1.0))
    assert size == 96 and "the smallest a pretrained net should see" in why  # never a 32 px upsampling
    assert "freeze: backbone trials take seconds" not in why  # only said where freezing whole is searched
    frozen = init.backbone_size(
        "resnet18", CPU, n_train=600, budget_s=budget, seconds_per_image=cpu(1.0), frozen_whole=True
    )
    assert "freeze: backbone trials take seconds" in frozen[1]
    # never above the size the weights were trained at (test_efficientnet: 160 px)
    assert init.pretrained_size("test_efficientnet") == 160
    assert init.backbone_size("test_efficientnet", GPU, n_train=10, budget_s=budget, seconds_per_image=cpu(0))[0] == 160


def test_a_budget_too_short_to_fine_tune_searches_the_backbone_frozen_and_starts_there() -> None:
    from autocnn.search.defaults import default_trials
    from autocnn.spec.load import parse_spec

    medium = _profile(400, n_classes=5)  # 2,000 images: fine-tuned when the budget allows it

    def slow_cpu(_name: str, size: int) -> float:  # 10 epochs over 1,400 training images at 96 px: 28 min
        return 0.12 * (size / 96) ** 2

    roomy = _choices(medium, CPU, budget_s=3 * 3600, seconds_per_image=slow_cpu)
    short = _choices(medium, CPU, budget_s=1800, seconds_per_image=slow_cpu)
    assert roomy.backbones["efficientnet_b0"]["freeze"] == {"choices": ["partial", "none"]}
    assert "cached_views" not in roomy.augment and "freeze" not in roomy.backbone_key_notes["efficientnet_b0"]
    # 1,800 s hold 1.07 fine-tuning trials at 96 px: searched frozen, as small data is
    assert short.backbones["efficientnet_b0"]["freeze"] == {"choices": ["backbone", "partial"]}
    assert short.backbones["efficientnet_b0"]["image_size"] == 96
    assert short.augment["cached_views"] == init.CACHED_VIEWS
    note = short.backbone_key_notes["efficientnet_b0"]["freeze"]
    assert "1.1 fine-tuning trials" in note
    text = init.render(short)
    assert note in text and "freeze: backbone trials take seconds" in text
    # the default trial of that spec is the seconds-long frozen one
    spec = parse_spec(yaml.safe_load(text))
    defaults = {d["model"]: d for d in default_trials(spec)}
    assert defaults["efficientnet_b0"]["models.efficientnet_b0.freeze"] == "backbone"


def _cache_weights(cache: Path, name: str) -> None:
    """`name`'s default pretrained weights laid out in the hub cache as a download leaves them."""
    import timm
    from timm.models import get_pretrained_cfg

    from tests.test_backbones import _fill_hub_cache

    state = timm.create_model(name, pretrained=False).state_dict()
    _fill_hub_cache(cache, get_pretrained_cfg(name).hf_hub_id, state)


def test_init_searches_backbones_whose_weights_are_cached_first_and_at_their_own_size(
    tmp_path: Path, empty_hub: Path
) -> None:
    _cache_weights(empty_hub, "test_efficientnet")
    folder = _folder(tmp_path / "small", 12)
    result = init.init_spec(folder, out=tmp_path / "s" / "small.yaml", seconds_per_image=fast_cpu)
    assert list(result.choices.backbones) == ["test_efficientnet"]  # the table's usual ones are not here
    text = result.path.read_text()
    assert "  test_efficientnet:" in text and "    image_size: 160" in text
    assert "weights on this machine: test_efficientnet (cached); proposed first" in text
    assert "  # resnet18:" in text  # still commented: no weights for it, and offline
    spec = load_spec(result.path)
    assert spec.models.backbones() == ["test_efficientnet"]
    assert spec.models.spaces()["test_efficientnet"].image_size == 160


def test_init_takes_a_weight_file_or_a_name_and_names_a_bad_one(tmp_path: Path, empty_hub: Path) -> None:
    import torch

    folder = _folder(tmp_path / "small", 12)
    file = tmp_path / "weights" / "lite.pth"
    file.parent.mkdir()
    import timm

    torch.save(timm.create_model("test_resnet").state_dict(), file)
    out = tmp_path / "s" / "small.yaml"
    result = init.init_spec(folder, out=out, weights=[f"test_resnet={file}"], seconds_per_image=fast_cpu)
    assert list(result.choices.backbones) == ["test_resnet"]
    assert result.choices.backbones["test_resnet"]["pretrained"] == "../weights/lite.pth"
    assert "pretrained: ../weights/lite.pth" in out.read_text()  # relative to the spec, as written
    assert Path(load_spec(out).models.spaces()["test_resnet"].pretrained).resolve() == file.resolve()
    runner = CliRunner()
    bad = runner.invoke(app, ["init", str(folder), "-o", str(tmp_path / "b.yaml"), "--weights", "resnet1800"])
    assert bad.exit_code == 2 and "--weights resnet1800: unknown model 'resnet1800'" in bad.output
    missing = runner.invoke(app, ["init", str(folder), "-o", str(tmp_path / "b.yaml"), "--weights", "resnet18=no.pth"])
    assert missing.exit_code == 2 and "--weights resnet18=no.pth: weight file not found" in missing.output
    assert "Traceback" not in bad.output + missing.output and not (tmp_path / "b.yaml").exists()


@pytest.mark.slow
def test_a_spec_from_init_validates_and_trains_the_backbone_whose_weights_are_cached(
    in_tmp: Path, empty_hub: Path
) -> None:
    _cache_weights(empty_hub, "test_efficientnet")
    _folder(in_tmp / "data" / "shapes", 12, size=24)
    runner = CliRunner()
    result = runner.invoke(app, ["init", "data/shapes", "--budget", "10m", "--no-flip"])
    assert result.exit_code == 0, result.output
    spec = in_tmp / "studies" / "shapes.yaml"
    assert "wrote studies/shapes.yaml" in result.output and spec.is_file()
    assert "hflip" not in spec.read_text() and "root: ../data/shapes" in spec.read_text()
    assert "searching: custom_cnn, test_efficientnet" in result.output
    validated = runner.invoke(app, ["validate", str(spec), "--no-probe"])
    assert validated.exit_code == 0, validated.output
    ran = runner.invoke(app, ["study", str(spec), "--trials", "2"])
    assert ran.exit_code == 0, ran.output
    finished = [line for line in ran.output.splitlines() if line.startswith("trial ")]
    assert any("test_efficientnet" in line and "COMPLETE" in line for line in finished), ran.output
