"""The files of a shipped model folder and the preprocessing it records: what finalize writes, and
what the ONNX export and `autocnn predict` read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LABELS_FILE = "labels.json"
PREPROCESS_FILE = "preprocess.json"
MODEL_FILE = "model.json"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
WEIGHTS_FILE = "weights.pt"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Preprocessing:
    """What the exported model expects: square RGB `image_size` input, normalised per channel."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "color": "RGB",
            "resize": "bilinear, to image_size x image_size (EXIF orientation applied first)",
            "scale": "x / 255, then (x - mean) / std per channel",
            "layout": "NCHW float32",
            "output": "logits (apply softmax for probabilities)",
        }


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32: the arithmetic `TensorBatches` trains with."""
    shift = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(255.0)
    scale = np.float32(1.0) / (np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(255.0))
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    return (x - shift) * scale
