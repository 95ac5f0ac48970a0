"""Every check `autocnn study` runs before trial 1, shared with `autocnn validate`.

Nothing here trains or writes, and torch (with timm) is imported only for specs that name
timm backbones: a spec that passes here reaches trial 1.
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
    """A custom CNN depth that pools the image away is a spec error, caught before trial 1.

    Failed trials teach the sampler nothing, so a range with impossible depths would keep
    producing failures; better to say so once, with the limit.
    """
    space = spec.models.custom_cnn
    if space is not None:
        limit = max_depth(spec.data.image_size)
        deepest = max(_values(space.depth))
        if deepest > limit:
            key = "high" if isinstance(space.depth, Range) else ("choices" if isinstance(space.depth, Choices) else "")
            path = ".".join(filter(None, [f"models.{CUSTOM_CNN}.depth", key]))
            raise SpecError(
                [
                    f"{path}: at most {limit} blocks fit {spec.data.image_size} px images "
                    f"(each block halves the size), got {deepest}"
                ]
            )
    return []


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
    if set(spec.models.spaces()) - {CUSTOM_CNN}:
        from autocnn.models.hub import check_backbones

        warnings += check_backbones(spec)
    data = check_data(spec, cache)
    return CheckReport(data=data, params=searched_params(spec), warnings=warnings)
