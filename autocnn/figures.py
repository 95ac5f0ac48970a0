"""Pictures and tables of a trial's predictions (matplotlib's Agg backend: no display needed).

Class names come from folder names, in any script. Labels are drawn with the default font and,
for characters it lacks, an installed font that has them; with none installed the characters
are drawn as boxes, without matplotlib's "Glyph ... missing" warning for each.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

MISSING_GLYPH = r"Glyph \d+ .* missing from"


@functools.cache
def quiet_figure_class() -> type:
    """A Figure that draws without missing-glyph warnings, and only those, only while it draws.

    The warnings come at draw time (in `savefig`, wherever the figure is saved), so the filter
    goes on the figure's own draw rather than around the code that builds it. For any picture
    with user-given text: `Figure` or `plt.subplots(FigureClass=quiet_figure_class())`.
    """
    from matplotlib.figure import Figure

    class QuietGlyphsFigure(Figure):
        def draw(self, renderer: Any) -> None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=MISSING_GLYPH, category=UserWarning)
                super().draw(renderer)

    return QuietGlyphsFigure


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


@functools.cache
def _fonts_covering(missing: frozenset[int]) -> tuple[str, ...]:
    """Installed font families that together have these characters, the widest coverage first.

    "Last Resort" fonts (matplotlib ships one) cover everything with placeholder boxes: choosing
    one would hide a real font for the script, and boxes are what a missing glyph gets anyway.
    """
    from matplotlib import font_manager

    names = sorted({entry.name for entry in font_manager.fontManager.ttflist} - {""})
    candidates = {name: _family_charmap(name) & missing for name in names if not name.startswith("Last Resort")}
    families: list[str] = []
    left = set(missing)
    while left:
        name, covered = max(candidates.items(), key=lambda item: len(item[1] & left), default=("", set()))
        if not covered & left:
            break
        families.append(name)
        left -= covered
    return tuple(families)


def _family_charmap(name: str) -> frozenset[int]:
    """The characters of the face matplotlib draws for `name` (its regular one, not bold or italic)."""
    from matplotlib import font_manager

    try:
        return _charmap(font_manager.findfont(font_manager.FontProperties(family=[name]), fallback_to_default=False))
    except ValueError:
        return frozenset()


def label_fonts(texts: Iterable[str]) -> list[str] | None:
    """The default font, then fonts for the characters it lacks; None when it has them all (or none helps)."""
    from matplotlib import font_manager

    default = font_manager.findfont(font_manager.FontProperties())  # what labels use: rcParams
    missing = frozenset(ord(char) for text in texts for char in str(text) if not char.isspace()) - _charmap(default)
    if not missing:
        return None
    extra = _fonts_covering(missing)
    if not extra:
        return None
    return [font_manager.FontProperties(fname=default).get_name(), *extra]


def confusion_matrix_figure(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> Any:
    """sklearn's confusion matrix display on a bare Figure, drawn once.

    Every completed trial pays for this picture: pyplot's tight_layout drew it twice and made it
    the largest fixed cost of a trial (0.4 s for 10 classes, 1 s for 20). Margins are
    sized from the longest class name instead, and no pyplot state is touched.
    """
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(classes)
    size = min(4 + 0.45 * n, 18)
    vertical = n > 10
    fig = quiet_figure_class()(figsize=(size, size), dpi=100)
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
    fonts = label_fonts(classes)
    if fonts is not None:
        for label in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
            label.set_fontfamily(fonts)
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
