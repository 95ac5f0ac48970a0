"""The finalized model, scored and written: logits on a split, the scores, and the folder that
`autocnn predict` (or any ONNX runtime) uses on its own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autocnn.data.arrays import Dataset, Split
from autocnn.models.folder import (
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREPROCESS_FILE,
    WEIGHTS_FILE,
    Preprocessing,
    normalize,
)
from autocnn.spec.schema import Spec

if TYPE_CHECKING:
    from torch import nn

    from autocnn.training.config import TrialConfig


@dataclass(frozen=True)
class Scores:
    """One evaluation: which split, and what the model got right there."""

    split: str
    n_images: int
    accuracy: float
    macro_f1: float
    balanced_accuracy: float  # the mean of per-class recalls
    per_class: dict[str, Any]
    per_class_text: str
    labels: np.ndarray
    preds: np.ndarray
    classes: list[str]

    def confusion(self) -> list[list[int]]:
        from sklearn.metrics import confusion_matrix

        return confusion_matrix(self.labels, self.preds, labels=list(range(len(self.classes)))).tolist()


def torch_logits(model: nn.Module, images: np.ndarray, pre: Preprocessing, *, batch: int = 256) -> np.ndarray:
    """float32 CPU logits: the reference the ONNX files are checked and compared against."""
    import torch

    model = model.cpu().eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(normalize(images[i : i + batch], pre.mean, pre.std))
            out.append(model(x).float().numpy())
    return np.concatenate(out)


def score(split: str, labels: np.ndarray, logits: np.ndarray, classes: list[str]) -> Scores:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    from autocnn.figures import per_class_table

    preds = logits.argmax(axis=1)
    table, text = per_class_table(labels, preds, classes)
    return Scores(
        split=split,
        n_images=len(labels),
        accuracy=float(accuracy_score(labels, preds)),
        macro_f1=float(f1_score(labels, preds, average="macro", labels=list(range(len(classes))), zero_division=0)),
        balanced_accuracy=float(balanced_accuracy_score(labels, preds)),
        per_class=table,
        per_class_text=text,
        labels=labels,
        preds=preds,
        classes=list(classes),
    )


def eval_split(data: Dataset) -> tuple[str, Split]:
    """The test split, or val (labelled as such) when the spec keeps no test images."""
    return ("test", data.test) if data.test is not None and len(data.test) else ("val", data.val)


def write_bundle(
    out: Path,
    *,
    model: nn.Module,
    config: TrialConfig,
    data: Dataset,
    pre: Preprocessing,
    spec: Spec,
    trial_number: int,
    rebuild: dict[str, Any] | None = None,
    tta: dict[str, bool] | None = None,
) -> None:
    """Weights, labels, preprocessing and how to rebuild the model: all `autocnn predict` reads.
    `rebuild` replaces the single trial's description (an ensemble describes its members); `tta`
    names the test-time views the exported graph averages over, around these weights."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        out / WEIGHTS_FILE,
    )
    (out / LABELS_FILE).write_text(json.dumps(list(data.classes), indent=2))
    (out / PREPROCESS_FILE).write_text(json.dumps(pre.as_dict(), indent=2))
    rebuild = rebuild or {
        "model": config.model,
        "model_params": config.model_params,
        "num_classes": data.num_classes,
        "image_size": pre.image_size,
        "study": spec.name,
        "trial": trial_number,
        "train": asdict(config.train),
    }
    if tta:
        rebuild = rebuild | {"tta": tta}
    (out / MODEL_FILE).write_text(json.dumps(rebuild, indent=2, default=str))


def write_metrics(out: Path, about: dict[str, Any], scores: Scores, facts: dict[str, float]) -> None:
    """metrics.json: the one evaluation, float and int8 side by side, for machines and audits."""
    summary = {
        **about,
        "split": scores.split,
        "n_images": scores.n_images,
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        "balanced_accuracy": scores.balanced_accuracy,
        **facts,
        "classes": scores.classes,
        "per_class": scores.per_class,
        "confusion_matrix": scores.confusion(),
    }
    (out / METRICS_FILE).write_text(json.dumps(summary, indent=2))
