"""Every check `autocnn study` runs before trial 1, shared with `autocnn validate`.

Nothing here trains or writes, and torch (with timm) is imported only for specs that name
timm backbones: a spec that passes here reaches trial 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autocnn.data.cache import DataCache
from autocnn.data.folders import FileIndex
from autocnn.errors import SpecError
from autocnn.models.catalog import CUSTOM_CNN, max_depth
from autocnn.search.space import SearchedParam, searched_params
from autocnn.spec.fields import Choices, Range
from autocnn.spec.schema import Spec
from autocnn.training.costs import costs_needed


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
    if data.source != "imagefolder":
        return named_data_table(spec)
    index = cache.index()
    counts = index.counts()
    how = "pre-split folders" if index.presplit else f"stratified split, seed {spec.seed}"
    table = {
        "source": str(data.root),
        "classes": f"{len(index.classes)}: {', '.join(index.classes[:8])}{' ...' if len(index.classes) > 8 else ''}",
        "images": ", ".join(f"{name} {n}" for name, n in counts.items()) + f" ({how})",
        "image size": f"{data.image_size} px",
    }
    left_out = _left_out(index)
    if left_out:
        table["not loaded"] = left_out
    return table


def named_data_table(spec: Spec) -> dict[str, str]:
    """A dataset by name: what it is, where it is cached, how it is split (nothing is read here)."""
    from autocnn.data.named import NAMED, check_labels, dataset_dir

    data = spec.data
    labels = check_labels(data.source, data.labels)
    return {
        "source": f"{data.source} ({labels} labels): {NAMED[data.source].about}",
        "cache": str(dataset_dir(data.source)),
        "split": f"its own test split; val {data.split.val} of train (stratified, seed {spec.seed})",
        "image size": f"{data.image_size} px",
    }


def _left_out(index: FileIndex) -> str:
    """The table's one-line count; the files themselves are named in the warnings."""
    scan = index.scan
    if scan is None or not (scan.skipped or scan.ignored):
        return ""
    return f"{len(scan.skipped)} skipped, {len(scan.ignored)} ignored (named in the warnings above)"


def data_notes(spec: Spec, cache: DataCache) -> list[str]:
    """Files and folders under the data root that are not loaded as given, each named once, with why."""
    return cache.index().notes() if spec.data.source == "imagefolder" else []


def unreadable_images(cache: DataCache) -> list[str]:
    """Images that failed to decode, for whatever the cache has decoded so far (it decodes nothing)."""
    skipped = dict.fromkeys(item for data in cache.decoded() for item in data.skipped)
    return [f"skipped unreadable image {path} ({why})" for path, why in skipped]


def check_spec(spec: Spec, cache: DataCache | None = None) -> CheckReport:
    """Raise the first blocking problem as an AutocnnError; return what validate shows."""
    cache = cache or DataCache(spec.data, seed=spec.seed)
    warnings = check_models(spec)
    if set(spec.models.spaces()) - {CUSTOM_CNN}:
        from autocnn.models.hub import check_backbones

        warnings += check_backbones(spec.models)
    if spec.study.latency_device != "cpu" and "latency_ms" in costs_needed(spec.study):
        from autocnn.models.onnx import latency_providers

        latency_providers(spec.study.latency_device)  # no CUDA provider: one line, before trial 1
    data = check_data(spec, cache)
    warnings += data_notes(spec, cache)
    return CheckReport(data=data, params=searched_params(spec), warnings=warnings)
