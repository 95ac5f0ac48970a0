"""autocnn's own trials with a clock on each epoch: a fixed-config study run through `run_study`,
its wall time split into training, validation, per-epoch bookkeeping and fixed per-trial cost."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from autocnn.search.options import SilentReporter
from benchmarks.specs import write_spec
from benchmarks.timing import median, settle


@dataclass(frozen=True)
class EpochStamp:
    """When an epoch of autocnn's trial was reported, with the Trainer's metrics for it."""

    done: float  # wall clock when the study reported the epoch
    metrics: Any


class TimingReporter(SilentReporter):
    """The study's Reporter, stamping each trial's start and epochs; runs `after_trial` after each.

    Epochs follow one another as in any study, autocnn's writer threads (checkpoint, MLflow
    metrics) overlapping the next epoch's training, so their cost shows in its wall time. The
    time spent in `after_trial` (the bare loops' turn) is kept, to be taken off the trial's.
    """

    def __init__(self, after_trial: Callable[[int], None] | None = None) -> None:
        self.after_trial = after_trial
        self.started: dict[int, float] = {}
        self.epochs: dict[int, list[EpochStamp]] = {}
        self.after_trial_s: dict[int, float] = {}

    def trial_started(self, number: int, config: Any, epochs: int) -> None:
        self.started[number] = time.time()
        self.epochs[number] = []

    def epoch_done(self, number: int, metrics: Any, metric: str) -> None:
        self.epochs[number].append(EpochStamp(time.time(), metrics))

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        if self.after_trial is not None:
            start = time.time()
            self.after_trial(number)
            self.after_trial_s[number] = time.time() - start


@dataclass(frozen=True)
class TrialTiming:
    images_per_s: float  # training images / (epoch wall time minus validation), epochs 2..N
    train_only_images_per_s: float  # the Trainer's own train-loop clock, same epochs
    per_epoch_overhead_s: float  # median wall time per epoch outside train and validation
    fixed_s: float  # trial wall time outside all epochs (model build, runs, artifacts)
    before_s: float
    after_s: float
    validation_s: float  # median per epoch
    epoch_images_per_s: tuple[float, ...] = ()  # each timed epoch's, as images_per_s counts them


def trial_timing(
    stamps: Sequence[EpochStamp], started: float, trial_start: float, trial_end: float, seen: int
) -> TrialTiming:
    """Split a trial's wall time into training, validation, per-epoch bookkeeping and fixed cost.

    Epoch e's interval runs from epoch e-1's report to epoch e's: it holds every per-epoch cost
    (pruning check, batching, training, validation, metrics, checkpoint, Optuna report, and the
    writer threads' work overlapping it) exactly once. Validation (validation pass + metrics)
    comes from the Trainer's own clocks.
    """
    reported = [started] + [st.done for st in stamps]
    intervals = [b - a for a, b in zip(reported, reported[1:], strict=False)]
    train_s = [seen / st.metrics.train_images_per_s for st in stamps]
    val_s = [st.metrics.epoch_seconds - tr for st, tr in zip(stamps, train_s, strict=True)]
    timed = slice(1, None) if len(stamps) > 1 else slice(0, None)
    work = [iv - v for iv, v in zip(intervals[timed], val_s[timed], strict=True)]
    overhead = [iv - st.metrics.epoch_seconds for iv, st in zip(intervals[timed], stamps[timed], strict=True)]
    before, after = started - trial_start, trial_end - reported[-1]
    return TrialTiming(
        images_per_s=seen * len(work) / sum(work),
        train_only_images_per_s=seen * len(work) / sum(train_s[timed]),
        per_epoch_overhead_s=median(overhead),
        fixed_s=before + after,
        before_s=before,
        after_s=after,
        validation_s=median(val_s[timed]),
        epoch_images_per_s=tuple(seen / w for w in work),
    )


class TrialRunner:
    """Runs more trials of a fixed-config study per call, through `run_study` itself."""

    def __init__(self, raw_spec: dict[str, Any], folder: Path) -> None:
        from autocnn.spec.load import load_spec

        self.spec = load_spec(write_spec(folder, raw_spec))
        self.tracking = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
        self.trials = 0

    def train_split(self) -> Any:
        """The cached training images every trial trains on, for the bare loops to train on too."""
        from autocnn.data.cache import DataCache

        return DataCache(self.spec.data, seed=self.spec.seed).get(self.spec.data.image_size).train

    def images_per_epoch(self) -> int:
        """Training images an epoch sees: full batches only, as autocnn drops a short tail."""
        batch = int(self.spec.train.batch_size)
        return (len(self.train_split()) // batch) * batch

    def run_all(self, trials: int, after_trial: Callable[[int], None] | None = None) -> list[TrialTiming]:
        """`trials` trials in one study run, as a user's study runs them; `after_trial(k)` after the k-th."""
        from autocnn.search.options import StudyOptions
        from autocnn.search.storage import open_study
        from autocnn.search.study import run_study

        first = self.trials
        reporter = TimingReporter(None if after_trial is None else lambda number: after_trial(number - first))
        self.trials += trials
        settle()
        result = run_study(self.spec, StudyOptions(trials=self.trials, tracking_uri=self.tracking), reporter)
        study = open_study(self.spec, result.storage)
        seen = self.images_per_epoch()
        timings = []
        for trial in study.trials[first:]:
            if trial.state.name != "COMPLETE":
                raise RuntimeError(f"benchmark trial ended {trial.state.name}: {trial.user_attrs}")
            start = trial.datetime_start.replace(tzinfo=UTC).timestamp()  # naive UTC (Optuna 5)
            end = trial.datetime_complete.replace(tzinfo=UTC).timestamp() - reporter.after_trial_s.get(trial.number, 0)
            stamps = reporter.epochs[trial.number]
            timings.append(trial_timing(stamps, reporter.started[trial.number], start, end, seen))
        return timings
