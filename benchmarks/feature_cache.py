"""Item 7: frozen backbones on cached features against the full frozen path.

Two measurements. Epochs: one frozen-backbone configuration (resnet50 at 96 px on a generated
2,000-image folder by default) trained by autocnn's own trial assembly on both paths, in this
process, alternating: the full path pushes every image through the frozen backbone each epoch,
the cached path trains the head on features computed once (that one-off cost is reported beside
it). Studies: the same frozen-backbone study (lr searched, no pruning, every trial at full
length) run by `autocnn study` in a fresh process with `study.feature_cache: true` and `false`,
start-up, MLflow and the best model's logging included.

Weights are random, saved to a local file: the speed does not depend on what the weights are,
and nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.machine import autocnn_command
from benchmarks.results import Item, Row
from benchmarks.specs import write_spec
from benchmarks.synthetic import write_class_folders
from benchmarks.timing import median, ratio, settle, timed

TARGET_EPOCH_SPEEDUP = 20.0  # cached epoch over full frozen epoch


@dataclass(frozen=True)
class FeatureCacheCase:
    """What item 7 measures: a backbone at a size on a generated folder, and the study's size."""

    backbone: str = "resnet50"
    image_size: int = 96
    images: int = 2000
    classes: int = 10
    full_epochs: int = 2  # timed epochs of the full path (each one is a pass of the backbone)
    cached_epochs: int = 5
    study_backbone: str = "resnet50"
    study_image_size: int = 96
    study_images: int = 2000
    study_trials: int = 20
    study_epochs: int = 3


def save_random_weights(backbone: str, file: Path) -> Path:
    """A backbone's random weights as a local safetensors file: the `pretrained` a spec names."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    file.parent.mkdir(parents=True, exist_ok=True)
    state = timm.create_model(backbone).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    return file


def frozen_study_raw(
    name: str, *, backbone: str, weights: Path, image_size: int, trials: int, epochs: int, cache: bool
) -> dict[str, Any]:
    """A frozen-backbone study over the generated folder `images/` beside the spec; lr searched."""
    return {
        "name": name,
        "seed": 0,
        "data": {
            "source": "imagefolder",
            "root": "images",
            "image_size": image_size,
            "split": {"val": 0.2, "test": 0.0},
        },
        "study": {
            "trials": trials,
            "pruner": "none",
            "sampler": "random",
            "defaults": False,
            "feature_cache": cache,
        },
        "train": {"epochs": epochs, "batch_size": 64, "lr": {"low": 1e-3, "high": 3e-2, "log": True}},
        # The head starts where timm put it on both paths: the item times the head's epochs and the
        # studies, not how a head starts (a probe_first fit needs the cache, so only one path has it).
        "models": {backbone: {"pretrained": str(weights), "freeze": "backbone", "probe_first": False}},
    }


def prepare_folder(folder: Path, *, images: int, size: int, classes: int) -> Path:
    if not (folder / "images").is_dir():
        write_class_folders(folder / "images", images, size, classes)
    return folder


def epoch_seconds(spec_path: Path, *, cached: bool, epochs: int) -> dict[str, Any]:
    """One configuration trained `epochs` epochs on one path: every epoch's seconds, the features'
    one-off seconds (cached path) and the best validation accuracy."""
    from autocnn.data.cache import DataCache
    from autocnn.search.space import config_from_params, study_settings
    from autocnn.spec.load import load_spec
    from autocnn.training.assembly import assemble_trial, preprocessing, train_settings, trial_seeds
    from autocnn.training.features import FeatureCache

    spec = load_spec(spec_path)
    config = config_from_params(spec, {"model": next(iter(spec.models.spaces())), "train.lr": 1e-2})
    pre = preprocessing(study_settings(spec), config)
    data = DataCache(spec.data, seed=spec.seed).get(pre.image_size)
    budget = {"epochs": epochs, "patience": 0, "steps_per_epoch": len(data.train) // config.train.batch_size}
    settings = train_settings(study_settings(spec), config, budget, n_val=len(data.val))
    start = time.perf_counter()
    trial = assemble_trial(
        study_settings(spec),
        config,
        data,
        settings,
        seeds=trial_seeds(study_settings(spec), 0),
        pre=pre,
        features=FeatureCache(None) if cached else None,
    )
    assembled_s = time.perf_counter() - start
    seconds = [m.epoch_seconds for m in trial.trainer.fit(trial.train, trial.val)]
    return {
        "path": "cached" if cached else "full",
        "epoch_seconds": seconds,
        "assemble_seconds": assembled_s,  # the cached path computes its features here
        "best_val_accuracy": float(trial.trainer.best_value),
        "source": trial.path.source if trial.path is not None else "",
    }


def time_study(folder: Path, raw: dict[str, Any]) -> dict[str, float]:
    """One `autocnn study` from a fresh process: wall seconds and trials done."""
    spec = write_spec(folder, raw)
    start = time.perf_counter()
    subprocess.run([*autocnn_command(), "study", str(spec)], cwd=folder, check=True, capture_output=True)
    return {"seconds": time.perf_counter() - start, "trials": raw["study"]["trials"]}


def measure_epochs(work: Path, case: FeatureCacheCase) -> dict[str, Any]:
    folder = prepare_folder(work / "epochs", images=case.images, size=case.image_size, classes=case.classes)
    weights = save_random_weights(case.backbone, work / "weights" / f"{case.backbone}.safetensors")
    raw = frozen_study_raw(
        "epochs", backbone=case.backbone, weights=weights, image_size=case.image_size, trials=1, epochs=1, cache=True
    )
    spec = write_spec(folder, raw)
    settle()
    full = epoch_seconds(spec, cached=False, epochs=case.full_epochs)
    settle()
    cached = epoch_seconds(spec, cached=True, epochs=case.cached_epochs)
    return {"full": full, "cached": cached}


def measure_studies(work: Path, case: FeatureCacheCase) -> dict[str, dict[str, float]]:
    """The same study with the cache and without, each in a fresh folder (features computed once
    in the cached run), the cached one first and the other after."""
    weights = save_random_weights(case.study_backbone, work / "weights" / f"{case.study_backbone}-study.safetensors")
    runs = {}
    for cache in (True, False):
        key = "cache" if cache else "no_cache"
        folder = prepare_folder(
            work / f"study-{key}", images=case.study_images, size=case.study_image_size, classes=case.classes
        )
        raw = frozen_study_raw(
            f"frozen-{key}",
            backbone=case.study_backbone,
            weights=weights,
            image_size=case.study_image_size,
            trials=case.study_trials,
            epochs=case.study_epochs,
            cache=cache,
        )
        settle()
        runs[key] = time_study(folder, raw)
    return runs


def measure_feature_cache(work: Path, case: FeatureCacheCase) -> Item:
    item = Item(7, "Frozen backbones: head on cached features vs the full frozen path")
    with timed(item):
        epochs = measure_epochs(work, case)
        studies = measure_studies(work, case)
    full, cached = epochs["full"], epochs["cached"]
    full_epoch, cached_epoch = median(full["epoch_seconds"]), median(cached["epoch_seconds"])
    speedup = ratio(full_epoch, cached_epoch)
    with_cache, without = studies["cache"]["seconds"], studies["no_cache"]["seconds"]
    what = f"{case.backbone} @ {case.image_size} px, {case.images:,} images"
    study = f"{case.study_trials}-trial frozen {case.study_backbone} study @ {case.study_image_size} px, {case.study_images:,} images, {case.study_epochs} epochs"
    item.rows = [
        Row(f"{what}: full frozen path, s/epoch", f"{full_epoch:.2f}"),
        Row(f"{what}: head on cached features, s/epoch", f"{cached_epoch:.4f}"),
        Row(
            "**epoch speed-up, cached / full**",
            f"{speedup:.0f}x",
            f">= {TARGET_EPOCH_SPEEDUP:.0f}x",
            speedup >= TARGET_EPOCH_SPEEDUP,
        ),
        Row(f"{what}: features computed once (train + val), s", f"{cached['assemble_seconds']:.1f}"),
        Row(
            "best val accuracy: full path, cached path (same config and seeds)",
            f"{full['best_val_accuracy']:.4f}, {cached['best_val_accuracy']:.4f}",
        ),
        Row(f"{study}: wall s without the cache", f"{without:.0f}"),
        Row(f"{study}: wall s with the cache", f"{with_cache:.0f}"),
        Row("**study speed-up with the cache**", f"{ratio(without, with_cache):.1f}x"),
    ]
    item.notes = [
        f"Epochs: one configuration (lr 1e-2, batch 64, the spec's precision) built by autocnn's trial assembly, "
        f"{case.full_epochs} epochs on the full path, then {case.cached_epochs} on the cached path; figures are "
        "medians of the epochs' own seconds (training and validation). The cached path's features were computed "
        "once before its first epoch (the row below it), in the trial's precision, as the full path runs the "
        "frozen backbone every epoch. Validation accuracy after so few epochs is noisy; the paths are compared "
        "epoch by epoch in tests/test_features.py.",
        "Studies: `autocnn study` in a fresh process each, random sampler over lr, no pruning (every trial trains "
        "all its epochs), start-up, MLflow logging and the best model's logging included; the cached run computes "
        "the features once in its first trial and writes them under `.autocnn/<study>/features/`.",
    ]
    item.raw = {"case": case.__dict__, "epochs": epochs, "studies": studies}
    return item
