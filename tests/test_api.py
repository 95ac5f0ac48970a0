"""The Python API a notebook uses: `import autocnn` and the names it documents, end to end."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import autocnn
from tests.conftest import REPO, digits_spec_dict, write_spec


def test_import_is_light_and_every_public_name_resolves() -> None:
    probe = (
        "import sys, autocnn; heavy = [m for m in ('torch', 'mlflow', 'optuna', 'timm') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for name in autocnn.__all__:
        assert getattr(autocnn, name) is not None, name
    assert set(autocnn.__all__) <= set(dir(autocnn))
    with pytest.raises(AttributeError, match="no attribute 'run_studies'"):
        autocnn.run_studies  # noqa: B018


def test_every_public_function_shows_an_example() -> None:
    for name in ("load_spec", "run_study", "study_status", "build_report", "finalize", "Predictor"):
        assert "Example:" in (getattr(autocnn, name).__doc__ or ""), name


@pytest.mark.slow
def test_a_notebook_runs_study_status_report_finalize_and_predict(in_tmp: Path) -> None:
    """The README's notebook example, on the bundled digits; it leaves MLflow's global tracking URI
    and the logging levels as they were (the libraries it imports add their own warning filters)."""
    import mlflow
    import numpy as np
    from PIL import Image

    spec_path = write_spec(in_tmp / "studies", digits_spec_dict(study={"trials": 2, "pruner": "none"}))
    uri = mlflow.get_tracking_uri()
    levels = {name: logging.getLogger(name).level for name in ("", "autocnn", "py.warnings")}

    spec = autocnn.load_spec(spec_path)
    result = autocnn.run_study(spec, autocnn.StudyOptions(trials=2))
    status = autocnn.study_status(spec)
    report = autocnn.build_report(spec)
    final = autocnn.finalize(spec, autocnn.FinalizeOptions(refit=False))
    predictor = autocnn.Predictor(str(final.out_dir))
    image = in_tmp / "seven.png"
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(image)
    predicted = autocnn.predict_files(predictor, [str(image), str(in_tmp / "missing.png")], top=2)

    assert result.counts["COMPLETE"] == 2 and status.counts == result.counts
    assert status.best_number == result.best_number and status.best_value == result.best_value
    assert report.path.is_file() and report.n_trials == 2
    assert final.trial == result.best_number and json.loads((final.out_dir / "labels.json").read_text())
    assert [p.path for p in predicted.predictions] == [str(image)] and len(predicted.predictions[0].top) == 2
    assert predicted.skipped and predicted.skipped[0][0].endswith("missing.png")
    assert mlflow.get_tracking_uri() == uri
    assert {name: logging.getLogger(name).level for name in levels} == levels


def test_a_user_error_is_an_autocnn_error_naming_the_culprit(tmp_path: Path) -> None:
    with pytest.raises(autocnn.AutocnnError) as caught:
        autocnn.load_spec(tmp_path / "nowhere.yaml")
    assert "nowhere.yaml" in "\n".join(caught.value.lines())
    spec = autocnn.load_spec(write_spec(tmp_path, digits_spec_dict()))
    with pytest.raises(autocnn.AutocnnError, match="run `autocnn study`"):
        autocnn.study_status(spec)
