"""A short finished digits study in a folder of its own, for the report, export and UI tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autocnn.search.options import StudyOptions
from autocnn.search.results import StudyResult
from autocnn.search.study import run_study
from autocnn.spec.load import load_spec
from autocnn.spec.schema import Spec
from autocnn.tracking.tracker import default_tracking_uri
from tests.conftest import digits_spec_dict, write_spec


@dataclass(frozen=True)
class FinishedStudy:
    root: Path
    spec_path: Path
    tracking_uri: str
    result: StudyResult

    @property
    def spec(self) -> Spec:
        return load_spec(self.spec_path)


def finish_study(root: Path, **overrides: Any) -> FinishedStudy:
    """Run a small digits study (no pruning: every trial completes), its stores under `root`."""
    settings: dict[str, Any] = {"study": {"trials": 2, "pruner": "none"}}
    settings.update(overrides)
    spec_path = write_spec(root / "studies", digits_spec_dict(**settings))
    uri = default_tracking_uri(root / "mlruns")
    result = run_study(load_spec(spec_path), StudyOptions(tracking_uri=uri))
    assert result.counts["COMPLETE"] == result.ran, result
    return FinishedStudy(root, spec_path, uri, result)


@contextmanager
def finished_study_in(root: Path) -> Iterator[FinishedStudy]:
    """A finished study made and used from `root`, where ./mlruns lands; for module-scoped fixtures."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        yield finish_study(root)
