"""Augmentation: every name builds, seeds reproduce, validation stays clean, MLflow shows it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import albumentations as A
import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.data.arrays import Split
from autocnn.models.catalog import Preprocess
from autocnn.search.study import run_study
from autocnn.spec.load import load_spec
from autocnn.spec.schema import AugmentSpace
from autocnn.training.augment import (
    AUGMENTS,
    AugmentedBatches,
    augment_batch,
    batch_seed,
    build_train_transform,
    describe,
)
from autocnn.training.config import AugmentConfig
from autocnn.training.loop import TensorBatches
from tests.conftest import digits_spec_dict, write_spec

# A strong value per name: probabilities at 1 and large magnitudes, so each op visibly acts.
STRONG: dict[str, float] = {
    "hflip": 1.0,
    "vflip": 1.0,
    "rotate": 45.0,
    "shift_scale": 0.3,
    "random_resized_crop": 0.3,
    "color_jitter": 0.5,
    "gamma": 1.0,
    "blur": 1.0,
    "noise": 1.0,
    "cutout": 1.0,
}
# Everything a study can sample at once (the 20classes block at its upper ends, plus the rest).
FULL: dict[str, Any] = {
    "enabled": True,
    **{k: min(v, 0.5) for k, v in STRONG.items()},
    "rotate": 30.0,
}


def images(n: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random uint8 images: asymmetric, so every geometric op changes them."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def split(n: int = 150, size: int = 16) -> Split:
    return Split(images(n, size), np.arange(n, dtype=np.int64) % 10)


def test_spec_names_are_exactly_the_builders() -> None:
    """Every key but `enabled` and `cached_views` (how many views autocnn.training.features caches) is an op."""
    assert set(AugmentSpace.model_fields) - {"enabled", "cached_views"} == set(AUGMENTS) == set(STRONG)


@pytest.mark.parametrize("name", list(AUGMENTS))
def test_every_supported_name_builds_and_acts_on_uint8(name: str) -> None:
    pipeline = build_train_transform({"enabled": True, name: STRONG[name]}, image_size=32, seed=0)
    assert pipeline is not None and len(pipeline.transforms) == 1
    batch = images()
    out = augment_batch(pipeline, batch, seed=1)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    assert not np.array_equal(out, batch)
    assert build_train_transform({name: AugmentSpace.model_fields[name].default}, image_size=32, seed=0) is None


def test_disabled_or_all_off_builds_nothing() -> None:
    assert build_train_transform({}, image_size=32, seed=0) is None
    assert build_train_transform({**FULL, "enabled": False}, image_size=32, seed=0) is None
    off = {name: AugmentSpace.model_fields[name].default for name in AUGMENTS}
    assert build_train_transform({"enabled": True, **off}, image_size=32, seed=0) is None


def test_a_1x_argument_name_fails_instead_of_being_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """albumentations drops unknown (1.x) arguments with a warning; our pipeline refuses them."""
    monkeypatch.setitem(AUGMENTS, "cutout", lambda v, _size: A.CoarseDropout(max_holes=4, p=v["cutout"]))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="max_holes"):
        build_train_transform({"cutout": 0.5}, image_size=32, seed=0)


def test_serialised_pipeline_round_trips_and_reproduces_the_images() -> None:
    pipeline = build_train_transform(FULL, image_size=32, seed=0)
    assert pipeline is not None
    data = describe(pipeline)
    rebuilt = A.from_dict(json.loads(json.dumps(data)))
    assert A.to_dict(rebuilt) == data
    names = [t["__class_fullname__"] for t in data["transform"]["transforms"]]
    assert len(names) == len(set(AUGMENTS.values())) == len(AUGMENTS) - 1  # one Affine for two
    # The logged seed plus the JSON is enough to get the same pictures back.
    assert np.array_equal(augment_batch(rebuilt, images(), seed=7), augment_batch(pipeline, images(), seed=7))


def test_ops_with_equal_probability_fire_independently() -> None:
    """Compose.set_random_seed seeds every op alike, so hflip and vflip would always coincide."""
    pipeline = build_train_transform({"hflip": 0.5, "vflip": 0.5}, image_size=8, seed=0)
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    outcomes = set()
    for i in range(40):
        out = augment_batch(pipeline, image[None], seed=i)[0]
        outcomes.add(
            (
                np.array_equal(out[:, ::-1], image) or np.array_equal(out[::-1, ::-1], image),
                np.array_equal(out[::-1], image) or np.array_equal(out[::-1, ::-1], image),
            )
        )
    assert outcomes == {(False, False), (True, False), (False, True), (True, True)}


def batches(seed: int, *, workers: int = 0, epochs: int = 2, pipeline: Any = "full") -> list[tuple[torch.Tensor, ...]]:
    if pipeline == "full":
        pipeline = build_train_transform(FULL, image_size=16, seed=seed)
    source = AugmentedBatches(split(), Preprocess(16), pipeline, batch_size=32, seed=seed, num_workers=workers)
    return epochs_of(source, epochs)


def epochs_of(source: Any, epochs: int) -> list[tuple[torch.Tensor, ...]]:
    """What the Trainer draws: it sets the epoch before each pass."""
    out = []
    for epoch in range(epochs):
        source.set_epoch(epoch)
        out += list(source)
    return out


def same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b, strict=True)
    )


def test_same_seed_gives_identical_augmented_batches_with_or_without_workers() -> None:
    first = batches(3)
    assert same(first, batches(3))
    assert same(first, batches(3, workers=2))  # workers neither clone nor change the stream
    assert not same(first, batches(4))
    x, _ = first[0]
    assert (
        x.dtype == torch.float32 and x.shape == (32, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)
    )


def test_augmentation_differs_per_epoch_and_per_batch() -> None:
    pipeline = build_train_transform(FULL, image_size=16, seed=0)
    same_images = images(32, 16)
    by_key = [augment_batch(pipeline, same_images, seed=batch_seed(0, e, b)) for e, b in ((0, 0), (1, 0), (0, 1))]
    assert not np.array_equal(by_key[0], by_key[1]) and not np.array_equal(by_key[0], by_key[2])


def test_without_a_pipeline_the_batches_are_tensor_batches() -> None:
    plain = TensorBatches(split(), Preprocess(16), batch_size=32, shuffle=True, seed=5)
    assert same(batches(5, pipeline=None), epochs_of(plain, 2))


# --------------------------------------------------------------------------- in a study


def trial_run(tracking_uri: str, experiment: str) -> Any:
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`autocnn.role` = 'trial'")
    return client, run


@pytest.mark.slow
def test_enabled_trials_log_pipeline_and_grid_disabled_ones_nothing(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autocnn.training.loop import Trainer

    seen: dict[str, Any] = {}
    real_fit = Trainer.fit

    def spy_fit(self: Trainer, train: Any, val: Any) -> Any:
        seen.update(train=train, val=val)
        return real_fit(self, train, val)

    monkeypatch.setattr(Trainer, "fit", spy_fit)
    small = {
        "study": {"trials": 1, "pruner": "none"},
        "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3},
    }
    on = digits_spec_dict(name="aug-on", augment={"rotate": 20, "hflip": 1.0, "cutout": 1.0}, **small)
    off = digits_spec_dict(name="aug-off", augment={"enabled": False, "rotate": {"low": 0, "high": 20}}, **small)

    result = run_study(load_spec(write_spec(in_tmp / "studies", on, "on.yaml")))
    client, run = trial_run(result.tracking_uri, "aug-on")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"augment.json", "augment_grid.png"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "augment.json", str(in_tmp)))
    pipeline = A.from_dict(json.loads(local.read_text()))
    assert [type(t).__name__ for t in pipeline.transforms] == [
        "Affine",
        "HorizontalFlip",
        "CoarseDropout",
    ]
    grid = Path(client.download_artifacts(run.info.run_id, "augment_grid.png", str(in_tmp)))
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.data.tags["autocnn.augment_seed"] == "0"
    assert run.data.params["augment.rotate"] == "20.0"

    # Training saw augmented batches; validation saw the plain images, the same on every pass.
    assert isinstance(seen["train"], AugmentedBatches)
    val = seen["val"]
    data = load_spec(in_tmp / "studies" / "on.yaml")
    first, second = list(val), list(val)
    assert same(first, second)
    raw = torch.cat([x for x, _ in first])
    from autocnn.data.cache import DataCache

    val_images = DataCache(data.data, seed=data.seed).get().val.images
    expected = (torch.from_numpy(val_images).permute(0, 3, 1, 2).float() - 127.5) / 127.5
    assert torch.allclose(raw, expected, atol=1e-6)

    result = run_study(load_spec(write_spec(in_tmp / "studies", off, "off.yaml")))
    client, run = trial_run(result.tracking_uri, "aug-off")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not {"augment.json", "augment_grid.png"} & artifacts and "config.yaml" in artifacts
    assert "autocnn.augment_seed" not in run.data.tags
    assert run.data.params["augment.enabled"] == "False" and "augment.rotate" not in run.data.params
    assert isinstance(seen["train"], TensorBatches)


def test_unknown_name_exits_2_and_lists_the_supported_ones(tmp_path: Path) -> None:
    path = write_spec(tmp_path, digits_spec_dict(augment={"rotat": 10}))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "augment.rotat: unknown key; expected one of: enabled, " in result.output
    assert all(name in result.output for name in AUGMENTS)
    assert "(did you mean 'rotate'?)" in result.output


def test_trial_and_finalize_retrain_share_the_augmented_batches() -> None:
    from autocnn.training.assembly import train_batches

    config = {**FULL, "vflip": 0.0}
    batches, pipeline = train_batches(
        AugmentConfig(**config), split(), Preprocess(16), batch_size=32, seed=3, device=torch.device("cpu")
    )
    assert isinstance(batches, AugmentedBatches) and pipeline is not None
    direct = AugmentedBatches(
        split(),
        Preprocess(16),
        build_train_transform(config, image_size=16, seed=3),
        batch_size=32,
        seed=3,
    )
    assert same(epochs_of(batches, 2), epochs_of(direct, 2))
    plain, none = train_batches(
        AugmentConfig(**{**config, "enabled": False}),
        split(),
        Preprocess(16),
        batch_size=32,
        seed=3,
        device=torch.device("cpu"),
    )
    assert isinstance(plain, TensorBatches) and none is None
