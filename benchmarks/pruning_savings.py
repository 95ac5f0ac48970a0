"""Item 3: how many epochs do autocnn's pruners save on digits, and at what cost in the best value?

The same seeded configurations train under pruner none, median and hyperband; the unpruned run's
learning curves are then replayed against other pruner settings (benchmarks/pruner_replay.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocnn.spec.objectives import primary
from benchmarks.pruner_replay import hyperband_spread, replay, replay_candidates, replay_shape
from benchmarks.results import Item, Row
from benchmarks.specs import study_file, write_spec
from benchmarks.timing import median, ratio, timed

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from autocnn.spec.schema import Spec

PRUNERS = ("none", "median", "hyperband")
TARGET_SHARE = 0.5  # of the unpruned run's epochs, at most ...
TARGET_GAP_PP = 0.5  # ... losing at most this much of its best value, in percentage points


def pruning_spec(base: dict[str, Any], pruner: str, *, trials: int, epochs: int) -> dict[str, Any]:
    """studies/digits.yaml with a fixed trial count and random sampler: every pruner sees the same configs."""
    raw = json.loads(json.dumps(base))
    raw["name"] = f"prune-{pruner}"
    raw["study"].update({"trials": trials, "sampler": "random", "pruner": pruner, "defaults": False})
    raw["study"].pop("timeout", None)
    raw["train"]["epochs"] = epochs
    return raw


def run_pruner(raw: dict[str, Any], folder: Path) -> tuple[Spec, list[FrozenTrial], dict[str, Any]]:
    """One study run: its spec, its trials, and what it cost (epochs, seconds) and found (best)."""
    from autocnn.search.options import StudyOptions
    from autocnn.search.storage import open_study
    from autocnn.search.study import run_study
    from autocnn.spec.load import load_spec

    spec = load_spec(write_spec(folder, raw))
    start = time.perf_counter()
    result = run_study(spec, StudyOptions(tracking_uri=f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"))
    seconds = time.perf_counter() - start
    trials = open_study(spec, result.storage).trials
    summary = {
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "best": result.best_value,
        "pruned": result.counts.get("PRUNED", 0),
        "seconds": seconds,
    }
    return spec, trials, summary


def learning_curves(trials: Sequence[FrozenTrial]) -> list[list[float]]:
    return [[t.intermediate_values[k] for k in sorted(t.intermediate_values)] for t in trials]


def gap_pp(reference: float, best: float, direction: str) -> float:
    """How far `best` falls short of the reference, in percentage points (negative: it did better)."""
    return (reference - best) * 100 * (1 if direction == "maximize" else -1)


def measure_pruning(work: Path, *, trials: int, epochs: int) -> Item:
    """Item 3: three real studies, then replays of the unpruned one's curves."""
    item = Item(3, f"Pruning savings on digits ({trials} identical trials, {epochs} epochs)")
    base = study_file("digits")
    runs: dict[str, dict[str, Any]] = {}
    params: dict[str, list[dict[str, Any]]] = {}
    curves: list[list[float]] = []
    with timed(item):
        for pruner in PRUNERS:
            raw = pruning_spec(base, pruner, trials=trials, epochs=epochs)
            spec, studied, runs[pruner] = run_pruner(raw, work / f"prune-{pruner}")
            params[pruner] = [t.params for t in studied]
            if pruner == "none":
                curves = learning_curves(studied)
    item.rows += real_run_rows(runs, spec)
    replay_rows, replays = replayed(curves, spec, reference=runs["none"])
    item.rows += replay_rows
    same = all(p == params["none"] for p in params.values())
    item.notes += pruning_notes(base, trials=trials, epochs=epochs, same=same)
    item.raw = {"runs": runs, "identical_configs": same, "curves": curves, "replays": replays}
    return item


def real_run_rows(runs: dict[str, dict[str, Any]], spec: Spec) -> list[Row]:
    direction, none = primary(spec).direction, runs["none"]
    rows = []
    for pruner, run in runs.items():
        share = ratio(run["epochs"], none["epochs"])
        gap = gap_pp(none["best"], run["best"], direction)
        figure = f"{run['epochs']} epochs ({share:.0%}), best {spec.study.metric} {run['best']:.4f}, {run['pruned']} pruned, {run['seconds']:.0f} s"
        if pruner == "none":
            rows.append(Row("pruner none (reference)", figure))
        else:
            met = share <= TARGET_SHARE and gap <= TARGET_GAP_PP
            target = f"<= {TARGET_SHARE:.0%} epochs, <= {TARGET_GAP_PP} pp"
            rows.append(Row(f"**pruner {pruner}**", f"{figure}; {gap:.2f} pp below none", target, met))
    return rows


def replayed(curves: list[list[float]], spec: Spec, *, reference: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    """Rows and raw figures for each replayed pruner, then hyperband's spread over study names."""
    direction = primary(spec).direction
    shape = replay_shape(spec)
    rows, replays = [], {}
    for label, (kind, pruner) in replay_candidates(spec, shape["n_val"]).items():
        epochs, best = replay(
            curves, pruner, name=f"prune-{kind}", direction=direction, steps_per_epoch=shape["steps_per_epoch"]
        )
        replays[label] = {"epochs": epochs, "best": best}
        rows.append(
            Row(
                f"replay: {label}",
                f"{epochs} epochs ({ratio(epochs, reference['epochs']):.0%}), "
                f"{gap_pp(reference['best'], best, direction):.2f} pp below none",
            )
        )
    spread = hyperband_spread(curves, spec, direction=direction, **shape)
    shares = sorted(ratio(e, reference["epochs"]) for e, _ in spread)
    gaps = [gap_pp(reference["best"], best, direction) for _, best in spread]
    replays["hyperband, other study names"] = [{"epochs": e, "best": best} for e, best in spread]
    rows.append(
        Row(
            f"replay: hyperband, autocnn's settings, {len(spread)} other study names",
            f"{shares[0]:.0%} / {median(shares):.0%} / {shares[-1]:.0%} of the epochs (min / median / max), "
            f"at most {max(gaps):.2f} pp below none",
        )
    )
    return rows, replays


def pruning_notes(base: dict[str, Any], *, trials: int, epochs: int, same: bool) -> list[str]:
    return [
        f"Spec: studies/digits.yaml with study.trials={trials}, train.epochs={epochs}, sampler "
        f"random (seed {base.get('seed', 0)}), study.defaults off; every pruner waits for the 60-step judge floor and "
        "cuts only beyond the validation noise band: "
        f"all three runs trained identical configs: {'yes' if same else 'NO'}. Target: median or hyperband meets both bounds.",
        "Replay rows: the none run's learning curves fed to other pruner settings in an in-memory Optuna study (no training); "
        "the first two replay autocnn's own settings and must match the real runs above.",
    ]
