"""Item 2: can the augmenting loader keep up with training?

Batches from the heaviest augmentation studies/20classes.yaml samples, against the images/s the
fastest 20classes custom CNN trains at, both at 96 px over the same synthetic images. Both sides
are built by autocnn.training.assembly, as a study's trial builds them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from benchmarks.results import Item, Row
from benchmarks.specs import heaviest_augment
from benchmarks.synthetic import synthetic_images
from benchmarks.timing import alternated, median, paired_ratio, sync, timed

if TYPE_CHECKING:
    from autocnn.data.arrays import Dataset
    from autocnn.spec.schema import Spec
    from autocnn.training.config import TrialConfig

SIZE, BATCH, CLASSES = 96, 32, 20
FASTEST_CNN = {"depth": 4, "width": 32}  # the smallest custom CNN studies/20classes.yaml samples
TARGET_TIMES = 3  # the loader must outpace training this many times over
WARM_UP_STEPS = 2


def pipeline_spec(augment: dict[str, Any]) -> Spec:
    """A spec whose every value is fixed: the model, training settings and augmentation measured."""
    from autocnn.spec.load import parse_spec

    return parse_spec(
        {
            "name": "data-pipeline",
            "data": {"source": "digits", "image_size": SIZE},
            "train": {"epochs": 2, "batch_size": BATCH, "lr": 1e-3, "weight_decay": 1e-4},
            "models": {"custom_cnn": FASTEST_CNN},
            "augment": augment,
        }
    )


def synthetic_dataset(n: int) -> Dataset:
    """`n` synthetic 96 px images of 20 classes; validation reuses them, as nothing is validated here."""
    from autocnn.data.arrays import Dataset, Split

    images, labels = synthetic_images(n, SIZE, CLASSES)
    split = Split(images, labels)
    return Dataset([f"class_{k:02d}" for k in range(CLASSES)], split, split, None)


def measure_data_pipeline(*, images: int, repeats: int) -> Item:
    """Item 2: loader and training take turns, `repeats` times; the ratio pairs each turn's two runs."""
    from autocnn.search.space import config_from_params
    from autocnn.training.config import AugmentConfig
    from autocnn.training.loop import pick_device

    item = Item(2, "Data pipeline: augmenting loader vs what training consumes (96 px)")
    device = pick_device()
    block = heaviest_augment()
    spec = pipeline_spec(block)
    augmented = config_from_params(spec, {"model": "custom_cnn"})
    plain = dataclasses.replace(augmented, augment=AugmentConfig())
    data = synthetic_dataset(images)
    loader_runs: list[float] = []
    train_runs: list[float] = []
    with timed(item):
        for r in range(repeats):
            for side in alternated(["loader", "train"], r):
                if side == "loader":
                    loader_runs.append(loader_images_per_s(spec, augmented, data, seed=r, device=device))
                else:
                    train_runs.append(training_images_per_s(spec, plain, data, seed=r, device=device))
    item.raw = {
        "loader_images_per_s": loader_runs,
        "train_images_per_s": train_runs,
        "augment": block,
        "num_workers": loader_workers(),
    }
    item.rows += pipeline_rows(loader_runs, train_runs)
    item.notes += pipeline_notes(block, n=len(data.train), repeats=repeats)
    return item


def loader_workers() -> int:
    from autocnn.training import augment

    return augment.N_WORKERS


def loader_images_per_s(spec: Spec, config: TrialConfig, data: Dataset, *, seed: int, device: Any) -> float:
    """Augmented, normalised batches as a trial's training receives them, with no training."""
    from autocnn.search.space import study_settings
    from autocnn.training.assembly import preprocessing, train_batches

    batches, _ = train_batches(
        config.augment,
        data.train,
        preprocessing(study_settings(spec), config),
        batch_size=BATCH,
        seed=seed,
        device=device,
    )
    it = iter(batches)
    next(it)  # workers start outside the clock
    seen, start = 0, time.perf_counter()
    for _, y in it:
        seen += len(y)
    sync(device)
    return seen / (time.perf_counter() - start)


def training_images_per_s(spec: Spec, config: TrialConfig, data: Dataset, *, seed: int, device: Any) -> float:
    """One epoch of the assembled trial's Trainer over un-augmented batches, after a short warm-up."""
    from autocnn.search.space import study_settings
    from autocnn.spec.objectives import primary
    from autocnn.training.assembly import Seeds, assemble_trial
    from autocnn.training.loop import TrainSettings

    settings = TrainSettings.from_trial(config.train, primary(spec))
    trial = assemble_trial(study_settings(spec), config, data, settings, seeds=Seeds(seed, seed), device=device)
    trial.trainer.train_one_epoch(first_batches(trial.train, WARM_UP_STEPS))
    start = time.perf_counter()
    _, _, seen = trial.trainer.train_one_epoch(trial.train)
    sync(device)
    return seen / (time.perf_counter() - start)


def first_batches(batches: Iterable[Any], n: int) -> Iterator[Any]:
    for i, batch in enumerate(batches):
        if i >= n:
            return
        yield batch


def pipeline_rows(loader_runs: list[float], train_runs: list[float]) -> list[Row]:
    times = paired_ratio(loader_runs, train_runs)
    return [
        Row(f"augmenting loader img/s ({loader_workers()} workers, batch {BATCH})", f"{median(loader_runs):,.0f}"),
        Row("custom CNN training img/s (depth 4, width 32: the fastest 20classes CNN)", f"{median(train_runs):,.0f}"),
        Row("**loader / training**", f"{times:.1f}x", f">= {TARGET_TIMES}x", times >= TARGET_TIMES),
    ]


def pipeline_notes(block: dict[str, Any], *, n: int, repeats: int) -> list[str]:
    return [
        "Augment values: each searched value of the 20classes block at its most expensive end "
        f"({', '.join(f'{k}={v}' for k, v in block.items() if k != 'enabled')}).",
        f"Loader: `autocnn.training.augment.AugmentedBatches` over {n} cached uint8 images, normalised batches as training "
        "receives them. Training: `Trainer` with autocnn defaults over `TensorBatches` (no augmentation). "
        f"{repeats} alternating repeats; the ratio is the median of per-repeat ratios.",
    ]
