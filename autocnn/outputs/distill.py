"""Distillation: the study's fastest good model, taught by the study's ensemble.

An ensemble is the most accurate thing a study can ship and the slowest; its best single member is
faster and worse. A student trained on the ensemble's soft labels (Hinton et al., 2015) can keep
much of the ensemble's gain at the student's own cost: the soft labels say which wrong classes
are nearly right, which a one-hot label cannot.

The teacher's probabilities are computed once, on the images the student trains on, each at the
teacher's own input size. A teacher refit on those same images is nearly one-hot on them, which
teaches no more than the labels; so on the val images, the teacher's probabilities are the mix of
its members' saved val predictions from the search, made before those members saw val. They are
softened by a temperature and mixed with the given labels, so a teacher that is confidently wrong
on an image cannot overrule its label alone. The mix is the student's cross-entropy target, with
the trial's own augmentation, schedule and epochs.

The student is the fastest trial that scores within one standard error of the best on val (the
one-standard-error rule): distillation closes gaps of a point or two, not the distance from a
model the study already ranked well below the best.
"""

from __future__ import annotations

import numpy as np

TEMPERATURE = 2.0  # softens the teacher's probabilities: p^(1/T), renormalised
TEACHER_SHARE = 0.5  # the target is this much teacher, the rest the given label
TEACHER_K = 3  # ensemble members when --distill is given without --ensemble
STUDENT_POOL = 10  # the student is chosen among this many best trials


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities raised to 1/T and renormalised: a softmax of the log-probabilities over T."""
    logits = np.log(np.clip(probs.astype(np.float64), 1e-12, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def soft_targets(
    teacher_probs: np.ndarray,
    labels: np.ndarray,
    *,
    temperature: float = TEMPERATURE,
    teacher_share: float = TEACHER_SHARE,
) -> np.ndarray:
    """(N, classes) float32 targets: the softened teacher mixed with the one-hot labels; rows sum to 1."""
    if teacher_probs.shape[0] != len(labels):
        raise ValueError(f"teacher probabilities for {teacher_probs.shape[0]} images, labels for {len(labels)}")
    one_hot = np.eye(teacher_probs.shape[1])[labels]
    mixed = teacher_share * soften(teacher_probs, temperature) + (1.0 - teacher_share) * one_hot
    return mixed.astype(np.float32)


def fastest(latencies: dict[int, float]) -> int:
    """The trial with the lowest latency; a tie goes to the earlier one in the dict's order (best first)."""
    if not latencies:
        raise ValueError("no candidate students")
    order = list(latencies)
    return min(order, key=lambda trial: (latencies[trial], order.index(trial)))


def near_the_best(values: dict[int, float], *, maximize: bool, within: float) -> list[int]:
    """The trials whose value is at most `within` worse than the best one's, in the dict's order."""
    if not values:
        return []
    best = max(values.values()) if maximize else min(values.values())
    return [t for t, v in values.items() if (best - v if maximize else v - best) <= within]
