"""HTML pieces the report and its Pareto section share: numbers, tables, plotly figures."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) < 1e-3 or abs(value) >= 1e5
            else f"{value:.{digits}f}".rstrip("0").rstrip(".")
        )
    return html.escape(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric_from: int = 1) -> str:
    """Cells are already escaped/formatted strings; numbers align right."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(fig: Any, div_id: str) -> str:
    """A plotly figure as a div; the page loads plotly.js once."""
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )
