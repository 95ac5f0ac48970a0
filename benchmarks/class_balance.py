"""Imbalanced classes: does weighting the loss (or sampling classes evenly) lift the rare classes
over a search that trains on the images as they come?

Run: .venv/bin/python benchmarks/class_balance.py [--budget 120] [--seeds 0 1 2] [--test-limit N]
     [--work DIR] [--quick]

Fixed here, before any run:

- Regime `fmnist-10to1`: Fashion-MNIST, drawn per seed from the official training split: five
  common classes with 200 training and 100 validation images each, five rare ones (chosen by the
  seed) with 20 and 10: 10:1 in train and in val, as a folder a user would have. Test: the official
  test set (or a stratified part of it), balanced, so test accuracy equals balanced accuracy.
- Three studies per seed, each the spec `autocnn init` writes for the folder (scratch: no weights in
  the hub cache; init picks `val_macro_f1` for 10:1 data), with the same budget, seed and images:
  1. `unweighted`: init's spec with `class_weights: none`;
  2. `init`: init's spec as written (`class_weights: balanced`, fixed);
  3. `searched`: init's spec with both keys searched, `class_weights: {choices: [balanced, none]}`
     and `sampler: {choices: [shuffle, balanced]}` (the ablation: leave the choice to the search).
  Each is finalized as a user would (`autocnn finalize`: the best trial refit on train + val) and
  scored once on the test images.
- Target, on mean test macro-F1 over seeds: `init` >= `unweighted` + 2 pp.

Writes benchmarks/class_balance.md and .json (or the work folder's, with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's benchmarks
    sys.path.insert(0, str(REPO))

# ruff: noqa: E402 - the imports below need the path set-up above
from benchmarks import search_quality as sq
from benchmarks.datasets import ImageSet, Regime, write_imagefolder
from benchmarks.fashion_mnist import CLASSES, as_rgb, load_fashion_mnist, stratified_head
from benchmarks.machine import quiet_like_the_cli

REGIME = "fmnist-10to1"
COMMON = {"train": 200, "val": 100}  # per class
RARE = {"train": 20, "val": 10}  # per class: 10:1
N_RARE = 5
DEFAULT_BUDGET_S = 120.0
QUICK_BUDGET_S = 20.0
QUICK_TEST_LIMIT = 500
OVER_UNWEIGHTED = 0.02
METHODS = ("unweighted", "init", "searched")

Log = Callable[[str], None]


@dataclass
class Record:
    """One method on one seed; scores are on the test split."""

    method: str
    seed: int
    macro_f1: float | None = None
    accuracy: float | None = None
    rare_recall: float | None = None  # mean recall of the rare classes
    common_recall: float | None = None
    trials: dict[str, int] = field(default_factory=dict)
    shipped: str = ""  # the finalized trial and its class-balance keys
    study_seconds: float | None = None
    error: str | None = None


# --------------------------------------------------------------------------- the regime


def rare_classes(seed: int) -> list[int]:
    return sorted(np.random.default_rng([seed, 10]).choice(len(CLASSES), N_RARE, replace=False).tolist())


def imbalanced_regime(seed: int, test_limit: int | None) -> Regime:
    """Train and val drawn per class from the official training split at 10:1; test balanced."""
    train_images, train_labels, test_images, test_labels = load_fashion_mnist()
    rng = np.random.default_rng([seed, 0])
    rare = set(rare_classes(seed))
    picked: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for label in range(len(CLASSES)):
        counts = RARE if label in rare else COMMON
        idx = rng.permutation(np.flatnonzero(train_labels == label))
        picked["train"].append(idx[: counts["train"]])
        picked["val"].append(idx[counts["train"] : counts["train"] + counts["val"]])
    splits = {}
    for split, parts in picked.items():
        idx = np.sort(np.concatenate(parts))
        splits[split] = ImageSet(as_rgb(train_images[idx]), train_labels[idx])
    test = np.arange(len(test_labels)) if test_limit is None else stratified_head(test_labels, test_limit)
    splits["test"] = ImageSet(as_rgb(test_images[test]), test_labels[test])
    return Regime(list(CLASSES), splits)


# --------------------------------------------------------------------------- the studies


def init_spec_text(data: Path, folder: Path, seed: int, budget_s: float, hub: Path) -> str:
    """What `autocnn init` writes for the folder, named and seeded for this run; no weights in reach."""
    from autocnn.cli.init_spec import init_spec

    with sq.hub_cache_seen(hub):
        result = init_spec(data, out=folder / "init.yaml", budget_s=budget_s, flip=True)
    text = result.path.read_text()
    text = re.sub(r"^name: .*$", f"name: {REGIME}-s{seed}", text, count=1, flags=re.M)
    text = re.sub(r"^  root: .*$", f"  root: {data.resolve()}", text, count=1, flags=re.M)
    return re.sub(r"^seed: .*$", f"seed: {seed}", text, count=1, flags=re.M)


SEARCHED_BALANCE = "  class_weights: {choices: [balanced, none]}\n  sampler: {choices: [shuffle, balanced]}"


def method_spec(init_text: str, method: str) -> str:
    """The method's spec: init's own, or init's with its class-balance line replaced."""
    if not re.search(r"^  class_weights: balanced\b", init_text, flags=re.M):
        raise RuntimeError("init wrote no class_weights: balanced for 10:1 data; the benchmark compares nothing")
    if method == "init":
        return init_text
    balance = "  class_weights: none" if method == "unweighted" else SEARCHED_BALANCE
    text = re.sub(r"^  class_weights: .*$", lambda _: balance, init_text, count=1, flags=re.M)
    return re.sub(r"^name: (.*)$", rf"name: \1-{method}", text, count=1, flags=re.M)


def recalls(labels: np.ndarray, preds: np.ndarray, rare: list[int]) -> tuple[float, float]:
    from sklearn.metrics import recall_score

    per_class = recall_score(labels, preds, labels=list(range(len(CLASSES))), average=None, zero_division=0)
    common = [c for c in range(len(CLASSES)) if c not in rare]
    return float(per_class[rare].mean()), float(per_class[common].mean())


def shipped_balance(uri: str, run_id: str) -> dict[str, str]:
    """The class-balance keys the finalized model trained with, from its MLflow run's params."""
    import mlflow

    params = mlflow.MlflowClient(uri).get_run(run_id).data.params
    return {key: params[f"train.{key}"] for key in ("class_weights", "sampler") if f"train.{key}" in params}


def run_method(record: Record, spec_text: str, folder: Path, log: Log) -> None:
    """The study, then `finalize` of its best trial, in the method's own folder and stores."""
    from autocnn.outputs.finalize import FinalizeOptions, finalize
    from autocnn.search.options import StudyOptions
    from autocnn.search.study import run_study
    from autocnn.spec.load import load_spec

    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.yaml"
    spec_path.write_text(spec_text)
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    with contextlib.chdir(folder):
        spec = load_spec(spec_path)
        started = time.perf_counter()
        result = run_study(spec, StudyOptions(tracking_uri=uri), sq.ProgressReporter(log))
        record.study_seconds = time.perf_counter() - started
        record.trials = {state: n for state, n in result.counts.items() if n}
        final = finalize(spec, FinalizeOptions(tracking_uri=uri, out_dir=folder / "model"))
    scores = final.scores
    record.macro_f1, record.accuracy = scores.macro_f1, scores.accuracy
    record.rare_recall, record.common_recall = recalls(scores.labels, scores.preds, rare_classes(record.seed))
    balance = ", ".join(f"{key} {value}" for key, value in shipped_balance(uri, final.run_id).items())
    record.shipped = f"trial {final.trial} ({final.model}{', ' + balance if balance else ''})"


def run_all(plan: sq.Plan, log: Log, seed_done: Callable[[list[Record]], None]) -> list[Record]:
    records: list[Record] = []
    for seed in plan.seeds:
        seed_dir = plan.work / f"seed-{seed}"
        data = seed_dir / "data"
        if not data.exists():
            log(f"seed {seed}: writing the images to {data}; rare classes {rare_classes(seed)}")
            write_imagefolder(data, imbalanced_regime(seed, plan.test_limit))
        init_text = init_spec_text(data, seed_dir, seed, plan.budget_s, seed_dir / "empty-hub")
        for method in METHODS:
            log(f"seed {seed}: {method}")
            record = Record(method, seed)
            try:
                run_method(record, method_spec(init_text, method), seed_dir / method, log)
                log(f"    {record.shipped}: test macro-F1 {record.macro_f1:.3f}, rare recall {record.rare_recall:.3f}")
            except Exception as exc:  # noqa: BLE001 - recorded, so the other runs still report
                record.error = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
                log(f"    FAILED: {record.error}")
            records.append(record)
        seed_done(records)
    return records


# --------------------------------------------------------------------------- summary


def mean_of(records: Sequence[Record], method: str, key: str) -> float | None:
    values = [getattr(r, key) for r in records if r.method == method and not r.error]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def target(records: Sequence[Record]) -> sq.Target:
    return sq.Target(
        REGIME,
        f"init >= unweighted + {OVER_UNWEIGHTED * 100:.0f} pp test macro-F1",
        mean_of(records, "init", "macro_f1"),
        mean_of(records, "unweighted", "macro_f1"),
        OVER_UNWEIGHTED,
        "unweighted",
    )


def render(payload: dict[str, Any], records: Sequence[Record]) -> str:
    fmt = sq.fmt
    lines = [
        "# Imbalanced classes: weighting the loss against training on the images as they come",
        "",
        sq.source_line(payload["source"]),
        "",
        "| seed | method | trials | shipped | test macro-F1 | test accuracy | rare recall | common recall | study s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r.error:
            lines.append(f"| {r.seed} | {r.method} | failed: {r.error} | | | | | | |")
            continue
        trials = ", ".join(f"{n} {s.lower()}" for s, n in r.trials.items())
        lines.append(
            f"| {r.seed} | {r.method} | {trials} | {r.shipped} | {fmt(r.macro_f1)} | {fmt(r.accuracy)} | "
            f"{fmt(r.rare_recall)} | {fmt(r.common_recall)} | {fmt(r.study_seconds, '.0f')} |"
        )
    lines += ["", "| method | mean test macro-F1 | mean rare recall | mean common recall |", "|---|---|---|---|"]
    for method in METHODS:
        lines.append(
            f"| {method} | {fmt(mean_of(records, method, 'macro_f1'))} | {fmt(mean_of(records, method, 'rare_recall'))} "
            f"| {fmt(mean_of(records, method, 'common_recall'))} |"
        )
    t = target(records)
    lines += [
        "",
        "| target | figure | |",
        "|---|---|---|",
        f"| {t.what} | {sq.target_figure(t)} | {sq.verdict(t.met)} |",
        "",
        f"- Regime: five common classes with {COMMON['train']} train and {COMMON['val']} val images each, five rare "
        f"ones with {RARE['train']} and {RARE['val']} (10:1), drawn per seed from Fashion-MNIST's training split; "
        "test is balanced.",
        "- Every method is the spec `autocnn init` writes for the folder (scratch), with the same budget, seed "
        "and images; only the class-balance keys differ. Each is finalized by `autocnn finalize` (refit on "
        "train + val) and scored once on the test images.",
        "- Differences that remain: none by design beyond those keys; the studies ran one after the other on the "
        "same machine.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, source: dict[str, Any], records: list[Record]) -> str:
    t = target(records)
    payload = {"source": source, "runs": [asdict(r) for r in records], "target": asdict(t) | {"met": t.met}}
    (out / "class_balance.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    text = render(payload, records)
    (out / "class_balance.md").write_text(text)
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=sq.budget_seconds, default=None, help="per study (default 120 s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-limit", type=int, default=None, help="a stratified part of the test set")
    parser.add_argument("--work", type=Path, default=None, help="an empty folder for data and runs (default: temp)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budget and test set, one seed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_like_the_cli()
    budget = args.budget or (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S)
    plan = sq.Plan(
        regimes=(REGIME,),
        seeds=tuple(args.seeds[:1] if args.quick else args.seeds),
        ablations_on=(),
        budget_s=budget,
        test_limit=args.test_limit or (QUICK_TEST_LIMIT if args.quick else None),
        work=sq.fresh_work_dir(args.work),
        hf_home=None,
    )
    run = sq.BenchRun.of("benchmarks/class_balance.py", argv)
    out = plan.work if args.quick else REPO / "benchmarks"
    run.log(f"work folder {plan.work}; budget {budget:.0f} s per study; seeds {list(plan.seeds)}")

    def write(records: list[Record], *, final: bool) -> str:
        return write_outputs(out, run.source(plan, final=final), records)

    records = run_all(plan, run.log, seed_done=lambda so_far: write(so_far, final=False))
    print(write(records, final=True))
    print(f"wrote {out / 'class_balance.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
