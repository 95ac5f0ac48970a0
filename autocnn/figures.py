"""Pictures and tables of a trial's predictions (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix_figure(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(classes)
    size = min(4 + 0.45 * n, 18)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ConfusionMatrixDisplay.from_predictions(
        labels,
        preds,
        labels=list(range(n)),
        display_labels=list(classes),
        ax=ax,
        colorbar=False,
        xticks_rotation="vertical" if n > 10 else "horizontal",
        include_values=n <= 30,
    )
    ax.set_title(f"Confusion matrix ({len(labels)} images)")
    fig.tight_layout()
    plt.close(fig)
    return fig


def per_class_table(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> tuple[dict, str]:
    """sklearn's classification report as a dict (machines) and as text (people)."""
    from sklearn.metrics import classification_report

    kwargs = dict(labels=list(range(len(classes))), target_names=list(classes), zero_division=0)
    return (
        classification_report(labels, preds, output_dict=True, **kwargs),
        classification_report(labels, preds, digits=4, **kwargs),
    )
