"""The report's Pareto section: accuracy against cost, the front highlighted, constraints drawn.

Every complete trial is a point: the front's trials in red joined by a step line, other feasible
trials in blue, trials outside `study.constraints` in grey (kept, never picked), each constraint
a dashed line at its bound. The table beside it lists the same trials, front first.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from autocnn.search.costs import feasible
from autocnn.search.pareto import pareto_front, trial_quantities
from autocnn.spec.objectives import Objective, is_multi_objective, primary, study_objectives

if TYPE_CHECKING:
    import optuna

    from autocnn.spec.schema import Spec

FRONT, FEASIBLE, INFEASIBLE = "#c62828", "#1f77b4", "#b0b0b0"


def has_front(spec: Spec) -> bool:
    return is_multi_objective(spec) or bool(spec.study.constraints)


def axes(spec: Spec) -> tuple[Objective, str]:
    """(y: the primary objective, x: the first cost the study optimises or bounds, else the second objective)."""
    from autocnn.training.costs import costs_needed

    main = primary(spec)
    others = [o.metric for o in study_objectives(spec) if o.metric != main.metric]
    costs = costs_needed(spec.study)
    return main, (costs[0] if costs else (others[0] if others else main.metric))


def pareto_figure(rows: Sequence[dict[str, Any]], y: str, x: str, constraints: dict[str, float]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    groups = (
        ("outside the constraints", INFEASIBLE, lambda r: not r["feasible"]),
        ("feasible", FEASIBLE, lambda r: r["feasible"] and not r["front"]),
        ("Pareto front", FRONT, lambda r: r["front"]),
    )
    for name, colour, keep in groups:
        chosen = sorted(
            (r for r in rows if keep(r) and x in r["values"] and y in r["values"]), key=lambda r: r["values"][x]
        )
        if not chosen:
            continue
        fig.add_trace(
            go.Scatter(
                x=[r["values"][x] for r in chosen],
                y=[r["values"][y] for r in chosen],
                mode="lines+markers" if name == "Pareto front" else "markers",
                line={"shape": "hv", "color": colour},
                marker={"color": colour, "size": 10 if name == "Pareto front" else 8},
                name=name,
                text=[f"trial {r['number']} ({r['model']})" for r in chosen],
                hovertemplate="%{text}<br>" + f"{x} %{{x:.4g}}<br>{y} %{{y:.4f}}<extra></extra>",
            )
        )
    for name, bound in constraints.items():
        if name == x:
            fig.add_vline(x=bound, line_dash="dash", line_color="#555", annotation_text=f"{name} <= {bound:g}")
    fig.update_layout(xaxis_title=x, yaxis_title=y, height=420, margin={"l": 60, "r": 20, "t": 40, "b": 40})
    return fig


def front_rows(study: optuna.Study, objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    """Complete trials with their values, feasibility and whether they are on the front; front first."""
    front = {t.number for t in pareto_front(study, objectives)}
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.values is not None]
    rows = [
        {
            "number": t.number,
            "model": str(t.params.get("model", "")),
            "values": trial_quantities(t, objectives),
            "feasible": feasible(t),
            "front": t.number in front,
        }
        for t in done
    ]
    return sorted(rows, key=lambda r: (not r["front"], not r["feasible"], r["number"]))


def pareto_html(spec: Spec, study: optuna.Study) -> str:
    """The section: the plot, a sentence on the constraints, and the table."""
    from autocnn.outputs.html import figure_html, fmt, table

    objectives = study_objectives(spec)
    rows = front_rows(study, objectives)
    if not rows:
        return "<p class=note>No complete trial yet: the front appears once trials finish.</p>"
    y, x = axes(spec)
    constraints = dict(spec.study.constraints or {})
    fig = pareto_figure(rows, y.metric, x, constraints)
    names = [o.metric for o in objectives] + [n for n in constraints if n not in {o.metric for o in objectives}]
    headers = ["trial", "model", *names, "feasible", "on the front"]
    body = [
        [
            str(r["number"]),
            html.escape(r["model"]),
            *(fmt(r["values"].get(name)) for name in names),
            "yes" if r["feasible"] else "<span class='state fail'>no</span>",
            "<b>front</b>" if r["front"] else "",
        ]
        for r in rows
    ]
    bounds = ", ".join(f"{n} <= {b:g}" for n, b in constraints.items()) or "none"
    n_front = sum(r["front"] for r in rows)
    note = (
        f"<p class=note>{n_front} trial(s) on the front of {len(rows)} complete; constraints: {html.escape(bounds)}. "
        "Trials outside the constraints are kept and shown, never picked; "
        '<code>autocnn finalize --pick "max val_accuracy where latency_ms &lt;= 5"</code> chooses from the front.</p>'
    )
    return figure_html(fig, "plot-pareto") + note + table(headers, body, numeric_from=2)
