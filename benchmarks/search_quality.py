"""Is the search worth its time on the small datasets users bring? autocnn vs a fixed recipe vs random search.

Run: .venv/bin/python benchmarks/search_quality.py [--budget 5m] [--seeds 0 1] [--regimes digits-small shapes20]
     [--work DIR] [--quick]

For each regime (benchmarks/datasets.py: 20-160 images per class) and seed, three methods are
scored on the same held-out test images:

- autocnn: TPE + Hyperband over a plausible custom-CNN space, `study.timeout` = the budget, then
  `autocnn finalize` with its default options;
- random search: the same space and timeout, random sampler, no pruning, 20 epochs per trial, the
  same finalize;
- a fixed hand recipe: one 6-block CNN trained 15 epochs by autocnn's own Trainer, no search.

Targets, per regime on the mean over seeds: autocnn >= fixed recipe + 5 pp test accuracy, and
autocnn >= random search. Writes benchmarks/search_quality.json (every run) and a section of
benchmarks/results.md between its markers (the rest of that file is left as it is). --quick is a
smoke run: 45 s budgets, one seed, everything written to a temporary folder instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's autocnn
    sys.path.insert(0, str(REPO))

# ruff: noqa: E402 - the imports below need the path set-up above
from autocnn.study import SilentReporter
from benchmarks.datasets import (
    DIGITS_COUNTS,
    DIGITS_SHIFTED_COUNTS,
    MAX_TILT_DEGREES,
    REGIMES,
    SHAPES20_COUNTS,
    SHIFT_ROTATE_DEGREES,
    SIZE,
    write_imagefolder,
)
from benchmarks.machine import machine_info, quiet_like_the_cli
from benchmarks.results import SECTION_END, SECTION_START, splice_section
from benchmarks.specs import write_spec

if TYPE_CHECKING:
    from torch import nn

    from autocnn.data import Dataset
    from autocnn.spec import Spec
    from autocnn.train import Evaluation

AUTO_EPOCHS = "auto"  # autocnn's train.epochs: each trial stops on its own within a cap; --epochs N fixes it
RANDOM_EPOCHS = 20
DEFAULT_BUDGET_S = 300.0
QUICK_BUDGET_S = 45.0
TARGET_MARGIN_OVER_FIXED = 0.05
METHODS = ("fixed", "autocnn", "random")
HFLIP_REGIMES = frozenset({"shapes20"})  # digits are not mirror-symmetric; shapes and fills are

Log = Callable[[str], None]


# --------------------------------------------------------------------------- the fixed recipe

FIXED_CHANNELS = (64, 128, 256, 320, 256, 128)
FIXED_DROPOUT = 0.34
FIXED_HIDDEN = 128
FIXED_LEAK = 0.1
FIXED_EPOCHS = 15
FIXED_BATCH = 32
FIXED_LR = 1e-3
FIXED_WEIGHT_DECAY = 1e-2
FIXED_SCHEDULE = "cosine"  # autocnn's per-batch cosine decay to zero over the 15 epochs


def pooled_blocks(image_size: int, blocks: int) -> list[bool]:
    """Max-pool after a block only while the pooled map keeps >= 2 px: one pool more would leave
    1 px, where a 3x3 conv sees nothing but its centre tap. At 64 px: after blocks 1-5, not 6."""
    out, side = [], image_size
    for _ in range(blocks):
        out.append(side // 2 >= 2)
        side = side // 2 if out[-1] else side
    return out


def fixed_recipe_model(num_classes: int, image_size: int = SIZE) -> nn.Module:
    """The hand recipe a practitioner would try first: deep and wide, regularised, no search."""
    from torch import nn

    layers: list[nn.Module] = []
    channels_in = 3
    for channels, pool in zip(FIXED_CHANNELS, pooled_blocks(image_size, len(FIXED_CHANNELS)), strict=True):
        layers += [
            nn.Conv2d(channels_in, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(FIXED_LEAK),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        channels_in = channels
    head = [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(FIXED_DROPOUT),
        nn.Linear(channels_in, FIXED_HIDDEN),
        nn.LeakyReLU(FIXED_LEAK),
        nn.Linear(FIXED_HIDDEN, num_classes),
    ]
    return nn.Sequential(*layers, *head)


def accuracy(ev: Evaluation) -> float:
    return float((ev.preds == ev.labels).mean())


@dataclass(frozen=True)
class FixedOutcome:
    last_epoch_accuracy: float  # what the recipe ships: the weights training ended with
    best_val_epoch_accuracy: float
    best_val_epoch: int
    train_seconds: float


def train_fixed_recipe(data: Dataset, seed: int, log: Log) -> FixedOutcome:
    """Trained by autocnn's Trainer on autocnn's decoded images, so only the search differs."""
    import torch

    from autocnn.models import Preprocess
    from autocnn.train import TensorBatches, Trainer, TrainSettings, pick_device

    torch.manual_seed(seed)
    device = pick_device()
    pre = Preprocess(image_size=SIZE)
    train = TensorBatches(data.train, pre, batch_size=FIXED_BATCH, shuffle=True, seed=seed, device=device)
    val = TensorBatches(data.val, pre, batch_size=256, shuffle=False, device=device)
    settings = TrainSettings(
        epochs=FIXED_EPOCHS, lr=FIXED_LR, weight_decay=FIXED_WEIGHT_DECAY, scheduler=FIXED_SCHEDULE
    )
    model = fixed_recipe_model(data.num_classes)
    trainer = Trainer(model, settings, steps_per_epoch=len(train), device=device)
    started = time.perf_counter()
    for metrics in trainer.fit(train, val):
        log(f"    epoch {metrics.epoch}: val_accuracy {metrics.val_accuracy:.3f}")
    seconds = time.perf_counter() - started
    assert data.test is not None  # every regime writes a test/ folder
    test = TensorBatches(data.test, pre, batch_size=256, shuffle=False, device=device)
    last = accuracy(trainer.evaluate(test))
    trainer.restore_best()
    return FixedOutcome(last, accuracy(trainer.evaluate(test)), trainer.best_epoch, seconds)


# --------------------------------------------------------------------------- specs


def search_space(hflip: bool) -> dict[str, Any]:
    """The space a user would plausibly write for 64 px images of a few dozen per class."""
    augment: dict[str, Any] = {
        "enabled": {"choices": [True, False]},
        "rotate": {"low": 0, "high": 15},
        "shift_scale": {"low": 0.0, "high": 0.1},
    }
    if hflip:
        augment["hflip"] = 0.5
    return {
        "train": {
            "batch_size": {"choices": [32, 64]},
            "lr": {"low": 1e-4, "high": 3e-3, "log": True},
            "weight_decay": {"low": 1e-5, "high": 5e-2, "log": True},
        },
        "models": {
            "custom_cnn": {
                "depth": {"low": 3, "high": 6},
                "width": {"choices": [32, 64]},
                "dropout": {"low": 0.0, "high": 0.5},
                "activation": {"choices": ["relu", "leaky_relu"]},
            }
        },
        "augment": augment,
    }


@dataclass(frozen=True)
class SearchSettings:
    """How the two searching methods are run; identical for both apart from sampler, pruner, epochs."""

    budget_s: float
    autocnn_epochs: str | int = AUTO_EPOCHS
    trials: int | None = None  # None: no study.trials key, the timeout alone ends the study


def search_spec(regime: str, method: str, seed: int, settings: SearchSettings) -> dict[str, Any]:
    """autocnn's own choices (TPE, Hyperband, epochs auto) or the plain baseline (random, no pruning)."""
    space = search_space(hflip=regime in HFLIP_REGIMES)
    searching = method == "autocnn"
    study: dict[str, Any] = {
        "timeout": settings.budget_s,
        "metric": "val_accuracy",
        "sampler": "tpe" if searching else "random",
        "pruner": "hyperband" if searching else "none",
        "defaults": searching,  # the baseline is a plain random search, without autocnn's first trials
    }
    if settings.trials is not None:
        study["trials"] = settings.trials
    space["train"]["epochs"] = settings.autocnn_epochs if searching else RANDOM_EPOCHS
    return {
        "name": f"{regime}-{method}-s{seed}",
        "seed": seed,
        "data": {"source": "imagefolder", "root": "../data", "image_size": SIZE},
        "study": study,
        **space,
    }


def data_only_spec(root: Path) -> Spec:
    """A spec that names just the data, for reading it with autocnn's DataCache outside a study."""
    from autocnn.spec import parse_spec

    raw = {
        "name": "fixed-recipe",
        "data": {"source": "imagefolder", "root": str(root), "image_size": SIZE},
        "models": {"custom_cnn": {}},
    }
    return parse_spec(raw)


# --------------------------------------------------------------------------- runs


@dataclass
class RunRecord:
    """One method on one regime and seed; accuracies are on the test split."""

    regime: str
    method: str
    seed: int
    test_accuracy: float | None = None
    best_val_epoch_test_accuracy: float | None = None  # fixed recipe only
    trials: dict[str, int] = field(default_factory=dict)  # by Optuna state
    best_val: float | None = None
    final_trial: int | None = None  # the trial finalize shipped
    final_is_default: bool | None = None  # autocnn's enqueued default configuration, not a sampled one
    model: str | None = None
    weights_from: str | None = None
    study_seconds: float | None = None
    finalize_seconds: float | None = None
    train_seconds: float | None = None  # fixed recipe only
    best_val_epoch: int | None = None  # fixed recipe only
    error: str | None = None


class ProgressReporter(SilentReporter):
    """One plain line per finished trial: an hour-long run shows it is alive without a live display."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def message(self, text: str) -> None:
        self.log(f"    {text}")

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        shown = "" if value is None else f", val_accuracy {value:.3f}"
        self.log(f"    trial {number}: {state.lower()}{shown}")


def run_search(record: RunRecord, spec_path: Path, reporter: ProgressReporter) -> None:
    """Study then finalize through autocnn's public functions, in the run's own folder and stores."""
    from autocnn.export import FinalizeOptions, finalize
    from autocnn.spec import load_spec
    from autocnn.study import StudyOptions, run_study

    folder = spec_path.parent
    tracking_uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    with contextlib.chdir(folder):
        spec = load_spec(spec_path)
        started = time.perf_counter()
        result = run_study(spec, StudyOptions(tracking_uri=tracking_uri), reporter)
        record.study_seconds = time.perf_counter() - started
        record.trials = {state: n for state, n in result.counts.items() if n}
        record.best_val = result.best_value
        started = time.perf_counter()
        final = finalize(spec, FinalizeOptions(tracking_uri=tracking_uri, out_dir=folder / "model"))
        record.finalize_seconds = time.perf_counter() - started
    record.test_accuracy = final.scores.accuracy
    record.model, record.weights_from = final.model, final.weights_from
    record.final_trial, record.final_is_default = final.trial, is_default_trial(spec, final.trial)


def is_default_trial(spec: Spec, number: int) -> bool:
    """Whether the shipped trial is one of the default configurations autocnn starts a study with:
    when it wins, the search itself added nothing beyond the defaults."""
    from autocnn.defaults import DEFAULT_ATTR
    from autocnn.storage import open_study, storage_url

    study = open_study(spec, storage_url(spec))
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return DEFAULT_ATTR in trial.user_attrs


def run_fixed(record: RunRecord, data_root: Path, log: Log) -> None:
    from autocnn.data import DataCache

    outcome = train_fixed_recipe(DataCache(data_only_spec(data_root)).get(SIZE), record.seed, log)
    record.test_accuracy = outcome.last_epoch_accuracy
    record.best_val_epoch_test_accuracy = outcome.best_val_epoch_accuracy
    record.train_seconds = outcome.train_seconds
    record.best_val_epoch = outcome.best_val_epoch


def run_method(method: str, regime: str, seed: int, seed_dir: Path, settings: SearchSettings, log: Log) -> RunRecord:
    """One run; a failure is recorded, not raised, so an hour's other runs still report."""
    record = RunRecord(regime, method, seed)
    try:
        if method == "fixed":
            run_fixed(record, seed_dir / "data", log)
        else:
            spec_path = write_spec(seed_dir / method, search_spec(regime, method, seed, settings))
            run_search(record, spec_path, ProgressReporter(log))
    except Exception as exc:
        record.error = f"{exc.__class__.__name__}: {exc}"
        log(f"    FAILED: {record.error}")
    return record


def describe(record: RunRecord) -> str:
    if record.error:
        return f"{record.regime} seed {record.seed} {record.method}: failed"
    parts = [f"test accuracy {record.test_accuracy:.3f}"]
    if record.best_val_epoch_test_accuracy is not None:
        parts.append(f"best-val epoch ({record.best_val_epoch}) {record.best_val_epoch_test_accuracy:.3f}")
    if record.trials:
        parts.append("trials " + ", ".join(f"{n} {s.lower()}" for s, n in record.trials.items()))
        parts.append(f"shipped trial {shipped(record)}, {record.weights_from}")
    for label, seconds in (
        ("train", record.train_seconds),
        ("study", record.study_seconds),
        ("finalize", record.finalize_seconds),
    ):
        if seconds is not None:
            parts.append(f"{label} {seconds:.0f} s")
    return f"{record.regime} seed {record.seed} {record.method}: " + "; ".join(parts)


@dataclass(frozen=True)
class Plan:
    regimes: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    search: SearchSettings
    work: Path


def run_all(plan: Plan, log: Log) -> list[RunRecord]:
    """Each seed draws its own dataset; the methods of one seed share it, so they compare paired."""
    records = []
    for regime in plan.regimes:
        for seed in plan.seeds:
            seed_dir = plan.work / regime / f"seed-{seed}"
            log(f"{regime} seed {seed}: writing the dataset to {seed_dir / 'data'}")
            write_imagefolder(seed_dir / "data", REGIMES[regime](seed))
            for method in plan.methods:
                log(f"{regime} seed {seed}: {method}")
                records.append(run_method(method, regime, seed, seed_dir, plan.search, log))
                log(describe(records[-1]))
    return records


# --------------------------------------------------------------------------- summary


def mean_accuracy(records: Sequence[RunRecord]) -> float | None:
    """None unless every seed produced a figure: a mean over the survivors would flatter a method."""
    values = [r.test_accuracy for r in records]
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(v for v in values if v is not None)


@dataclass(frozen=True)
class Target:
    regime: str
    what: str
    autocnn: float | None
    other: float | None
    margin: float

    @property
    def met(self) -> bool | None:
        if self.autocnn is None or self.other is None:
            return None
        return self.autocnn >= self.other + self.margin - 1e-9


def regime_targets(regime: str, records: Sequence[RunRecord]) -> list[Target]:
    def mean_of(method: str) -> float | None:
        return mean_accuracy([r for r in records if r.regime == regime and r.method == method])

    searched = mean_of("autocnn")
    return [
        Target(regime, "autocnn >= fixed recipe + 5 pp", searched, mean_of("fixed"), TARGET_MARGIN_OVER_FIXED),
        Target(regime, "autocnn >= random search", searched, mean_of("random"), 0.0),
    ]


def verdict(met: bool | None) -> str:
    return "no figure (a run failed or was not run)" if met is None else ("met" if met else "**not met**")


def target_figure(target: Target) -> str:
    if target.autocnn is None or target.other is None:
        return "-"
    gap = (target.autocnn - target.other) * 100
    return f"{gap:+.1f} pp ({target.autocnn:.3f} vs {target.other:.3f})"


METHOD_LABELS = {
    "autocnn": "autocnn (TPE + Hyperband, then finalize)",
    "random": f"random search (no pruning, {RANDOM_EPOCHS} epochs, then finalize)",
    "fixed": f"fixed recipe ({FIXED_EPOCHS} epochs, last epoch; best-val epoch in brackets)",
}


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def shipped(record: RunRecord) -> str:
    if record.final_trial is None:
        return "-"
    return f"{record.final_trial}{' (default)' if record.final_is_default else ''}"


def method_row(regime: str, method: str, runs: Sequence[RunRecord]) -> str:
    per_seed = ", ".join(fmt(r.test_accuracy) for r in runs)
    if method == "fixed":
        per_seed += " (" + ", ".join(fmt(r.best_val_epoch_test_accuracy) for r in runs) + ")"
        trials = "-"
    else:
        trials = "; ".join(
            f"{r.trials.get('COMPLETE', 0)} / {r.trials.get('PRUNED', 0)} / {r.trials.get('FAIL', 0)}, "
            f"shipped {shipped(r)}"
            for r in runs
        )
    seconds = "; ".join(
        f"{fmt(r.study_seconds or r.train_seconds, '.0f')} / {fmt(r.finalize_seconds, '.0f')}" for r in runs
    )
    return f"| {regime} | {METHOD_LABELS[method]} | {fmt(mean_accuracy(runs))} | {per_seed} | {trials} | {seconds} |"


def source_line(source: dict[str, Any]) -> str:
    info, search = source["machine"], source["search"]
    stand_in = "" if search["trials"] is None else f", `study.trials: {search['trials']}` on both searches"
    return (
        f"{', '.join(source['regimes'])}: produced by `{source['command']}` on {info['date']} "
        f"({source['total_seconds']:.0f} s); {info['cpu']}, {info['cores']} cores, {info['device']}, torch "
        f"{info['torch']}; budget per search {search['budget_s']:.0f} s of `study.timeout`; seeds "
        f"{', '.join(map(str, source['seeds']))}; autocnn `train.epochs: {search['autocnn_epochs']}`{stand_in}."
    )


def section_header(payload: dict[str, Any]) -> list[str]:
    return [
        "## Search quality on small datasets: autocnn vs a fixed recipe vs random search",
        "",
        *(f"- {source_line(source)}" for source in payload["sources"]),
        "",
    ]


def method_table(payload: dict[str, Any], records: Sequence[RunRecord]) -> list[str]:
    lines = [
        "| regime | method | test accuracy, mean | per seed | trials complete / pruned / failed, trial shipped "
        "| seconds: study or training / finalize |",
        "|---|---|---|---|---|---|",
    ]
    for regime in payload["regimes"]:
        for method in payload["methods"]:
            runs = [r for r in records if r.regime == regime and r.method == method]
            if runs:
                lines.append(method_row(regime, method, runs))
    return lines + [""]


def target_table(payload: dict[str, Any], records: Sequence[RunRecord]) -> list[str]:
    lines = ["| regime | target | figure | |", "|---|---|---|---|"]
    for target in (t for regime in payload["regimes"] for t in regime_targets(regime, records)):
        lines.append(f"| {target.regime} | {target.what} | {target_figure(target)} | {verdict(target.met)} |")
    return lines + [""]


def render_section(payload: dict[str, Any], records: Sequence[RunRecord]) -> str:
    """The results.md section, markers included, so a later rewrite can find and replace it."""
    lines = [SECTION_START, *section_header(payload), *method_table(payload, records)]
    lines += target_table(payload, records)
    lines += [f"- {note}" for note in section_notes()]
    lines += [f"- failed: {r.regime} seed {r.seed} {r.method}: {r.error}" for r in records if r.error]
    return "\n".join(lines).rstrip() + "\n" + SECTION_END


def per_class(counts: dict[str, int]) -> str:
    return " / ".join(f"{n} {split}" for split, n in counts.items())


def section_notes() -> list[str]:
    pools = [str(i + 1) for i, pool in enumerate(pooled_blocks(SIZE, len(FIXED_CHANNELS))) if pool]
    return [
        "Regimes (benchmarks/datasets.py, 64 px PNG folders read with `data.source: imagefolder`): digits-small is "
        f"scikit-learn's digits upscaled bilinearly from 8x8, {per_class(DIGITS_COUNTS)} per class, disjoint draws; "
        f"digits-shifted is the same digits, {per_class(DIGITS_SHIFTED_COUNTS)} per class, the training images clean "
        "and the validation and test images from a shifted source (moved, tilted up to "
        f"{SHIFT_ROTATE_DEGREES:g} degrees, resized, thicker or thinner strokes, grainy unevenly lit paper); "
        f"shapes20 is 5 shapes x 4 fills, tilted up to {MAX_TILT_DEGREES:g} degrees, on gradient backgrounds with "
        f"line clutter, {per_class(SHAPES20_COUNTS)} per class, the test images from another generator stream in a "
        "shifted style (blotchy backgrounds, ring clutter, paler colours).",
        "Each seed draws its own dataset and is the spec's `seed`; the three methods of a seed see the same images, "
        "and targets compare means over seeds.",
        f"Fixed recipe: conv3x3-BN-LeakyReLU(0.1) blocks of {'-'.join(map(str, FIXED_CHANNELS))} channels, 2x2 "
        f"max-pool after blocks {', '.join(pools)} (a pool more would leave a 1 px map), global average pool, dropout "
        f"{FIXED_DROPOUT}, Linear({FIXED_HIDDEN})-LeakyReLU-Linear; AdamW lr {FIXED_LR:g}, weight decay "
        f"{FIXED_WEIGHT_DECAY:g}, batch {FIXED_BATCH}, {FIXED_EPOCHS} epochs, per-batch cosine schedule, no "
        "augmentation; autocnn's Trainer (train.precision auto) on the train split only.",
        "Searches: custom_cnn depth 3-6, width {32, 64}, dropout 0-0.5, relu / leaky_relu; lr 1e-4..3e-3 and weight "
        "decay 1e-5..5e-2 (log); batch {32, 64}; augmentation on/off, rotate 0-15, shift_scale 0-0.1, hflip 0.5 on "
        f"shapes20. Random search: random sampler, no pruner, {RANDOM_EPOCHS} epochs per trial. `study.timeout` stops "
        "starting trials; a trial running at the deadline finishes, so study seconds can exceed the budget. Finalize "
        "(default options) is timed apart and is outside the budget.",
        "autocnn enqueues its default configuration per model family as its first trials; the random search runs "
        "with `study.defaults: false`, a plain search. `(default)` marks a shipped trial that is that configuration.",
        "Both searches ship what finalize makes of the winner (with its default options, a refit on train + val); "
        "the fixed recipe learns from the train split alone, as specified, so it sees fewer labelled images.",
    ]


# --------------------------------------------------------------------------- search_quality.json


def earlier_sources(previous: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs behind an earlier file, one entry per command; a file from before sources were
    recorded has a single source in its top-level fields."""
    if "sources" in previous:
        return previous["sources"]
    keys = ("regimes", "command", "machine", "seeds", "search", "work", "total_seconds")
    return [{key: previous[key] for key in keys}] if "runs" in previous else []


def merged_payload(
    previous: dict[str, Any], source: dict[str, Any], methods: list[str], records: Sequence[RunRecord]
) -> dict[str, Any]:
    """This run's runs, plus every earlier run it did not redo (another regime, seed or method):
    rerunning one regime or one seed must not throw away an hour of the others' results."""
    redone = {(regime, seed) for regime in source["regimes"] for seed in source["seeds"]}
    kept_runs = [
        run
        for run in previous.get("runs", [])
        if (run["regime"], run["seed"]) not in redone or run["method"] not in methods
    ]
    sources = []
    for earlier in earlier_sources(previous):
        for regime in earlier["regimes"]:
            seeds = [seed for seed in earlier["seeds"] if (regime, seed) not in redone]
            if seeds:
                sources.append(earlier | {"regimes": [regime], "seeds": seeds})
    sources.append(source)
    measured = {regime for s in sources for regime in s["regimes"]}
    regimes = [regime for regime in REGIMES if regime in measured]
    runs = kept_runs + [asdict(r) for r in records]
    all_records = [RunRecord(**run) for run in runs]
    return {
        "sources": sources,
        "regimes": regimes,
        "methods": list(dict.fromkeys([*methods, *previous.get("methods", [])])),
        "runs": sorted(runs, key=lambda run: (regimes.index(run["regime"]), run["seed"], METHODS.index(run["method"]))),
        "targets": [asdict(t) | {"met": t.met} for regime in regimes for t in regime_targets(regime, all_records)],
    }


def write_outputs(payload: dict[str, Any], section: str, *, json_path: Path, markdown: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    markdown.write_text(splice_section(markdown.read_text() if markdown.exists() else "", section))


# --------------------------------------------------------------------------- main


def budget_seconds(text: str) -> float:
    from autocnn.spec import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:  # pydantic's error is a ValueError
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not isinstance(seconds, float) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration like 300, 90s, 5m, got {text!r}")
    return seconds


def epochs_value(text: str) -> str | int:
    return text if text == AUTO_EPOCHS else int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=budget_seconds, default=None, help="study.timeout per search (default 5m)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--regimes", nargs="+", choices=sorted(REGIMES), default=list(REGIMES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--work", type=Path, default=None, help="an empty folder for data and runs (default: temp)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 45 s budgets, one seed, outputs in --work")
    parser.add_argument(
        "--epochs", type=epochs_value, default=AUTO_EPOCHS, help="autocnn's train.epochs (default auto)"
    )
    parser.add_argument("--trials", type=int, default=None, help="study.trials on both searches (default: none)")
    return parser.parse_args(argv)


def fresh_work_dir(given: Path | None) -> Path:
    """An existing study folder would be resumed, not rerun: only an empty folder will do."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix="autocnn-search-quality-"))
    given = given.resolve()
    if given.exists() and any(given.iterdir()):
        raise SystemExit(f"error: --work {given} is not empty; studies there would resume instead of starting")
    given.mkdir(parents=True, exist_ok=True)
    return given


def plan_from(args: argparse.Namespace) -> Plan:
    budget = args.budget or (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S)
    seeds = args.seeds[:1] if args.quick else args.seeds
    search = SearchSettings(budget, args.epochs, args.trials)
    return Plan(tuple(args.regimes), tuple(seeds), tuple(args.methods), search, fresh_work_dir(args.work))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_like_the_cli()
    plan = plan_from(args)
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", flush=True)

    info = machine_info()
    log(f"work folder {plan.work}; budget {plan.search.budget_s:.0f} s per search; seeds {list(plan.seeds)}")
    records = run_all(plan, log)
    source = {
        "regimes": list(plan.regimes),
        "command": " ".join(["benchmarks/search_quality.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": info,
        "seeds": list(plan.seeds),
        "search": asdict(plan.search),
        "work": str(plan.work),
        "total_seconds": time.perf_counter() - started,
    }
    out = plan.work if args.quick else REPO / "benchmarks"
    json_path = out / "search_quality.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    payload = merged_payload(previous, source, list(plan.methods), records)
    records = [RunRecord(**run) for run in payload["runs"]]
    section = render_section(payload, records)
    write_outputs(payload, section, json_path=json_path, markdown=out / "results.md")
    print(section)
    print(f"wrote {out / 'search_quality.json'} and the search-quality section of {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
