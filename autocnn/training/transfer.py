"""Linear probe, then fine-tune: a pretrained backbone's new head starts from a fitted probe.

A new head starts random. Fine-tuned from there, its first large and noisy gradients flow into
the pretrained layers and wear away the features that made the weights worth loading; on small
data the trial then spends its budget relearning them. Fitting the head first on the frozen
backbone's pooled features (a logistic regression, seconds on features the study caches once)
and fine-tuning from that head keeps those features (Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022). A fitted probe is kept in
the study's feature cache, so every trial on the same features reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

PROBE_C = 1.0  # inverse L2 strength, on standardised features
PROBE_MAX_ITER = 1000
ABSENT_CLASS_BIAS = -10.0  # a class with no training image: its logit stays far below the others


@dataclass(frozen=True)
class Probe:
    """A fitted linear head in the head's own terms (raw pooled features in, logits out)."""

    weight: np.ndarray  # (classes, features)
    bias: np.ndarray  # (classes,)
    c: float  # its inverse L2 strength
    train_accuracy: float

    def describe(self) -> str:
        return f"head fitted first as a linear probe on cached features (C {self.c:g}, train accuracy {self.train_accuracy:.3f})"


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The head's one Linear layer, or None when the head has a hidden layer (a probe is linear)."""
    from torch import nn

    from autocnn.models.backbones import FeatureHead

    linears = [m for m in FeatureHead(model).modules() if isinstance(m, nn.Linear)]  # type: ignore[arg-type]
    return linears[0] if len(linears) == 1 else None


def fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int) -> Probe:
    """Multinomial logistic regression on standardised features at scikit-learn's default
    strength (C = 1), folded back into raw-feature terms. One fit, not a cross-validated choice
    of C: it is a starting point that fine-tuning moves on from, and it must cost seconds."""
    from sklearn.linear_model import LogisticRegression

    x = features.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    model = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER).fit(z, labels)
    weight, bias = _per_class(model.coef_, model.intercept_, model.classes_, num_classes)
    scaled = weight / std
    return Probe(
        scaled.astype(np.float32), (bias - scaled @ mean).astype(np.float32), PROBE_C, float(model.score(z, labels))
    )


def _per_class(
    coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One row per class of the model, whatever sklearn returned: a single row for two classes
    (the second class's logit against a zero first), and no row for a class absent in training."""
    if coef.shape[0] == 1:  # binary: logit(c1) - logit(c0) = w.x + b; split it symmetrically
        coef = np.stack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, ABSENT_CLASS_BIAS)
    weight[classes], bias[classes] = coef, intercept
    return weight, bias


def load_probe(head: nn.Linear, probe: Probe) -> None:
    """The probe's weights into the head's Linear, in place."""
    import torch

    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(probe.weight).to(head.weight))
        head.bias.copy_(torch.from_numpy(probe.bias).to(head.bias))


def probe_applies(params: dict, *, load_weights: bool) -> bool:
    """A pretrained backbone with `probe_first` on, whatever it freezes: a frozen one then trains
    its head on from the probe (gradient steps on a new head reached a probe's accuracy on the
    same features only after many more steps than a short trial has), one that fine-tunes starts
    from it. Random weights hold nothing a probe could keep."""
    pretrained = params.get("pretrained", True)
    return bool(params.get("probe_first", False)) and bool(pretrained) and load_weights


def probe_key(features_digest: str, num_classes: int) -> str:
    return f"probe:{features_digest}:{num_classes}"


def as_numpy(features: torch.Tensor) -> np.ndarray:
    return features.detach().cpu().numpy()
