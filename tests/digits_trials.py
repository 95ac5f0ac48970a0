"""A seeded digits study's trials, through the public API only: the record that says a change to
the code's layout changed nothing a study does.

Regenerate (only when a change is meant to alter what a study does):
    .venv/bin/python -m tests.digits_trials tests/data/digits_study_trials.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

VALUE_DIGITS = 4  # accuracies on 360 images: the fourth digit tells one image from the next

SPEC: dict[str, Any] = {
    "name": "digits-layout",
    "seed": 7,
    "data": {"source": "digits", "image_size": 16, "split": {"val": 0.2, "test": 0.2}},
    "study": {"trials": 4, "metric": "val_accuracy", "sampler": "tpe", "pruner": "median", "defaults": True},
    "train": {
        "epochs": 3,
        "batch_size": {"choices": [32, 64]},
        "lr": {"low": 1e-3, "high": 1e-2, "log": True},
        "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
        "precision": "fp32",  # the same arithmetic on CPUs with and without native bf16
    },
    "models": {"custom_cnn": {"depth": {"low": 2, "high": 3}, "width": {"choices": [8, 16]}, "dropout": 0.1}},
    "augment": {"enabled": {"choices": [True, False]}, "rotate": {"low": 0, "high": 10}},
}


def record_digits_study(folder: Path) -> list[dict[str, Any]]:
    """Run SPEC in `folder` (its own Optuna and MLflow stores) and return each trial's number,
    state, params and values."""
    import contextlib

    import optuna

    import autocnn

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    with contextlib.chdir(folder):
        spec = autocnn.load_spec(path)
        result = autocnn.run_study(spec, autocnn.StudyOptions(tracking_uri=f"sqlite:///{folder}/mlflow.db"))
        study = optuna.load_study(study_name=result.name, storage=result.storage)
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "params": {k: round(v, 9) if isinstance(v, float) else v for k, v in sorted(t.params.items())},
            "values": None if t.values is None else [round(v, VALUE_DIGITS) for v in t.values],
        }
        for t in study.get_trials(deepcopy=False)
    ]


if __name__ == "__main__":
    import tempfile

    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as work:
        trials = record_digits_study(Path(work))
    out.write_text(json.dumps(trials, indent=1) + "\n")
    print(json.dumps(trials, indent=1))
