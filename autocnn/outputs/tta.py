"""Whether test-time augmentation earns its cost: judged on val, paired, before it is shipped.

TTA multiplies a prediction's cost by its number of views, and often gains nothing. Each policy
(flip, crops, both) is scored on val images the judged weights never trained on, against the
same model without TTA on the same images. The comparison is paired, so the test is McNemar's:
of the images the two disagree on, TTA must fix more than it breaks by NOISE_Z standard errors
(b - c > z * sqrt(b + c)). The best policy that passes is kept; none passing keeps none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from autocnn.models.folder import Preprocessing
from autocnn.training.budget import NOISE_Z

if TYPE_CHECKING:
    from torch import nn

POLICIES = {"flip": (True, False), "crops": (False, True), "flip+crops": (True, True)}  # name -> (flip, crops)
NONE = "none"


@dataclass(frozen=True)
class PolicyScore:
    name: str
    accuracy: float
    fixed: int  # val images TTA gets right and the plain model wrong
    broken: int  # and the other way round

    @property
    def significant(self) -> bool:
        return self.fixed - self.broken > NOISE_Z * math.sqrt(self.fixed + self.broken)


@dataclass(frozen=True)
class TtaChoice:
    """The policy kept (or NONE), every policy's val score, and the latency each costs."""

    policy: str
    plain_accuracy: float
    n_val: int
    scores: tuple[PolicyScore, ...]
    judged_on: str  # whose weights were scored on val
    latency_ms: dict[str, float] = field(default_factory=dict)  # NONE and the kept policy

    @property
    def flip(self) -> bool:
        return POLICIES.get(self.policy, (False, False))[0]

    @property
    def crops(self) -> bool:
        return POLICIES.get(self.policy, (False, False))[1]

    def reason(self) -> str:
        if self.policy == NONE:
            best = max(self.scores, key=lambda s: s.accuracy, default=None)
            if best is None:
                return "no policy to try"
            return (
                f"not kept: the best policy ({best.name}, val accuracy {best.accuracy:.4f} against "
                f"{self.plain_accuracy:.4f}) fixed {best.fixed} and broke {best.broken} of {self.n_val} val images, "
                "within the noise"
            )
        kept = next(s for s in self.scores if s.name == self.policy)
        return (
            f"{self.policy} kept: val accuracy {kept.accuracy:.4f} against {self.plain_accuracy:.4f}, "
            f"fixing {kept.fixed} and breaking {kept.broken} of {self.n_val} val images (beyond the noise)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "reason": self.reason(),
            "judged_on": self.judged_on,
            "plain_val_accuracy": self.plain_accuracy,
            "n_val": self.n_val,
            "policies": [
                {"name": s.name, "val_accuracy": s.accuracy, "fixed": s.fixed, "broken": s.broken} for s in self.scores
            ],
            "latency_ms": self.latency_ms,
        }


def policies_for(flips_allowed: bool) -> list[str]:
    """The policies worth trying: no mirror image where it would change the label."""
    return [name for name, (flip, _) in POLICIES.items() if flips_allowed or not flip]


def choose_tta(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    pre: Preprocessing,
    *,
    flips_allowed: bool,
    judged_on: str,
) -> TtaChoice:
    """Score each policy on val against the plain model; keep the most accurate significant one."""
    from autocnn.models.tta import TestTimeAugmented
    from autocnn.outputs.bundle import torch_logits

    plain = torch_logits(model, images, pre).argmax(axis=1) == labels
    scores = []
    for name in policies_for(flips_allowed):
        flip, crops = POLICIES[name]
        wrapped = TestTimeAugmented(model, flip=flip, crops=crops, image_size=pre.image_size)
        right = torch_logits(wrapped, images, pre).argmax(axis=1) == labels
        scores.append(PolicyScore(name, float(right.mean()), int((right & ~plain).sum()), int((plain & ~right).sum())))
    passing = [s for s in scores if s.significant]
    best = max(passing, key=lambda s: s.accuracy, default=None)  # ties: the first, the fewest views
    return TtaChoice(best.name if best else NONE, float(plain.mean()), len(labels), tuple(scores), judged_on)


def flips_allowed(hflip: Any) -> bool:
    """True when the spec's `augment.hflip` (a value, range or choices) lets any image be mirrored."""
    if isinstance(hflip, (int, float)):
        return hflip > 0
    high = getattr(hflip, "high", None)
    if high is not None:
        return high > 0
    return any(c > 0 for c in getattr(hflip, "choices", []))
