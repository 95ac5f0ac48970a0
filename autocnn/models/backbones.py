"""timm backbones: name checks, the local weight cache, freeze modes, heads and preprocessing.

Names and the weight cache are checked in `autocnn.models.hub` (no torch import). timm is the
only source of truth for parameter groups and mean/std; this module only decides what trains
and at which rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocnn.models.catalog import Preprocess
from autocnn.models.hub import WeightsError, missing_weights_message, use_offline_hub, weight_file_problem

FREEZE_MODES = ("none", "backbone", "partial")


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


class FeatureHead(nn.Module):
    """What follows a TimmClassifier's pooled pre-logits features, as a module of its own: the new
    head, or timm's dropout (its `drop_rate`) and classifier.

    It holds the classifier's own modules, not copies: training it on cached features trains the
    whole classifier's head, which is then exported with its backbone as usual.
    """

    def __init__(self, model: TimmClassifier) -> None:
        super().__init__()
        if model.has_head:
            self.layers: nn.Module = model.head
        else:
            drop = float(getattr(model.body, "drop_rate", 0.0) or 0.0)
            self.layers = nn.Sequential(nn.Dropout(drop), model.body.get_classifier())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def build_head(in_features: int, *, num_classes: int, hidden: int, activation: str, dropout: float) -> nn.Sequential:
    """[Linear(hidden) + activation] + dropout + Linear(classes), on pooled features."""
    from autocnn.models.custom_cnn import ACTIVATIONS

    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(in_features, hidden), ACTIVATIONS[activation]()]
        in_features = hidden
    layers += [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
    return nn.Sequential(*layers)


def create_body(name: str, pretrained: bool | str, *, num_classes: int, drop_rate: float) -> nn.Module:
    """timm.create_model; a file loads via pretrained_cfg_overlay (weights_only, new head). A
    spec's weight file is absolute by now: its path was resolved when the spec was loaded."""
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
        if problem := weight_file_problem(file, path=f"models.{name}"):
            raise WeightsError(problem)
        kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
        where = str(file)
    try:
        return timm.create_model(name, **kwargs)
    except OSError as exc:
        raise WeightsError(f"{name}: {missing_weights_message([name])} ({exc.__class__.__name__})") from None
    except (RuntimeError, KeyError, ValueError) as exc:
        if not pretrained:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise WeightsError(f"models.{name}.pretrained: {where} does not load into {name}: {first}") from None


def build_backbone(
    name: str,
    params: dict[str, Any],
    *,
    num_classes: int,
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
        model,
        effective_freeze(params),
        unfreeze_last=int(params.get("unfreeze_last", 1)),
        keep_norm_stats=keeps_norm_stats(params),
    )
    return model


def keeps_norm_stats(params: dict[str, Any]) -> bool:
    """Whether BatchNorm keeps its pretrained running statistics while the backbone trains.

    In training mode BatchNorm normalises by the batch's own statistics; on images unlike
    ImageNet's (small, grey, upsampled) those differ so much from the pretrained ones that the
    features a fitted head expects vanish at the first step: efficientnet_lite0 fine-tuned on 500
    Fashion-MNIST images at 64 px started at a loss of 59 and stayed near chance, and reached 0.99
    training accuracy with the statistics kept. Keras's fine-tuning guide keeps them for the same
    reason. Random weights have no statistics worth keeping.
    """
    return params.get("norm_stats", "pretrained") == "pretrained" and bool(params.get("pretrained", True))


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


def apply_freeze(model: TimmClassifier, mode: str, *, unfreeze_last: int = 1, keep_norm_stats: bool = False) -> None:
    """none: all train; backbone: the head only; partial: the head and the last N groups.

    BatchNorm layers whose parameters are all frozen, and every one with `keep_norm_stats`, stay
    in eval mode while the rest trains: they normalise with their running statistics (their
    scales and shifts still train where they are not frozen)."""
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
        and (keep_norm_stats or (mode != "none" and not any(p.requires_grad for p in module.parameters(recurse=False))))
    ]
    model.train(model.training)


# --------------------------------------------------------------------------- preprocessing


def backbone_preprocess(name: str, params: dict[str, Any], *, image_size: int | None) -> Preprocess:
    """mean/std from timm's pretrained config; size: own key, else `image_size`, else timm's."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    found = get_pretrained_cfg(name)
    cfg = found.to_dict() if found is not None else None
    data = resolve_data_config({}, pretrained_cfg=cfg) if cfg else resolve_data_config({"input_size": (3, 224, 224)})
    size = params.get("image_size") or image_size or int(data["input_size"][-1])
    mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
    return Preprocess(image_size=int(size), mean=mean, std=std)  # type: ignore[arg-type]
