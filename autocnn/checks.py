"""Every check `autocnn study` runs before trial 1, shared with `autocnn validate`.

Nothing here trains, writes or imports torch: a spec that passes here reaches trial 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autocnn.data import DataCache
from autocnn.errors import SpecError
from autocnn.models import CUSTOM_CNN, max_depth
from autocnn.space import SearchedParam, searched_params
from autocnn.spec import Choices, Range, Spec


@dataclass(frozen=True)
class CheckReport:
    """What validate prints: the data found, the search space, and anything worth a warning."""

    data: dict[str, str]
    params: list[SearchedParam]
    warnings: list[str] = field(default_factory=list)


def _values(value: object) -> list[int]:
    if isinstance(value, Range):
        return [int(value.low), int(value.high)]
    if isinstance(value, Choices):
        return [int(v) for v in value.choices]
    return [int(value)]  # type: ignore[call-overload]


def check_models(spec: Spec) -> list[str]:
    """Depths that cannot fit the image size: all too deep is an error, some a warning."""
    warnings: list[str] = []
    space = spec.models.custom_cnn
    if space is not None:
        limit = max_depth(spec.data.image_size)
        depths = _values(space.depth)
        if min(depths) > limit:
            raise SpecError(
                [
                    f"models.{CUSTOM_CNN}.depth: at most {limit} blocks fit {spec.data.image_size} px images "
                    f"(each block halves the size), got {min(depths)}"
                ]
            )
        if max(depths) > limit:
            warnings.append(
                f"models.{CUSTOM_CNN}.depth: depths above {limit} are too deep for "
                f"{spec.data.image_size} px images; those trials will fail with that reason"
            )
    return warnings


def check_data(spec: Spec, cache: DataCache) -> dict[str, str]:
    """Find the classes and the split without decoding a pixel."""
    data = spec.data
    if data.source == "digits":
        return {
            "source": "scikit-learn digits (1797 images, 10 classes, built in)",
            "split": f"val {data.split.val}, test {data.split.test} (stratified, seed {spec.seed})",
            "image size": f"{data.image_size} px",
        }
    index = cache.index()
    counts = index.counts()
    how = "pre-split folders" if index.presplit else f"stratified split, seed {spec.seed}"
    return {
        "source": str(spec.resolve_path(data.root or "")),
        "classes": f"{len(index.classes)}: {', '.join(index.classes[:8])}{' ...' if len(index.classes) > 8 else ''}",
        "images": ", ".join(f"{name} {n}" for name, n in counts.items()) + f" ({how})",
        "image size": f"{data.image_size} px",
    }


def check_spec(spec: Spec, cache: DataCache | None = None) -> CheckReport:
    """Raise the first blocking problem as an AutocnnError; return what validate shows."""
    cache = cache or DataCache(spec)
    warnings = check_models(spec)
    data = check_data(spec, cache)
    return CheckReport(data=data, params=searched_params(spec), warnings=warnings)
