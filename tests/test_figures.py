"""Figures with class names in any script: drawn without a flood of missing-glyph warnings."""

from __future__ import annotations

import io
import warnings

import numpy as np

from autocnn.figures import confusion_matrix_figure, label_fonts, quiet_figure_class

NON_LATIN = ["猫", "犬", "кошка", "λύκος", "خروف", "ひよこ"]


def _draw(figure: object) -> list[str]:
    """Save the figure as MLflow does and return every warning raised on the way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(io.BytesIO(), format="png")  # type: ignore[attr-defined]
    return [str(w.message) for w in caught]


def test_non_latin_class_names_draw_without_glyph_warnings() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 1])
    preds = np.array([0, 1, 2, 3, 5, 4, 1, 1])
    figure = confusion_matrix_figure(labels, preds, NON_LATIN)
    assert [message for message in _draw(figure) if "Glyph" in message] == []
    ticks = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert ticks == NON_LATIN


def test_the_glyph_filter_is_the_figures_own() -> None:
    """Only the figure's draw is quiet: the process's warning filters are as they were."""
    from matplotlib.figure import Figure

    before = list(warnings.filters)
    quiet = quiet_figure_class()(figsize=(2, 2))
    quiet.add_subplot().set_title("猫")
    _draw(quiet)
    assert warnings.filters == before
    if label_fonts(["猫"]) is None:  # no installed font has it: a plain figure still warns
        plain = Figure(figsize=(2, 2))
        plain.add_subplot().set_title("猫")
        assert any("Glyph" in message for message in _draw(plain))


def test_latin_names_keep_the_default_font() -> None:
    assert label_fonts(["cat", "dog", "fox 2"]) is None


def test_characters_the_default_font_lacks_come_from_an_installed_font_that_has_them() -> None:
    """U+2312 is not in DejaVu Sans (matplotlib's default) but is in DejaVu Sans Mono, which it ships."""
    from matplotlib import font_manager
    from matplotlib.figure import Figure

    from autocnn.figures import _family_charmap

    default = font_manager.FontProperties(fname=font_manager.findfont(font_manager.FontProperties())).get_name()
    fonts = label_fonts(["arc \u2312"])
    assert fonts is not None and fonts[0] == default and len(fonts) == 2
    assert 0x2312 in _family_charmap(fonts[1]) and not fonts[1].startswith("Last Resort")
    plain = Figure(figsize=(2, 2))  # no quiet draw: the glyph must really be found
    plain.add_subplot().set_title("arc \u2312", fontfamily=fonts)
    assert [message for message in _draw(plain) if "Glyph" in message] == []
    figure = confusion_matrix_figure(np.array([0, 1]), np.array([0, 1]), ["arc \u2312", "b"])
    assert figure.axes[0].get_xticklabels()[0].get_fontfamily() == fonts
