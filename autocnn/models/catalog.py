"""What every stage may know about models without importing torch: the custom CNN's name, how
deep it can go at a given size, and what a model expects of its input.
"""

from __future__ import annotations

from dataclasses import dataclass

CUSTOM_CNN = "custom_cnn"


def max_depth(image_size: int) -> int:
    """Each custom CNN block halves the feature map; the last one must keep at least 1 pixel."""
    return max(image_size.bit_length() - 1, 0)


@dataclass(frozen=True)
class Preprocess:
    """What a model expects of its input: square size and per-channel mean/std on 0..1 pixels."""

    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
