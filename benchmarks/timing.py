"""Clocks and the statistics the measurements share.

Targets are ratios of runs made back to back in one process, alternating sides, so that a busy
spell on a noisy machine slows both sides of a pair instead of one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.results import Item

# Every timed run starts after this pause: an epoch right after a pause ran up to a few % slower
# than one right after another (same loop, A/A).
SETTLE_S = 0.3


def settle() -> None:
    time.sleep(SETTLE_S)


@contextmanager
def timed(item: Item) -> Iterator[None]:
    """The item's own wall time, shown under its table."""
    start = time.perf_counter()
    try:
        yield
    finally:
        item.seconds = time.perf_counter() - start


def sync(device: Any) -> None:
    """Wait for queued GPU work, so a clock read after it measures the work itself."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def alternated(seq: Sequence[Any], repeat: int) -> list[Any]:
    """Forward on even repeats, backward on odd ones: neither side always runs first, and
    neighbours stay neighbours (their per-repeat ratio compares runs made back to back)."""
    return list(seq) if repeat % 2 == 0 else list(reversed(seq))


def rotated(seq: Sequence[Any], k: int) -> list[Any]:
    """`seq` started at position k: each side in turn runs first."""
    k %= max(len(seq), 1)
    return [*seq[k:], *seq[:k]]


def timed_epochs(speeds: Sequence[float]) -> float:
    """images/s over equal epochs after the first (warm-up): all images over all their time."""
    timed = speeds[1:] or speeds
    return float(statistics.harmonic_mean(timed))


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of per-epoch (per-repeat) ratios: each pair ran back to back, so a busy spell hits both."""
    return median([ratio(x, y) for x, y in zip(a, b, strict=False)])


def per_trial_ratio(a: Sequence[float], b: Sequence[float], per_trial: int) -> float:
    """Median over trials of each trial's ratio over all its timed epochs together.

    autocnn pays some costs every few epochs (metrics to MLflow, checkpoints to disk): a median of
    per-epoch ratios would leave them out, a trial's epochs taken together count them in full.
    """
    starts = range(0, min(len(a), len(b)), max(per_trial, 1))
    hmean = statistics.harmonic_mean  # all a trial's images over all their time
    return median([ratio(hmean(a[k : k + per_trial]), hmean(b[k : k + per_trial])) for k in starts])
