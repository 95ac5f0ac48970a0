"""Which trials to ship together: Caruana's forward selection on the trials' saved val predictions.

Every complete trial saves its softmax outputs on val at its best epoch, so an ensemble is chosen
without training anything: start from the best single trial, then add, with replacement, the
trial whose addition scores best on val (Caruana et al., "Ensemble Selection from Libraries of
Models", ICML 2004; AutoGluon's weighted ensemble does the same). Picking a trial again raises
its weight. A round that cannot improve on the current mix stops the selection: with few val
images, further rounds fit noise. The members are then refit as `finalize` refits one model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SELECTION_ROUNDS = 20  # additions at most; the weights are multiples of 1/rounds used
MAX_CANDIDATES = 30  # the best complete trials the selection chooses from

Scorer = Callable[[np.ndarray, np.ndarray], float]  # (probabilities, labels) -> higher is better


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def macro_f1(probs: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, probs.argmax(axis=1), average="macro", zero_division=0))


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, probs.argmax(axis=1)))


def negative_log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    picked = probs[np.arange(len(labels)), labels]
    return float(np.log(np.clip(picked, 1e-12, None)).mean())


SCORERS: dict[str, Scorer] = {
    "val_accuracy": accuracy,
    "val_macro_f1": macro_f1,
    "val_balanced_accuracy": balanced_accuracy,
    "val_loss": negative_log_loss,
}


def scorer_for(metric: str) -> Scorer:
    """The study's validation metric as a higher-is-better score of probabilities."""
    return SCORERS.get(metric, accuracy)


@dataclass(frozen=True)
class Selection:
    """The chosen members (trial numbers, best single first) and their weights, which sum to 1."""

    trials: tuple[int, ...]
    weights: tuple[float, ...]
    val_score: float  # the weighted mix's score on val
    single_trial: int  # the best single trial by the same score
    single_val_score: float
    rounds: int  # additions made, the first included

    def as_dict(self) -> dict[str, Any]:
        return {
            "trials": list(self.trials),
            "weights": list(self.weights),
            "val_score": self.val_score,
            "single_trial": self.single_trial,
            "single_val_score": self.single_val_score,
            "rounds": self.rounds,
        }


def select_ensemble(
    probs: dict[int, np.ndarray],
    labels: np.ndarray,
    scorer: Scorer,
    *,
    max_members: int,
    rounds: int = SELECTION_ROUNDS,
) -> Selection:
    """Forward selection with replacement over `probs` (trial -> (n_val, classes)).

    Ties go to a trial already in the mix (fewer models to ship), then to the earlier candidate
    in `probs`' order, which callers give best first. At most `max_members` distinct trials.
    """
    if not probs:
        raise ValueError("no candidate predictions to select from")
    order = list(probs)
    singles = {t: scorer(probs[t], labels) for t in order}
    first = max(order, key=lambda t: (singles[t], -order.index(t)))
    counts: Counter[int] = Counter({first: 1})
    total = probs[first].astype(np.float64)
    current = singles[first]
    for _ in range(rounds - 1):
        allowed = order if len(counts) < max_members else [t for t in order if t in counts]
        n = sum(counts.values())
        scored = [(scorer((total + probs[t]) / (n + 1), labels), t in counts, -order.index(t), t) for t in allowed]
        score, _, _, pick = max(scored)
        if score <= current:
            break
        counts[pick] += 1
        total = total + probs[pick]
        current = score
    n = sum(counts.values())
    members = sorted(counts, key=lambda t: (-counts[t], order.index(t)))
    return Selection(
        trials=tuple(members),
        weights=tuple(counts[t] / n for t in members),
        val_score=current,
        single_trial=first,
        single_val_score=singles[first],
        rounds=n,
    )


def mixed(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of several models' probabilities."""
    return sum(w * p.astype(np.float64) for w, p in zip(weights, probs, strict=True)) / float(sum(weights))
