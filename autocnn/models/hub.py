"""timm names and pretrained weights, checked before trial 1 without importing torch or timm.

Weights are fetched on first use: before trial 1 a study downloads whatever pretrained weights
its spec needs and the cache lacks (`fetch_missing_weights`), into the Hugging Face hub cache that
`autocnn weights fetch` fills. Trials themselves only ever read that cache (timm runs with the hub
offline), so no trial waits on a network. Offline (`HF_HUB_OFFLINE=1`, no route, or the hub not
answering a connect within a few seconds) the study stops at once, naming the missing models.
Names and weight locations come from timm itself, read once per timm version into a small JSON
catalog, so `validate` and a study's offline failure take a fraction of a second instead of the
seconds that importing torch and timm costs.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from autocnn.downloads import DownloadProgress, offline_reason, tqdm_reporting_to, unreachable
from autocnn.errors import AutocnnError, SpecError
from autocnn.models.catalog import CUSTOM_CNN

if TYPE_CHECKING:
    from autocnn.spec.schema import ModelsSpec, TimmSpace

# --------------------------------------------------------------------------- the catalog


def catalog_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "autocnn" / f"timm-{version('timm')}-catalog.json"


@cache
def timm_catalog() -> dict[str, list[Any]]:
    """Every timm name (and pretrained tag) -> [weight source, location], per timm version."""
    path = catalog_path()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    entries = _read_timm_catalog()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(entries, handle)
    os.replace(tmp, path)
    return entries


def _read_timm_catalog() -> dict[str, list[Any]]:
    import timm
    from timm.models import get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source

    entries: dict[str, list[Any]] = {}
    for name in [*timm.list_models(), *timm.list_pretrained()]:
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError:
            continue
        source, location = _resolve_pretrained_source(cfg.to_dict()) if cfg is not None else ("", "")
        entries[name] = [source, list(location) if isinstance(location, tuple) else location]
    return entries


class WeightsError(AutocnnError):
    """Pretrained weights not on this machine: not in the cache, or not at the path given."""


# --------------------------------------------------------------------------- the hub, offline


def weight_file_problem(file: Path, *, path: str) -> str | None:
    """Why a `pretrained` weight file cannot be used, or None: a missing file and one this user
    may not read (Path.is_file raises on a permission error) are both the user's to fix."""
    try:
        if file.is_file():
            with file.open("rb"):
                return None
    except OSError as exc:
        return f"{path}.pretrained: cannot read weight file {file} ({exc.strerror or exc})"
    return f"{path}.pretrained: weight file not found: {file} (paths are relative to the spec)"


def use_offline_hub() -> None:
    """timm reads weights with the hub offline: a missing file fails in 0.1 s, not ~46 s of retries.

    Only huggingface_hub's own switch is set, not the HF_HUB_OFFLINE variable: that one is the
    user's, and says whether autocnn may fetch missing weights at all.
    """
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True


@contextmanager
def _online_hub() -> Iterator[None]:
    """Downloads happen only inside this, before trial 1 or in `autocnn weights fetch`."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_endpoint() -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import): a mirror or a test hub."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


# --------------------------------------------------------------------------- names


def is_timm_name(name: str) -> bool:
    """`resnet50`, or a tagged `resnet50.a1_in1k` whose tag timm knows."""
    return name in timm_catalog()


def check_name(name: str, *, path: str) -> None:
    """A typo gets the closest timm names (and custom_cnn) suggested."""
    if is_timm_name(name):
        return
    names = [n for n in timm_catalog() if "." not in n]
    close = difflib.get_close_matches(name, [CUSTOM_CNN, *names], n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise SpecError([f"{path}: unknown model '{name}': not custom_cnn and not a timm model{hint}"])


def _weight_source(name: str) -> tuple[str, Any]:
    """('hf-hub' | 'url' | '', location): the same choice timm makes when it loads weights."""
    source, location = timm_catalog().get(name, ["", ""])
    return source, tuple(location) if isinstance(location, list) else location


def no_weights_problem(name: str, *, path: str) -> str | None:
    """Some timm models have no pretrained weights at all (mobilenetv2_035 is 'untrained')."""
    if _weight_source(name)[0]:
        return None
    arch = name.split(".")[0]
    archs = sorted({n.split(".")[0] for n, (source, _) in timm_catalog().items() if source} - {arch})
    close = difflib.get_close_matches(arch, archs, n=3)
    hint = f"; pretrained relatives: {', '.join(close)}" if close else ""
    return f"{path}.pretrained: timm has no pretrained weights for '{name}'{hint}; use false or a local file"


# --------------------------------------------------------------------------- the weight cache


def _hub_filenames(filename: str | None) -> list[str]:
    """The files timm tries, in its order: the safetensors twin first (timm.models._hub)."""
    filename = filename or "pytorch_model.bin"
    if filename.endswith(".safetensors"):
        return [filename]
    if filename == "pytorch_model.bin":
        return ["model.safetensors", filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def cached_weights(name: str) -> Path | None:
    """The local file `timm.create_model(name, pretrained=True)` would load, if it is here."""
    from huggingface_hub import try_to_load_from_cache

    source, location = _weight_source(name)
    if source == "hf-hub":
        hub_id, filename = location if isinstance(location, tuple) else (location, None)
        repo, _, revision = hub_id.partition("@")
        for candidate in _hub_filenames(filename):
            found = try_to_load_from_cache(repo, candidate, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None
    if source == "url":
        import torch

        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(location).path).name
        return file if file.is_file() else None
    return None


@dataclass(frozen=True)
class CachedWeights:
    """One row of `autocnn weights list`."""

    model: str
    size_mb: float
    path: Path


def list_cached_weights() -> list[CachedWeights]:
    """timm weights in the hub cache (what `weights fetch` filled), plus torch hub checkpoints."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    rows: list[CachedWeights] = []
    try:
        repos = scan_cache_dir(hub_cache_dir()).repos
    except CacheNotFound:
        repos = frozenset()
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_type == "model" and repo.repo_id.startswith("timm/"):
            rows.append(CachedWeights(repo.repo_id.removeprefix("timm/"), repo.size_on_disk / 1e6, repo.repo_path))
    import torch

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if checkpoints.is_dir():
        for file in sorted(checkpoints.iterdir()):
            if file.is_file():
                rows.append(CachedWeights(f"(torch hub) {file.name}", file.stat().st_size / 1e6, file))
    return rows


def weights_url(name: str) -> str:
    """Where `name`'s weights come from: the hub (HF_ENDPOINT) or the URL timm knows."""
    source, location = _weight_source(name)
    return str(location) if source == "url" else hub_endpoint()


def download_weights(name: str, *, progress: DownloadProgress | None = None) -> Path:
    """One model's weights into the cache timm reads, trying the files in timm's order."""
    source, location = _weight_source(name)
    if source == "url":
        return _download_url_weights(str(location))
    from huggingface_hub.errors import RemoteEntryNotFoundError

    hub_id, filename = location if isinstance(location, tuple) else (location, None)
    repo, _, revision = hub_id.partition("@")
    candidates = _hub_filenames(filename)
    for candidate in candidates[:-1]:
        try:
            return _hub_download(repo, candidate, revision=revision or None, label=f"weights {name}", progress=progress)
        except RemoteEntryNotFoundError:
            continue  # no safetensors twin: the next file timm would try
    return _hub_download(repo, candidates[-1], revision=revision or None, label=f"weights {name}", progress=progress)


def _hub_download(
    repo: str, filename: str, *, revision: str | None, label: str, progress: DownloadProgress | None
) -> Path:
    from huggingface_hub import hf_hub_download

    with _online_hub():
        found = hf_hub_download(
            repo,
            filename,
            revision=revision,
            endpoint=hub_endpoint(),
            tqdm_class=tqdm_reporting_to(label, progress),
        )
    return Path(found)


def _download_url_weights(url: str) -> Path:
    """Older timm weights live at a URL: torch hub's checkpoint folder, written via a temp file."""
    import torch

    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(file), progress=False)
    return file


def fetch_weights(names: list[str], *, progress: DownloadProgress | None = None) -> list[tuple[str, Path]]:
    """Download timm's weights for each name into the hub cache (`autocnn weights fetch`)."""
    for name in names:
        check_name(name, path=name)
    fetched: list[tuple[str, Path]] = []
    for name in names:
        problem = no_weights_problem(name, path=name)
        if problem:
            raise WeightsError(problem.replace(f"{name}.pretrained: ", f"{name}: ", 1))
        if reason := unreachable(weights_url(name)):
            raise WeightsError(f"{name}: cannot download: {reason}")
        fetched.append((name, _download_or_explain(name, progress)))
    return fetched


def _download_or_explain(name: str, progress: DownloadProgress | None) -> Path:
    try:
        return download_weights(name, progress=progress)
    except Exception as exc:  # noqa: BLE001 - network and hub errors all mean "not fetched"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(f"{name}: download failed ({exc.__class__.__name__}: {first})") from None


def missing_pretrained(models: ModelsSpec) -> list[str]:
    """timm models the spec wants timm's weights for and the cache lacks (bad names: check_backbones)."""
    missing = []
    for name, space in timm_spaces(models).items():
        if space.pretrained is True and is_timm_name(name) and no_weights_problem(name, path=name) is None:
            if cached_weights(name) is None:
                missing.append(name)
    return missing


def fetch_missing_weights(
    models: ModelsSpec, *, say: Callable[[str], None] | None = None, progress: DownloadProgress | None = None
) -> list[str]:
    """Fetch, before trial 1, the pretrained weights the spec needs and the cache lacks.

    Offline the study stops here, in seconds, naming every missing model: one connect to the
    hub (or the weights' host) under a short timeout decides, never a library's retries.
    """
    missing = missing_pretrained(models)
    if not missing:
        return []
    for url in dict.fromkeys(weights_url(name) for name in missing):
        if reason := offline_reason(url):
            raise WeightsError(missing_weights_message(missing, reason=reason))
    for name in missing:
        if say is not None:
            say(f"fetching pretrained weights for {name} from {weights_url(name)} into {hub_cache_dir()}")
        _download_or_explain(name, progress)
    return missing


# --------------------------------------------------------------------------- checks before trial 1


def timm_spaces(models: ModelsSpec) -> dict[str, TimmSpace]:
    return {name: space for name, space in models.spaces().items() if name != CUSTOM_CNN}  # type: ignore[misc]


def missing_weights_message(missing: list[str], *, reason: str | None = None) -> str:
    """The one line that names the models and both ways out; `reason` says why nothing was fetched."""
    names = " ".join(missing)
    why = f" and cannot be fetched now ({reason})" if reason else ""
    return (
        f"pretrained weights for {', '.join(missing)} are not in the local cache "
        f"({hub_cache_dir()}){why}. Either run `autocnn weights fetch {names}` on a connected "
        "machine (it fills that same cache; copy it here or share HF_HOME), or set "
        "`models.<name>.pretrained` to a local .safetensors / .pth file (or false for random init)"
    )


def check_backbones(models: ModelsSpec) -> list[str]:
    """Names exist, weight files exist (their paths absolute since the spec was loaded),
    pretrained weights are cached; returns warnings."""
    use_offline_hub()
    problems: list[str] = []
    missing: list[str] = []
    warnings: list[str] = []
    for name, space in timm_spaces(models).items():
        path = f"models.{name}"
        try:
            check_name(name, path=path)
        except SpecError as exc:
            problems += exc.problems
            continue
        if isinstance(space.pretrained, str):
            if problem := weight_file_problem(Path(space.pretrained), path=path):
                problems.append(problem)
        elif space.pretrained and (problem := no_weights_problem(name, path=path)):
            problems.append(problem)
        elif space.pretrained and cached_weights(name) is None:
            missing.append(name)
        warnings += _unused_keys(path, space)
    if problems:
        raise SpecError(problems + ([missing_weights_message(missing)] if missing else []))
    if missing:
        raise WeightsError(missing_weights_message(missing))
    return warnings


def _unused_keys(path: str, space: TimmSpace) -> list[str]:
    freeze = space.freeze
    modes = set(getattr(freeze, "choices", [freeze]))
    if "unfreeze_last" in space.model_fields_set and "partial" not in modes:
        return [f"{path}.unfreeze_last: only used with freeze: partial, which this model never gets"]
    return []
