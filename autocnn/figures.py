"""Pictures and tables of a trial's predictions (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix_figure(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> Any:
    """sklearn's confusion matrix display on a bare Figure, drawn once.

    Every completed trial pays for this picture: pyplot's tight_layout drew it twice and made it
    the largest fixed cost of a trial (0.4 s for 10 classes, 1 s for 20; issue 6). Margins are
    sized from the longest class name instead, and no pyplot state is touched.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(classes)
    size = min(4 + 0.45 * n, 18)
    vertical = n > 10
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.add_subplot()
    ConfusionMatrixDisplay.from_predictions(
        labels,
        preds,
        labels=list(range(n)),
        display_labels=list(classes),
        ax=ax,
        colorbar=False,
        xticks_rotation="vertical" if vertical else "horizontal",
        include_values=n <= 30,
    )
    ax.set_title(f"Confusion matrix ({len(labels)} images)")
    label_in = 0.09 * max((len(str(c)) for c in classes), default=1)  # ~10 pt characters, inches
    left = min(0.45, (label_in + 0.75) / size)
    bottom = min(0.45, ((label_in if vertical else 0.2) + 0.75) / size)
    fig.subplots_adjust(left=left, bottom=bottom, right=1 - 0.25 / size, top=1 - 0.55 / size)
    return fig


def per_class_table(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> tuple[dict, str]:
    """sklearn's classification report as a dict (machines) and as text (people)."""
    from sklearn.metrics import classification_report

    kwargs = dict(labels=list(range(len(classes))), target_names=list(classes), zero_division=0)
    return (
        classification_report(labels, preds, output_dict=True, **kwargs),
        classification_report(labels, preds, digits=4, **kwargs),
    )
