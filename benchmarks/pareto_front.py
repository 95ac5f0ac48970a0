"""Item 8: what a multi-objective study finds that a single-objective one does not.

Two studies on digits at 32 px search the same space (a small custom CNN against mobilenetv2_050
with random initialisation: no pretrained weights can be downloaded here): one maximises
val_accuracy, the other val_accuracy and latency_ms (ONNX Runtime, batch 1, as `predict` runs).
The figure is the front the second finds against the first's best trial: is there a model about
as accurate (within the validation noise band) and faster?
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.results import Item, Row
from benchmarks.specs import study_file, write_spec

MOBILENET = "mobilenetv2_050"
STUDY_TIMEOUT_S = 240.0  # per study: the item stays within about 8 minutes on 2 busy cores


@dataclass(frozen=True)
class Point:
    """One trial as the comparison sees it."""

    trial: int
    model: str
    accuracy: float
    latency_ms: float


def pareto_spec(
    base: dict[str, Any], *, multi: bool, trials: int, epochs: int, timeout: float = STUDY_TIMEOUT_S
) -> dict[str, Any]:
    """studies/digits.yaml at 32 px with mobilenet beside the custom CNN, no augmentation; one or
    two objectives. `timeout` only guards a slow machine: the item reports the trials reached."""
    raw = json.loads(json.dumps(base))
    raw["name"] = "pareto-multi" if multi else "pareto-single"
    raw["data"]["image_size"] = 32
    study = {k: v for k, v in raw["study"].items() if k not in ("timeout", "metric")}
    study.update({"trials": trials, "pruner": "median", "timeout": timeout})
    study["objectives"] = ["val_accuracy", "latency_ms"] if multi else ["val_accuracy"]
    raw["study"] = study
    raw["train"]["epochs"] = epochs
    raw.pop("augment", None)  # both studies alike; the run stays within minutes on 2 cores
    raw["models"] = {
        "custom_cnn": {"depth": {"low": 2, "high": 4}, "width": {"choices": [8, 16, 32]}, "dropout": 0.1},
        MOBILENET: {"pretrained": False},
    }
    return raw


def run_one(raw: dict[str, Any], folder: Path) -> tuple[Any, Any, float]:
    """Run a study; its spec, its Optuna study and the seconds it took."""
    from autocnn.search.options import StudyOptions
    from autocnn.search.storage import open_study
    from autocnn.search.study import run_study
    from autocnn.spec.load import load_spec

    spec = load_spec(write_spec(folder, raw))
    start = time.perf_counter()
    result = run_study(spec, StudyOptions(tracking_uri=f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"))
    return spec, open_study(spec, result.storage), time.perf_counter() - start


def front_points(spec: Any, study: Any) -> list[Point]:
    from autocnn.search.pareto import pareto_front
    from autocnn.spec.objectives import study_objectives

    objectives = study_objectives(spec)
    return [
        Point(t.number, str(t.params["model"]), float(t.values[0]), float(t.values[1]))
        for t in pareto_front(study, objectives)
    ]


def single_best(spec: Any, study: Any, n_classes: int) -> Point:
    """The single-objective study's best trial, its latency measured as the front's was."""
    from autocnn.models.build import build_model
    from autocnn.models.onnx import onnx_latency_ms
    from autocnn.search.results import best_trial
    from autocnn.search.space import config_from_params, study_settings
    from autocnn.spec.objectives import primary
    from autocnn.training.assembly import preprocessing

    best = best_trial(study, primary(spec))
    config = config_from_params(spec, best.params)
    size = preprocessing(study_settings(spec), config).image_size
    model = build_model(config.model, config.model_params, num_classes=n_classes, image_size=size, load_weights=False)
    return Point(best.number, config.model, float(best.value), onnx_latency_ms(model, image_size=size))


def compare(front: list[Point], single: Point, *, n_val: int) -> tuple[list[Row], Point | None]:
    """The front against the single-objective best: the fastest front trial as accurate within noise."""
    from autocnn.training.budget import within_noise

    rows = [
        Row(
            "single objective: best trial",
            f"trial {single.trial} ({single.model}): val_accuracy {single.accuracy:.4f}, {single.latency_ms:.3f} ms",
        ),
        Row(
            f"multi-objective: Pareto front ({len(front)} trials)",
            "; ".join(
                f"{p.model} {p.accuracy:.4f} / {p.latency_ms:.3f} ms" for p in sorted(front, key=lambda p: p.latency_ms)
            ),
        ),
    ]
    close = [p for p in front if within_noise("val_accuracy", p.accuracy, single.accuracy, n_val)]
    fastest = min(close, key=lambda p: p.latency_ms) if close else None
    if fastest is None:
        rows.append(Row("**front trial as accurate (within noise) and no slower**", "none", "exists", False))
        return rows, None
    speedup = single.latency_ms / fastest.latency_ms if fastest.latency_ms > 0 else float("inf")
    figure = (
        f"trial {fastest.trial} ({fastest.model}): {fastest.accuracy:.4f}, {fastest.latency_ms:.3f} ms, "
        f"{speedup:.2f}x the single-objective best's speed"
    )
    met = fastest.latency_ms <= single.latency_ms
    rows.append(Row("**front trial as accurate (within noise) and no slower**", figure, "exists", met))
    return rows, fastest


def measure_pareto(work: Path, *, trials: int, epochs: int) -> Item:
    """Item 8: a single- and a multi-objective study of the same space, then the comparison."""
    from benchmarks.timing import timed

    item = Item(8, f"Accuracy against latency on digits at 32 px ({trials} trials each, {epochs} epochs)")
    base = study_file("digits")
    with timed(item):
        single_spec, single_study, single_s = run_one(
            pareto_spec(base, multi=False, trials=trials, epochs=epochs), work / "single"
        )
        multi_spec, multi_study, multi_s = run_one(
            pareto_spec(base, multi=True, trials=trials, epochs=epochs), work / "multi"
        )
        from autocnn.data.cache import DataCache

        data = DataCache(multi_spec.data, seed=multi_spec.seed).get()
        front = front_points(multi_spec, multi_study)
        single = single_best(single_spec, single_study, data.num_classes)
    rows, fastest = compare(front, single, n_val=len(data.val))
    item.rows += rows
    pruned = sum(t.state.name == "PRUNED" for t in multi_study.trials)
    reached = f"{len(single_study.trials)} / {len(multi_study.trials)} trials"
    item.rows.append(
        Row("study time (single / multi)", f"{single_s:.0f} s / {multi_s:.0f} s, {reached}; multi pruned {pruned}")
    )
    item.notes += [
        f"Spec: studies/digits.yaml at 32 px without augmentation, custom_cnn (depth 2-4, width 8/16/32) vs {MOBILENET} with "
        "`pretrained: false` (no weights can be downloaded on this machine: random initialisation, so mobilenet "
        "trains from scratch like the custom CNN), TPE, pruner median (the dominated-curve rule in the "
        "multi-objective study), same seed. Latency: ONNX Runtime on the CPU, batch 1, median after warm-up, "
        "measured during the study for the front and afterwards, the same way, for the single-objective best.",
        "Target: the front holds a trial whose val_accuracy is within the noise band of the single-objective "
        "best's and whose latency is no higher.",
    ]
    item.raw = {
        "front": [asdict(p) for p in front],
        "single_best": asdict(single),
        "fastest_as_accurate": None if fastest is None else asdict(fastest),
        "seconds": {"single": single_s, "multi": multi_s},
        "multi_pruned": pruned,
        "n_val": len(data.val),
    }
    return item
