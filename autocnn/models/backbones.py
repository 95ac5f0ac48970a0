"""timm backbones: name checks, the local weight cache, freeze modes, heads and preprocessing.

Studies never download: the Hugging Face hub runs offline (HF_HUB_OFFLINE=1 unless the user set
it), and `check_backbones` finds missing weights before trial 1, in the hub cache that
`autocnn weights fetch` fills. timm is the only source of truth for names, weight locations,
parameter groups and mean/std; this module only decides what trains and at which rate.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import nn

from autocnn.errors import AutocnnError, SpecError
from autocnn.models import CUSTOM_CNN, Preprocess

if TYPE_CHECKING:
    from autocnn.spec import Spec, TimmSpace

FREEZE_MODES = ("none", "backbone", "partial")
_TRUE = {"1", "ON", "YES", "TRUE"}


class WeightsError(AutocnnError):
    """Pretrained weights not on this machine: not in the cache, or not at the path given."""


# --------------------------------------------------------------------------- the hub, offline


def use_offline_hub() -> None:
    """Default HF_HUB_OFFLINE=1: without it a missing file costs ~46 s of retries, not 0.1 s."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    # The constant is read once at import; honour the variable even if the hub was imported first.
    constants.HF_HUB_OFFLINE = os.environ["HF_HUB_OFFLINE"].upper() in _TRUE


@contextmanager
def _online_hub() -> Iterator[None]:
    """Downloads only on an explicit `autocnn weights fetch`."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


# --------------------------------------------------------------------------- names


def is_timm_name(name: str) -> bool:
    """`resnet50`, or a tagged `resnet50.a1_in1k` whose tag timm knows."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        return False
    if "." in name:
        try:
            get_pretrained_cfg(name)
        except RuntimeError:
            return False
    return True


def check_name(name: str, *, path: str) -> None:
    """A typo gets the closest timm names (and custom_cnn) suggested."""
    import timm

    if is_timm_name(name):
        return
    close = difflib.get_close_matches(name, [CUSTOM_CNN, *timm.list_models()], n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise SpecError([f"{path}: unknown model '{name}': not custom_cnn and not a timm model{hint}"])


def pretrained_cfg(name: str) -> dict[str, Any] | None:
    """timm's default pretrained config for a name (its default tag unless one is given)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else None


def _weight_source(name: str) -> tuple[str, Any]:
    """('hf-hub' | 'url' | '', location): the same choice timm makes when it loads weights."""
    from timm.models._builder import _resolve_pretrained_source

    cfg = pretrained_cfg(name)
    return _resolve_pretrained_source(cfg) if cfg is not None else ("", "")


def no_weights_problem(name: str, *, path: str) -> str | None:
    """Some timm models have no pretrained weights at all (mobilenetv2_035 is 'untrained')."""
    import timm

    if _weight_source(name)[0]:
        return None
    arch = name.split(".")[0]
    archs = sorted({n.split(".")[0] for n in timm.list_models(pretrained=True)} - {arch})
    close = difflib.get_close_matches(arch, archs, n=3)
    hint = f"; pretrained relatives: {', '.join(close)}" if close else ""
    return (
        f"{path}.pretrained: timm has no pretrained weights for '{name}'{hint}; "
        "use false or a local file"
    )


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
            rows.append(
                CachedWeights(
                    repo.repo_id.removeprefix("timm/"), repo.size_on_disk / 1e6, repo.repo_path
                )
            )
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if checkpoints.is_dir():
        for file in sorted(checkpoints.iterdir()):
            if file.is_file():
                rows.append(
                    CachedWeights(f"(torch hub) {file.name}", file.stat().st_size / 1e6, file)
                )
    return rows


def fetch_weights(names: list[str]) -> list[tuple[str, Path]]:
    """Download timm's weights for each name into the hub cache: the only step that goes online."""
    import timm

    for name in names:
        check_name(name, path=name)
    fetched: list[tuple[str, Path]] = []
    for name in names:
        problem = no_weights_problem(name, path=name)
        if problem:
            raise WeightsError(problem.replace(f"{name}.pretrained: ", f"{name}: ", 1))
        try:
            with _online_hub():
                timm.create_model(name, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - network and hub errors all mean "not fetched"
            raise WeightsError(
                f"{name}: download failed ({exc.__class__.__name__}: {exc})"
            ) from None
        fetched.append((name, cached_weights(name) or hub_cache_dir()))
    return fetched


# --------------------------------------------------------------------------- checks before trial 1


def timm_spaces(spec: Spec) -> dict[str, TimmSpace]:
    return {name: space for name, space in spec.models.spaces().items() if name != CUSTOM_CNN}  # type: ignore[misc]


def missing_weights_message(missing: list[str]) -> str:
    names = " ".join(missing)
    return (
        f"pretrained weights for {', '.join(missing)} are not in the local cache "
        f"({hub_cache_dir()}) "
        f"and studies never download. Either run `autocnn weights fetch {names}` on a connected "
        "machine (it fills that same cache; copy it here or share HF_HOME), or set "
        "`models.<name>.pretrained` to a local .safetensors / .pth file (or false for random init)"
    )


def check_backbones(spec: Spec) -> list[str]:
    """Names exist, weight files exist, pretrained weights are cached; returns warnings."""
    use_offline_hub()
    problems: list[str] = []
    missing: list[str] = []
    warnings: list[str] = []
    for name, space in timm_spaces(spec).items():
        path = f"models.{name}"
        try:
            check_name(name, path=path)
        except SpecError as exc:
            problems += exc.problems
            continue
        if isinstance(space.pretrained, str):
            file = spec.resolve_path(space.pretrained)
            if not file.is_file():
                problems.append(
                    f"{path}.pretrained: weight file not found: {file} "
                    "(paths are relative to the spec)"
                )
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
        return [
            f"{path}.unfreeze_last: only used with freeze: partial, which this model never gets"
        ]
    return []


# --------------------------------------------------------------------------- building


class TimmClassifier(nn.Module):
    """A timm body and a head; frozen BatchNorm layers stay in eval mode while the rest trains.

    Frozen BN must not update its running statistics from the new data, or the "frozen"
    backbone's outputs drift anyway; `train()` is the one place every trainer goes through.
    """

    def __init__(self, body: nn.Module, head: nn.Module | None, *, name: str) -> None:
        super().__init__()
        self.body = body
        self.head = head if head is not None else nn.Identity()
        self.has_head = head is not None
        self.name = name
        self.freeze = "none"
        self.frozen_norms: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def train(self, mode: bool = True) -> TimmClassifier:
        super().train(mode)
        for name in self.frozen_norms:
            self.get_submodule(name).eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        """The new head's parameters, or timm's classifier's when there is no head."""
        module = self.head if self.has_head else self.body.get_classifier()
        return list(module.parameters())


def build_head(
    in_features: int, *, num_classes: int, hidden: int, activation: str, dropout: float
) -> nn.Sequential:
    """[Linear(hidden) + activation] + dropout + Linear(classes), on pooled features."""
    from autocnn.models.custom_cnn import ACTIVATIONS

    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(in_features, hidden), ACTIVATIONS[activation]()]
        in_features = hidden
    layers += [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
    return nn.Sequential(*layers)


def create_body(
    name: str, pretrained: bool | str, *, num_classes: int, drop_rate: float, base_dir: Path | None
) -> nn.Module:
    """timm.create_model; a file loads via pretrained_cfg_overlay (weights_only, new head)."""
    import timm

    use_offline_hub()
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "drop_rate": drop_rate,
        "pretrained": bool(pretrained),
    }
    where = "timm's cache"
    if isinstance(pretrained, str):
        file = Path(pretrained).expanduser()
        file = file if file.is_absolute() else (base_dir or Path.cwd()) / file
        if not file.is_file():
            raise WeightsError(f"models.{name}.pretrained: weight file not found: {file}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
        where = str(file)
    try:
        return timm.create_model(name, **kwargs)
    except OSError as exc:
        raise WeightsError(
            f"{name}: {missing_weights_message([name])} ({exc.__class__.__name__})"
        ) from None
    except (RuntimeError, KeyError, ValueError) as exc:
        if not pretrained:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise WeightsError(
            f"models.{name}.pretrained: {where} does not load into {name}: {first}"
        ) from None


def build_backbone(
    name: str,
    params: dict[str, Any],
    *,
    num_classes: int,
    base_dir: Path | None = None,
    load_weights: bool = True,
) -> TimmClassifier:
    """A trial's backbone: weights, head and freeze mode as sampled.

    `load_weights=False` skips the pretrained weights, for callers that load a trained state dict.
    """
    head_params = params.get("head")
    body = create_body(
        name,
        params.get("pretrained", True) if load_weights else False,
        num_classes=0 if head_params else num_classes,
        drop_rate=0.0 if head_params else float(params.get("dropout", 0.0)),
        base_dir=base_dir,
    )
    head = None
    if head_params:
        features = getattr(body, "head_hidden_size", None) or body.num_features
        head = build_head(
            int(features),
            num_classes=num_classes,
            hidden=int(head_params.get("hidden", 0)),
            activation=str(head_params.get("activation", "relu")),
            dropout=float(head_params.get("dropout", 0.0)),
        )
    model = TimmClassifier(body, head, name=name)
    apply_freeze(
        model, effective_freeze(params), unfreeze_last=int(params.get("unfreeze_last", 1))
    )
    return model


def effective_freeze(params: dict[str, Any]) -> str:
    """`backbone_lr_mult: 0` is the same as a frozen backbone, BatchNorm included."""
    mode = str(params.get("freeze", "none"))
    return "backbone" if float(params.get("backbone_lr_mult", 1.0)) == 0 else mode


# --------------------------------------------------------------------------- freezing


def backbone_groups(model: TimmClassifier) -> list[list[nn.Parameter]]:
    """The body's parameters in timm's coarse groups (stem -> stages -> last), head left out."""
    from timm.models import group_parameters

    body = model.body
    head = {id(p) for p in model.head_parameters()}
    named = dict(body.named_parameters())
    try:
        groups = group_parameters(body, body.group_matcher(coarse=True))
        ordered = [[named[n] for n in names] for _, names in sorted(groups.items())]
    except (AttributeError, NotImplementedError):  # no matcher: top-level children in order
        ordered = [list(child.parameters()) for child in body.children()]
    cleaned = [[p for p in group if id(p) not in head] for group in ordered]
    return [group for group in cleaned if group]


def apply_freeze(model: TimmClassifier, mode: str, *, unfreeze_last: int = 1) -> None:
    """none: all train; backbone: the head only; partial: the head and the last N groups."""
    if mode not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {mode!r}")
    trainable = {id(p) for p in model.head_parameters()}
    if mode == "none":
        trainable = {id(p) for p in model.parameters()}
    elif mode == "partial":
        for group in backbone_groups(model)[-unfreeze_last:]:
            trainable |= {id(p) for p in group}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    model.freeze = mode
    model.frozen_norms = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not any(p.requires_grad for p in module.parameters(recurse=False))
        and mode != "none"
    ]
    model.train(model.training)


def param_groups(
    model: TimmClassifier, *, lr: float, backbone_lr_mult: float
) -> list[dict[str, Any]]:
    """Optimizer groups: backbone at lr * backbone_lr_mult, then head at lr (the logged lr)."""
    head = [p for p in model.head_parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups: list[dict[str, Any]] = []
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"})
    groups.append({"params": head, "lr": lr, "name": "head"})
    return groups


# --------------------------------------------------------------------------- preprocessing


def backbone_preprocess(
    name: str, params: dict[str, Any], *, image_size: int | None
) -> Preprocess:
    """mean/std from timm's pretrained config; size: own key, else `image_size`, else timm's."""
    from timm.data import resolve_data_config

    cfg = pretrained_cfg(name)
    data = (
        resolve_data_config({}, pretrained_cfg=cfg)
        if cfg
        else resolve_data_config({"input_size": (3, 224, 224)})
    )
    size = params.get("image_size") or image_size or int(data["input_size"][-1])
    mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
    return Preprocess(image_size=int(size), mean=mean, std=std)  # type: ignore[arg-type]
