"""Study specs for benchmark runs: the repository's own studies/, changed in code and written out
where `autocnn` can read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def study_file(name: str) -> dict[str, Any]:
    """studies/<name>.yaml as a plain dict, to change before writing it out again."""
    return yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())


def write_spec(folder: Path, raw: dict[str, Any]) -> Path:
    """`folder/<name>.yaml`: a study's folder is its spec's, so its stores land beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def heaviest(space: dict[str, Any]) -> dict[str, Any]:
    """Each searched value at its most expensive end: `high`, the largest choice, enabled on.

    random_resized_crop is the exception: any min area below 1 switches the crop on, at equal cost.
    """
    out: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, dict) and "high" in value:
            out[key] = value["high"] if key != "random_resized_crop" else value["low"]
        elif isinstance(value, dict) and "choices" in value:
            out[key] = True if key == "enabled" else max(value["choices"])
        else:
            out[key] = value
    return out


def heaviest_augment() -> dict[str, Any]:
    """The costliest augmentation studies/20classes.yaml can sample: the loader's worst case."""
    return heaviest(study_file("20classes")["augment"])
