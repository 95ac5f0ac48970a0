"""Does the search waste compute, and what do more workers, cached features and a second objective buy?

Run: .venv/bin/python benchmarks/run.py [--quick] [--items 1 3] [--models custom_cnn] [--out FILE] [--keep] [--merge]

Writes a readable results.md (one table per item: target, figure, met / not met) and a
results.json beside it with every raw number and the machine it ran on. Targets are ratios
measured in the same process, alternating A/B, so they survive a noisy machine better than
absolute images/s. Nothing here is asserted in tests: performance is reported, never tested.
The code is device-agnostic: on a CUDA machine the same script measures the GPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm never waits on an unreachable hub

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's benchmarks
    sys.path.insert(0, str(REPO))

# ruff: noqa: E402 - the imports below need the path set-up above
from benchmarks.bare_loop import LoopCase
from benchmarks.data_pipeline import measure_data_pipeline
from benchmarks.feature_cache import FeatureCacheCase, measure_feature_cache
from benchmarks.machine import machine_info, quiet_like_the_cli, quiet_machine
from benchmarks.memory_use import measure_memory
from benchmarks.pareto_front import measure_pareto
from benchmarks.pruning_savings import measure_pruning
from benchmarks.results import Item, carried_over, merge_items, render_markdown, write_results
from benchmarks.scale_out import measure_scale_out
from benchmarks.startup_cost import measure_startup
from benchmarks.timed_study import TrialTiming
from benchmarks.trial_loop import CASES, measure_trial_loop

ITEMS = (1, 2, 3, 4, 5, 6, 7, 8)
Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """How much each item measures: the full run for results.md, or a smoke run (--quick)."""

    quick: bool
    loop_repeats: int | None  # None: each case's own
    loop_epochs: int | None  # per run, the first untimed; None: each case's own
    loop_cases: tuple[LoopCase, ...]
    aug_images: int
    aug_repeats: int
    prune_trials: int
    prune_epochs: int  # more than the quickstart's 10, so pruning has room after the judge floor
    startup_repeats: int
    mem_images: int
    mem_epochs: int
    scale_trials: int
    scale_epochs: int
    scale_repeats: int
    trivial_trials: int
    features: FeatureCacheCase = FeatureCacheCase()
    pareto_trials: int = 20
    pareto_epochs: int = 6


# Item 7 as a smoke run: a small backbone on a small folder, a 3-trial study.
QUICK_FEATURES = FeatureCacheCase(
    backbone="resnet18",
    image_size=32,
    images=200,
    full_epochs=2,
    cached_epochs=2,
    study_backbone="resnet18",
    study_image_size=32,
    study_images=200,
    study_trials=3,
    study_epochs=2,
)


def settings_for(quick: bool, models: Sequence[str] = tuple(CASES)) -> Settings:
    cases = tuple(CASES[m] for m in CASES if m in models)
    if quick:
        return Settings(
            True, 1, 2, cases, 256, 1, 3, 2, 2, 300, 1, 4, 2, 1, 16, QUICK_FEATURES, pareto_trials=3, pareto_epochs=2
        )
    return Settings(False, None, None, cases, 1024, 3, 20, 12, 7, 2000, 2, 24, 6, 2, 80)


def run_items(settings: Settings, wanted: Sequence[int], work: Path, log: Log) -> list[Item]:
    """The wanted items in order; item 4 reports item 1's trials, so either one runs item 1's trials."""
    items: list[Item] = []
    timings: dict[str, list[TrialTiming]] = {}
    if 1 in wanted or 4 in wanted:
        log("item 1: trial loop vs bare loop")
        loop_item, timings = measure_trial_loop(
            settings.loop_cases, work, epochs=settings.loop_epochs, repeats=settings.loop_repeats
        )
        if 1 in wanted:
            items.append(loop_item)
    steps: list[tuple[int, str, Callable[[], Item]]] = [
        (2, "data pipeline", lambda: measure_data_pipeline(images=settings.aug_images, repeats=settings.aug_repeats)),
        (3, "pruning", lambda: measure_pruning(work, trials=settings.prune_trials, epochs=settings.prune_epochs)),
        (4, "start-up", lambda: measure_startup(work, repeats=settings.startup_repeats, timings=timings)),
        (5, "memory", lambda: measure_memory(work, images=settings.mem_images, epochs=settings.mem_epochs)),
        (
            6,
            "scale-out",
            lambda: measure_scale_out(
                work,
                trials=settings.scale_trials,
                epochs=settings.scale_epochs,
                repeats=settings.scale_repeats,
                trivial_trials=settings.trivial_trials,
            ),
        ),
        (7, "feature cache", lambda: measure_feature_cache(work, settings.features)),
        (
            8,
            "accuracy against latency",
            lambda: measure_pareto(work, trials=settings.pareto_trials, epochs=settings.pareto_epochs),
        ),
    ]
    for number, name, measure in steps:
        if number in wanted:
            log(f"item {number}: {name}")
            items.append(measure())
    return sorted(items, key=lambda i: i.number)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat (minutes)")
    parser.add_argument("--items", type=int, nargs="+", default=list(ITEMS), choices=ITEMS)
    parser.add_argument(
        "--out", type=Path, default=None, help="results markdown (default benchmarks/results.md; --quick: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp working folder")
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=sorted(CASES), help="item 1 models")
    parser.add_argument(
        "--feature-study",
        type=int,
        nargs=2,
        metavar=("IMAGES", "SIZE"),
        default=None,
        help="item 7's study on a smaller folder (images, px) than its epochs' 2,000 at 96 px, to fit the time",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other items' sections of an existing results.md and results.json, replacing only those run",
    )
    return parser.parse_args(argv)


def run_info() -> dict[str, Any]:
    """machine_info, plus whether the machine was quiet enough for absolute figures to mean much."""
    quiet = quiet_machine()
    info = machine_info()
    info["quiet"] = "yes" if quiet else f"no (load {info['load_before']} when starting)"
    busy = "The machine was busy when this run started: absolute images/s are low; the side-by-side ratios still hold."
    info["notes"] = [] if quiet else [busy]
    return info


def results_path(args: argparse.Namespace) -> Path:
    """--out, else a temp folder for a smoke run: --quick never overwrites the committed results."""
    if args.out is not None:
        return args.out
    if args.quick:
        return Path(tempfile.gettempdir()) / "autocnn-bench-quick" / "results.md"
    return REPO / "benchmarks" / "results.md"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_like_the_cli()
    settings = settings_for(args.quick, args.models)
    if args.feature_study:
        images, size = args.feature_study
        settings = replace(settings, features=replace(settings.features, study_images=images, study_image_size=size))
    info = run_info()
    work = Path(tempfile.mkdtemp(prefix="autocnn-bench-"))
    out = results_path(args)
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", flush=True)

    try:
        items = run_items(settings, sorted(set(args.items)), work, log)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    info["total_seconds"] = round(time.perf_counter() - started)
    command = "benchmarks/run.py" + (" --quick" if args.quick else "")
    if args.merge and out.exists():  # only the items run, spliced into the text as it is
        merge_items(
            out, info, items, command=" ".join(["benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
        )
        print(f"merged items {', '.join(str(i.number) for i in items)} into {out} and {out.with_suffix('.json')}")
        return 0
    items = carried_over(out, items)
    write_results(out, info, items, command=command)
    print(render_markdown(info, items, command=command))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
