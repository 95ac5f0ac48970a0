"""What a caller passes to a study (StudyOptions) and how the study talks back (Reporter), shared by
the study loop, its worker processes and the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from autocnn.training.config import TrialConfig

if TYPE_CHECKING:
    from autocnn.search.plan import Plan
    from autocnn.training.loop import EpochMetrics


class Reporter(Protocol):
    """What the study tells whoever is watching (the CLI shows it with rich; tests ignore it)."""

    def message(self, text: str) -> None: ...
    def data_progress(self, done: int, total: int) -> None: ...
    def study_started(self, *, name: str, done: int, target: int | None, to_run: int | None) -> None: ...
    def trial_sampled(self, number: int, config: TrialConfig) -> None: ...
    def trial_started(self, number: int, config: TrialConfig, epochs: int) -> None: ...
    def epoch_done(self, number: int, metrics: EpochMetrics, metric: str) -> None: ...
    def trial_finished(self, number: int, state: str, value: float | None) -> None: ...


class TrialPool(Protocol):
    """Worker processes that run a study's trials (autocnn.search.workers.WorkerPool): the study
    loop hands them the plan and waits, without knowing how they are started."""

    def run(self, plan: Plan, reporter: Reporter, *, timeout: float | None) -> list[str]: ...
    def close(self) -> None: ...


class SilentReporter:
    def message(self, text: str) -> None:
        pass

    def data_progress(self, done: int, total: int) -> None:
        pass

    def study_started(self, *, name: str, done: int, target: int | None, to_run: int | None) -> None:
        pass

    def trial_sampled(self, number: int, config: TrialConfig) -> None:
        pass

    def trial_started(self, number: int, config: TrialConfig, epochs: int) -> None:
        pass

    def epoch_done(self, number: int, metrics: EpochMetrics, metric: str) -> None:
        pass

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        pass


@dataclass(frozen=True)
class StudyOptions:
    """Command-line overrides of the spec."""

    trials: int | None = None
    timeout: float | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    keep_checkpoints: bool = False
    workers: int = 1  # local worker processes sharing the study
    checkpoint_dir: Path | None = None  # where running trials' checkpoints live (default: beside the spec)
    supervised: bool = False  # set in the processes `workers` starts: their starter closes the study
