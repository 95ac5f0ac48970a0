"""How a study spends its budget: optimizer steps per trial, when a trial may first be judged,
how far apart two validation scores must be to mean anything, and how long `epochs: auto` trains.

Everything here counts optimizer steps, not epochs: an epoch of 800 images at batch 64 is 12
steps, of 50,000 images 780, so "3 epochs" says nothing about how much a model has learnt. The
numbers behind the constants are in the README ("How autocnn spends a budget").

Pure arithmetic: no torch, no Optuna, so `autocnn validate` stays quick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The trial's training budget, recorded on the Optuna trial before its first epoch:
# {"steps_per_epoch", "epochs" (the most it may train), "patience", "auto"}.
BUDGET_ATTR = "autocnn.budget"

# A trial that can get fewer optimizer steps than this is warned about: on a 20-class set of 800
# images every model sat at chance for its first 40-60 steps and the good ones needed 400-900;
# the fixed recipe that beat a 130-step search trains 375.
MIN_TRIAL_STEPS = 300
# No pruning or early-stopping decision before this many steps: the chance plateau above, and on
# digits (16 steps an epoch) the three slow starters that finished at 0.98+ were still at
# 0.3-0.5 after 48 steps and past 0.88 after 64.
JUDGE_FLOOR_STEPS = 60
# A trial too short for that floor is judged after this share of its steps instead.
JUDGE_FLOOR_MAX_FRACTION = 0.5
# `epochs: auto` caps a trial at the epochs that reach this many steps (within the bounds below),
# and stops it earlier once it has not improved beyond the noise for AUTO_PATIENCE_STEPS.
AUTO_TARGET_STEPS = 1000
AUTO_MIN_EPOCHS = 10
AUTO_MAX_EPOCHS = 200
AUTO_PATIENCE_STEPS = 150
AUTO_MIN_PATIENCE = 3
AUTO_MAX_PATIENCE = 10
# Two scores closer than NOISE_Z standard errors of their difference are not told apart.
NOISE_Z = 2.0
# With a study.timeout, `epochs: auto` shortens the cap so this many full-length trials fit, but
# never below MIN_TRIAL_STEPS: fewer, long-enough trials beat many that never leave chance (most
# trials stop well before the cap anyway).
AUTO_MIN_TRIALS_IN_BUDGET = 3


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: shuffled training drops a short last batch (BatchNorm)."""
    if n_train <= batch_size:
        return 1
    return n_train // batch_size


def judge_floor_steps(total_steps: int) -> int:
    """The optimizer steps a trial must have trained before anyone may judge it."""
    return min(JUDGE_FLOOR_STEPS, math.ceil(JUDGE_FLOOR_MAX_FRACTION * total_steps))


def first_judged_epoch(steps_in_epoch: int, epochs: int) -> int:
    """The first epoch at whose end pruning or early stopping may act (1-based)."""
    floor = judge_floor_steps(steps_in_epoch * epochs)
    return max(1, math.ceil(floor / max(steps_in_epoch, 1)))


@dataclass(frozen=True)
class AutoEpochs:
    """What `epochs: auto` resolves to for one batch size: a cap and a patience, in epochs."""

    cap: int
    patience: int


def auto_epochs(
    steps_in_epoch: int, *, seconds_per_step: float | None = None, timeout: float | None = None
) -> AutoEpochs:
    """Enough epochs for AUTO_TARGET_STEPS, trimmed so a timed study still fits a few trials.

    The cap only bounds a trial; the noise-aware stop ends most trials well before it.
    """
    per_epoch = max(steps_in_epoch, 1)
    cap = math.ceil(AUTO_TARGET_STEPS / per_epoch)
    if seconds_per_step and timeout:
        affordable = timeout / AUTO_MIN_TRIALS_IN_BUDGET / (seconds_per_step * per_epoch)
        cap = min(cap, max(math.floor(affordable), math.ceil(MIN_TRIAL_STEPS / per_epoch)))
    cap = min(max(cap, AUTO_MIN_EPOCHS), AUTO_MAX_EPOCHS)
    patience = math.ceil(AUTO_PATIENCE_STEPS / max(steps_in_epoch, 1))
    return AutoEpochs(cap=cap, patience=min(max(patience, AUTO_MIN_PATIENCE), AUTO_MAX_PATIENCE))


# --------------------------------------------------------------------------- sampling noise


def standard_error(metric: str, value: float, n: int) -> float:
    """The sampling standard error of one validation score measured on n images.

    Accuracy is a binomial proportion; macro-F1 is treated as one. A per-image cross-entropy has a
    spread about as large as its mean, so val_loss's error is its value over sqrt(n).
    """
    n = max(n, 1)
    if metric == "val_loss":
        return abs(value) / math.sqrt(n)
    p = min(max(value, 0.0), 1.0)
    # A score of exactly 0 or 1 still has an error: p(1-p) floored at what one image changes.
    return math.sqrt(max(p * (1.0 - p), 1.0 / n) / n)


def noise_band(metric: str, a: float, b: float, n: int) -> float:
    """How far apart two scores on the same n validation images can lie by chance alone.

    NOISE_Z standard errors of the difference of two independent measurements: conservative for
    two models scored on the same images, which is what keeps a pruner from cutting on a coin flip.
    """
    return NOISE_Z * math.hypot(standard_error(metric, a, n), standard_error(metric, b, n))


def within_noise(metric: str, value: float, reference: float, n: int) -> bool:
    """True when `value` is not worse than `reference` by more than the noise band."""
    gap = reference - value if metric != "val_loss" else value - reference
    return gap <= noise_band(metric, value, reference, n)


def improvement_margin(metric: str, value: float, n: int) -> float:
    """One standard error: how much a trial must improve on itself for early stopping to count it.

    Successive epochs of one model are scored on the same images, so they differ by less noise
    than two models do; one error (not the band) keeps slow, steady learners alive.
    """
    return standard_error(metric, value, n)
