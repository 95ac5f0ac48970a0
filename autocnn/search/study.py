"""`run_study`: check everything, start the worker processes when asked, and run the study."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autocnn.search.options import Reporter, SilentReporter, StudyOptions
from autocnn.search.results import StudyResult
from autocnn.search.session import run_prepared_study
from autocnn.spec.schema import Spec

if TYPE_CHECKING:
    from autocnn.search.workers import WorkerPool


def run_study(spec: Spec, options: StudyOptions | None = None, reporter: Reporter | None = None) -> StudyResult:
    """Check everything, then run (or resume) the study until it holds `trials` done trials.

    A study that has trials in its storage resumes: only the missing trials run, and a trial cut
    short by a killed process continues from its last checkpoint. Any number of processes, here
    (`workers`) or on other machines sharing the storage, can run the same study at once: each
    takes trials until the total is reached. `reporter` hears about each trial and epoch (the
    command line draws progress bars with it); by default nothing is shown.

    Example:
        >>> result = autocnn.run_study(spec, autocnn.StudyOptions(trials=20, timeout=900))
        >>> result.best_number, result.best_value, result.counts
    """
    options = options or StudyOptions()
    pool = start_workers(spec, options)  # their training code loads while the study is prepared
    return run_prepared_study(spec, options, reporter or SilentReporter(), pool=pool)


def start_workers(spec: Spec, options: StudyOptions) -> WorkerPool | None:
    """The pool of `workers` processes, whose fork server starts loading the training code now;
    none for a single process."""
    if options.workers <= 1:
        return None
    from autocnn.search.workers import WorkerPool

    return WorkerPool(spec, options)
