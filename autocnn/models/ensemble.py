"""Several trained models as one: each sees the image at its own size and normalisation, and
their softmax outputs are averaged with weights.

One module means one ONNX graph, one `preprocess.json` and one `predict` path for an ensemble
as for a single model. Its input is the image at the largest member's side scaled to [0, 1]
(mean 0, std 1 in preprocess.json's terms); each member resizes it in the graph (bilinear,
antialiased, as decoding resizes images) and applies its own mean and std. Its output is the log
of the weighted mean probability: softmax of it gives the ensemble's probabilities back, argmax
its label, so every reader of "logits" handles it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's own convention

from autocnn.models.folder import Preprocessing

ENSEMBLE = "ensemble"  # model.json's `model` for an ensemble
MIN_PROB = 1e-12  # the log of a probability never reaches -inf


def ensemble_preprocessing(members: Sequence[Preprocessing]) -> Preprocessing:
    """The ensemble's own input: the largest member side, raw [0, 1] pixels."""
    return Preprocessing(max(p.image_size for p in members), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class Member(nn.Module):
    """One model behind its own resize and normalisation."""

    def __init__(self, model: nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.image_size = pre.image_size
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return self.model((x - self.mean) / self.std).float()


class Ensemble(nn.Module):
    """Weighted mean of the members' probabilities, returned as its log."""

    def __init__(self, members: Sequence[nn.Module], pres: Sequence[Preprocessing], weights: Sequence[float]) -> None:
        super().__init__()
        if not (len(members) == len(pres) == len(weights)) or not members:
            raise ValueError("an ensemble needs one preprocessing and one weight per member, and a member")
        total = float(sum(weights))
        self.members = nn.ModuleList(Member(m, p) for m, p in zip(members, pres, strict=True))
        self.register_buffer("weights", torch.tensor([w / total for w in weights], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = sum(w * member(x).softmax(dim=1) for w, member in zip(self.weights, self.members, strict=True))
        return torch.log(torch.clamp(mixed, min=MIN_PROB))  # type: ignore[arg-type]


def member_description(pre: Preprocessing, model: str, model_params: dict[str, Any], trial: int) -> dict[str, Any]:
    """How to rebuild one member: model.json's `members` entry."""
    return {
        "trial": trial,
        "model": model,
        "model_params": model_params,
        "image_size": pre.image_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
    }


def build_ensemble(info: dict[str, Any], num_classes: int) -> Ensemble:
    """An untrained ensemble shaped as model.json describes it; its weights.pt fills it."""
    from autocnn.models.build import build_model

    members, pres = [], []
    for member in info["members"]:
        pre = Preprocessing(int(member["image_size"]), tuple(member["mean"]), tuple(member["std"]))
        model = build_model(
            member["model"],
            member["model_params"],
            num_classes=num_classes,
            image_size=pre.image_size,
            load_weights=False,
        )
        members.append(model)
        pres.append(pre)
    return Ensemble(members, pres, [float(w) for w in info["weights"]])
