"""Shared fixtures: small real data made on the fly, and specs written to tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parents[1]


def write_images(folder: Path, label: int, n: int, *, size: int = 24, suffix: str = ".png") -> list[Path]:
    """n images whose colour and stripe encode the class, so a tiny CNN can learn them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(label * 1000 + n)
    paths = []
    for i in range(n):
        img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        img[:, :, label % 3] += 150
        img[(label * 5) % size : (label * 5) % size + 4, :, :] = 255
        path = folder / f"img_{i:03d}{suffix}"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session", autouse=True)
def _mlflow_tables_from_a_template() -> Iterator[None]:
    """New MLflow SQLite stores get their tables from one migrated template (tests/mlflow_store.py)."""
    import mlflow.store.db.utils as db_utils

    from tests import mlflow_store

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(db_utils, "_initialize_tables", mlflow_store.initialize_tables)
        yield


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes x 12 PNGs in one folder per class (autocnn splits them)."""
    root = tmp_path / "images"
    for label, name in enumerate(["cat", "dog", "fox"]):
        write_images(root / name, label, 12)
    return root


def digits_spec_dict(**overrides: Any) -> dict[str, Any]:
    """The quickstart spec made small: few trials, few epochs, for tests."""
    spec: dict[str, Any] = {
        "name": "digits-test",
        "seed": 0,
        "data": {"source": "digits", "image_size": 16, "split": {"val": 0.2, "test": 0.2}},
        "study": {"trials": 2, "metric": "val_accuracy", "pruner": "median"},
        "train": {"epochs": 2, "batch_size": 64, "lr": {"low": 1e-3, "high": 5e-3, "log": True}},
        "models": {"custom_cnn": {"depth": {"low": 2, "high": 3}, "width": 16, "dropout": 0.1}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def write_spec(folder: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so ./mlruns lands there, not in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache, as on a fresh offline machine."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
