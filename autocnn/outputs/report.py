"""`autocnn report`: one self-contained HTML page: which model wins, by how much, at what cost.

Everything comes from the two stores a study already wrote: Optuna (trials, params, values,
intermediate values) and MLflow (per-epoch metric histories, per-trial facts such as parameter
counts, size and latency, the best trial's confusion matrix). The page embeds plotly's JavaScript
and the pictures, so it opens offline and can be mailed or logged as one MLflow artifact.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocnn.errors import StudyError
from autocnn.outputs.explain_report import explain_html
from autocnn.outputs.html import figure_html, fmt, table
from autocnn.outputs.labels import labels_html
from autocnn.outputs.pareto_report import has_front, pareto_html
from autocnn.search.results import count_states, leaderboard
from autocnn.spec.objectives import Objective, primary
from autocnn.spec.schema import Spec

if TYPE_CHECKING:
    import optuna

    from autocnn.tracking.tracker import Tracker

# Per-trial facts, under the names the trial runs may log them (first one found wins).
FACT_KEYS: dict[str, tuple[str, ...]] = {
    "params_total": ("params_total",),
    "params_trainable": ("params_trainable",),
    "size_mb": ("weights_mb", "weight_size_mb", "size_mb", "model_size_mb", "weights_size_mb"),
    "latency_ms": (
        "latency_ms",
        "latency_ms_per_image",
        "forward_latency_ms",
        "latency_ms_batch1",
    ),
}
CURVE_KEYS = ("val_accuracy", "val_macro_f1", "val_balanced_accuracy", "val_loss", "train_loss", "train_accuracy")
N_CURVES = 5  # learning curves of the top trials
SECTIONS = {
    "leaderboard": "Leaderboard",
    "models": "Model families",
    "history": "Optimization history",
    "importance": "Parameter importances",
    "parallel": "Parallel coordinates",
    "intermediate": "Intermediate values (pruning)",
    "curves": "Learning curves of the top trials",
    "confusion": "Confusion matrix of the best trial",
    "labels": "Possible label errors (autocnn validate --labels)",
    "explain": "Where the model looks (Grad-CAM)",
}
# Only in a study with several objectives or constraints, after the model families; and once
# `autocnn finalize` has shipped a model, at the end.
OPTIONAL_SECTIONS = {"pareto": "Pareto front: accuracy against cost", "shipped": "Shipped models (autocnn finalize)"}
TITLES = {**SECTIONS, **OPTIONAL_SECTIONS}


@dataclass
class TrialFacts:
    """One trial as the report shows it: Optuna's view joined with its MLflow run."""

    number: int
    model: str
    params: dict[str, Any]
    state: str
    value: float | None
    epochs: int
    seconds: float | None
    worker: str | None = None  # host:pid
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # the trial run's MLflow tags
    facts: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


@dataclass
class ReportResult:
    path: Path
    size_bytes: int
    n_trials: int
    parent_run_id: str | None
    sections: list[str]
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- gathering


def gather_trials(
    study: optuna.Study, objective: Objective, tracker: Tracker | None, parent_id: str | None
) -> list[TrialFacts]:
    """Every trial, best first, with its MLflow facts and metric histories where a run exists."""
    from autocnn.tracking.tracker import TRIAL_TAG

    trials = study.get_trials(deepcopy=False)
    runs: dict[int, Any] = {}
    if tracker is not None and parent_id is not None:
        for run in tracker.trial_runs(parent_id):
            number = run.data.tags.get(TRIAL_TAG)
            if number is not None and number.isdigit():
                runs.setdefault(int(number), run)
    attrs = {t.number: t.user_attrs.get("mlflow_run_id") for t in trials}
    out = []
    for row in leaderboard(study, objective, top=len(trials)):
        run = runs.get(row["number"])
        item = TrialFacts(
            **{k: row[k] for k in ("number", "model", "params", "state", "value", "epochs", "seconds", "worker")}
        )
        item.run_id = run.info.run_id if run is not None else attrs.get(row["number"])
        if run is not None and tracker is not None:
            item.facts = _facts(run.data.metrics)
            item.tags = dict(run.data.tags)
            item.curves = {k: _history(tracker, run.info.run_id, k) for k in CURVE_KEYS if k in run.data.metrics}
        out.append(item)
    return out


def _facts(metrics: dict[str, float]) -> dict[str, float]:
    found = {}
    for name, keys in FACT_KEYS.items():
        for key in keys:
            if key in metrics and math.isfinite(metrics[key]):
                found[name] = float(metrics[key])
                break
    return found


def _history(tracker: Tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    return tracker.metric_history(run_id, key)


@dataclass
class Family:
    """One row of the side-by-side table: a model family's best trial and what it costs."""

    model: str
    n_trials: int
    n_complete: int
    best: TrialFacts | None
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    total_seconds: float = 0.0
    # Seconds per finished trial with the backbone frozen whole, by the path it took: "cached"
    # (the head on cached features) and "full" (every epoch through the backbone).
    frozen_seconds: dict[str, list[float]] = field(default_factory=dict)


def families(trials: Sequence[TrialFacts], objective: Objective) -> list[Family]:
    """Group by model; a family is described by its best complete trial, at its best epoch."""
    by_model: dict[str, list[TrialFacts]] = {}
    for t in trials:
        by_model.setdefault(t.model or "?", []).append(t)
    rows = []
    for model, group in by_model.items():
        complete = [t for t in group if t.state == "COMPLETE" and t.value is not None]
        best = complete[0] if complete else None  # trials arrive best first
        family = Family(
            model,
            len(group),
            len(complete),
            best,
            total_seconds=sum(t.seconds or 0.0 for t in group),
            frozen_seconds=frozen_seconds(group),
        )
        if best is not None:
            step = _best_step(best.curves.get(objective.metric, []), objective)
            family.val_accuracy = _at(best.curves.get("val_accuracy", []), step)
            family.val_macro_f1 = _at(best.curves.get("val_macro_f1", []), step)
            if objective.metric == "val_accuracy" and family.val_accuracy is None:
                family.val_accuracy = best.value
        rows.append(family)
    rows.sort(key=lambda f: (f.best is None, objective.rank(f.best.value) if f.best else 0.0))
    return rows


def frozen_seconds(group: Sequence[TrialFacts]) -> dict[str, list[float]]:
    """Trial seconds of the family's finished frozen-backbone trials, by feature path (the tag
    autocnn.training.features.PATH_TAG, spelt out: that module imports torch)."""
    out: dict[str, list[float]] = {}
    for t in group:
        if t.tags.get("autocnn.freeze") == "backbone" and t.seconds is not None and t.state != "RUNNING":
            out.setdefault(t.tags.get("autocnn.feature_path", "full"), []).append(t.seconds)
    return out


def frozen_seconds_text(seconds: dict[str, list[float]]) -> str:
    """`cached 1.2 (4) · full 31 (2)`: mean seconds per trial and how many trials, per path."""
    parts = [
        f"{path} {fmt(sum(values) / len(values), 3)} ({len(values)})"
        for path in ("cached", "full")
        if (values := seconds.get(path))
    ]
    return " · ".join(parts) or "—"


def _best_step(curve: list[tuple[int, float]], objective: Objective) -> int | None:
    if not curve:
        return None
    return objective.best(curve, lambda point: point[1])[0]


def _at(curve: list[tuple[int, float]], step: int | None) -> float | None:
    values = dict(curve)
    if step is not None and step in values:
        return values[step]
    return None


# --------------------------------------------------------------------------- HTML pieces


def _count(value: float | None) -> str:
    return "—" if value is None else f"{int(value):,}"


def short_params(model: str, params: dict[str, Any]) -> str:
    """`lr=0.003, depth=3`: the dotted name without its section or model prefix."""
    parts = []
    for key, value in params.items():
        name = key.removeprefix(f"models.{model}.").removeprefix("train.").removeprefix("augment.")
        parts.append(f"{html.escape(name)}={fmt(value, 3)}")
    return ", ".join(parts)


def leaderboard_html(trials: Sequence[TrialFacts], metric: str) -> str:
    """Every trial; with the worker (host:pid) that ran it when several shared the study."""
    workers = len({t.worker for t in trials if t.worker}) > 1
    headers = ["trial", "model", "key params", metric, "state", "epochs", "seconds"] + (["worker"] if workers else [])
    rows = [
        [
            str(t.number),
            html.escape(t.model),
            short_params(t.model, t.params),
            fmt(t.value),
            f"<span class='state {t.state.lower()}'>{t.state}</span>",
            str(t.epochs),
            fmt(t.seconds, 3),
        ]
        + ([html.escape(t.worker or "—")] if workers else [])
        for t in trials
    ]
    return table(headers, rows, numeric_from=3)


def families_html(rows: Sequence[Family]) -> str:
    headers = [
        "model",
        "trials (complete)",
        "best trial",
        "val accuracy",
        "val macro-F1",
        "params total",
        "params trainable",
        "weights MB",
        "latency ms/image",
        "train s (best)",
        "train s (all)",
        "s/trial frozen: cached · full (trials)",
        "epochs (best)",
    ]
    body = []
    for f in rows:
        b = f.best
        facts = b.facts if b is not None else {}
        size = facts.get("size_mb")
        if size is None and "params_total" in facts:  # not logged: float32 parameters, an estimate
            size_text = f"≈{facts['params_total'] * 4 / 1e6:.3f}"
        else:
            size_text = fmt(size, 3)
        body.append(
            [
                html.escape(f.model),
                f"{f.n_trials} ({f.n_complete})",
                "—" if b is None else str(b.number),
                fmt(f.val_accuracy),
                fmt(f.val_macro_f1),
                _count(facts.get("params_total")),
                _count(facts.get("params_trainable")),
                size_text,
                fmt(facts.get("latency_ms"), 3),
                fmt(b.seconds if b else None, 3),
                fmt(f.total_seconds, 3),
                frozen_seconds_text(f.frozen_seconds),
                "—" if b is None else str(b.epochs),
            ]
        )
    note = (
        "<p class=note>Each family is described by its best complete trial, at that trial's "
        "best epoch. "
        "≈ marks a size estimated from the float32 parameter count where the trial logged none; "
        "s/trial frozen: the mean seconds of the family's trials with the whole backbone frozen, "
        "training the head on cached features or passing every epoch through the backbone "
        "(with augmentation and no augment.cached_views, or study.feature_cache: false); "
        "— means the trial runs logged no such number.</p>"
    )
    return table(headers, body) + note


def optuna_plot(
    kind: str,
    study: optuna.Study,
    n_complete: int,
    *,
    metric: str = "Objective Value",
    objective: Objective | None = None,
) -> str:
    """One of Optuna's plotly figures, or a sentence saying why it cannot be drawn yet.

    The history and parallel-coordinate plots label their axis with `metric`: they do not read the
    study's metric names themselves.
    """
    import functools
    import warnings

    from optuna import visualization as vis

    if kind == "importance" and n_complete < 2:
        return f"<p class=note>Parameter importances need at least 2 complete trials; this study has {n_complete}.</p>"
    # A multi-objective study has no single value: the plots follow the primary objective.
    target: dict[str, Any] = {}
    if len(study.directions) > 1 and objective is not None:
        target = {"target": lambda t: objective.of(t) if objective.of(t) is not None else math.nan}
    make = {
        "history": functools.partial(vis.plot_optimization_history, target_name=metric, **target),
        "importance": functools.partial(
            vis.plot_param_importances, **({"target_name": metric, **target} if target else {})
        ),
        "parallel": functools.partial(vis.plot_parallel_coordinate, target_name=metric, **target),
        "intermediate": vis.plot_intermediate_values,
    }[kind]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = make(study)
    except Exception as exc:  # noqa: BLE001 - a plot Optuna cannot draw is explained, not fatal
        reason = html.escape(f"{exc.__class__.__name__}: {exc}")
        return f"<p class=note>Optuna could not draw this plot: {reason}</p>"
    fig.update_layout(height=420, margin={"l": 60, "r": 20, "t": 40, "b": 40})
    return figure_html(fig, f"plot-{kind}")


def curves_html(trials: Sequence[TrialFacts], metric: str) -> str:
    """The study metric beside train accuracy, and both losses, per epoch for the best few trials.

    Train accuracy far above validation accuracy is memorisation: on small data it is the first
    thing to look for, and the validation curve alone does not show it.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    top = [t for t in trials if t.state == "COMPLETE" and t.curves][:N_CURVES]
    if not top:
        return "<p class=note>No complete trial has metric histories in MLflow yet.</p>"
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(f"{metric} (solid), train accuracy (dotted)", "loss (solid: val, dotted: train)"),
    )
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for i, t in enumerate(top):
        color, name = palette[i % len(palette)], f"trial {t.number} ({t.model})"
        for key, col, dash, legend in (
            (metric, 1, "solid", True),
            ("train_accuracy", 1, "dot", False),
            ("val_loss", 2, "solid", False),
            ("train_loss", 2, "dot", False),
        ):
            points = t.curves.get(key, [])
            if points:
                xs, ys = zip(*points, strict=True)
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines+markers",
                        name=name,
                        legendgroup=name,
                        showlegend=legend,
                        line={"color": color, "dash": dash},
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=420, margin={"l": 60, "r": 20, "t": 40, "b": 40})
    return figure_html(fig, "plot-curves")


def confusion_html(tracker: Tracker | None, best: TrialFacts | None) -> str:
    """The best trial's own confusion_matrix.png and per-class table, embedded from its run."""
    import tempfile

    if tracker is None or best is None or best.run_id is None:
        return "<p class=note>No complete trial with an MLflow run: no confusion matrix to show.</p>"
    parts = [f"<p>Trial {best.number} ({html.escape(best.model)}), on the validation split.</p>"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            png = tracker.download_artifact(best.run_id, "confusion_matrix.png", Path(tmp)).read_bytes()
        except Exception:  # noqa: BLE001 - an older or failed run may lack it
            return f"<p class=note>Trial {best.number}'s run holds no confusion_matrix.png.</p>"
        parts.append(
            f"<img alt='confusion matrix of trial {best.number}' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        )
        try:
            per_class = json.loads(
                tracker.download_artifact(best.run_id, "per_class_metrics.json", Path(tmp)).read_text()
            )
        except Exception:  # noqa: BLE001
            per_class = None
    if per_class:
        rows = [
            [
                html.escape(name),
                fmt(v.get("precision")),
                fmt(v.get("recall")),
                fmt(v.get("f1-score")),
                _count(v.get("support")),
            ]
            for name, v in per_class.items()
            if isinstance(v, dict)
        ]
        parts.append(table(["class", "precision", "recall", "F1", "support"], rows))
    return "".join(parts)


def shipped_html(runs: Sequence[Any]) -> str:
    """Each finalized model, newest first, beside what it was compared with: an ensemble's best
    single member, and the same model without test-time augmentation."""
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        split = tags.get("autocnn.eval_split", "test")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
        ensemble = tags.get("autocnn.ensemble")
        tta = tags.get("autocnn.tta")
        teacher = tags.get("autocnn.distilled_from")
        shipped = f"ensemble of trials {ensemble}" if ensemble else f"trial {tags.get('autocnn.trial', '?')}"
        shipped += f" ({tags.get('autocnn.model', '?')})" if not ensemble else ""
        if tta and tta != "none":
            shipped += f" + TTA ({tta})"
        if teacher:
            shipped += f", taught by the ensemble of trials {teacher}"
        how = tags.get("autocnn.weights_from", "")
        latency = metrics.get("ensemble_latency_ms") or metrics.get("student_latency_ms")
        rows.append(
            [
                when,
                html.escape(shipped),
                html.escape(how),
                fmt(metrics.get(f"{split}_accuracy")),
                fmt(metrics.get(f"{split}_macro_f1")),
                fmt(latency, 2) if latency else "—",
                fmt(metrics.get(f"int8_{split}_accuracy")),
            ]
        )
        if ensemble:
            rows.append(
                [
                    "",
                    f"&nbsp;&nbsp;its best single trial, alone ({html.escape(tags.get('autocnn.trial', '?'))})",
                    "",
                    fmt(metrics.get(f"single_{split}_accuracy")),
                    "—",
                    fmt(metrics.get("single_latency_ms"), 2),
                    "—",
                ]
            )
        if teacher:
            for row, label in (("teacher", "its teacher, the ensemble"), ("alone", "the same trial, trained alone")):
                rows.append(
                    [
                        "",
                        f"&nbsp;&nbsp;{label}",
                        "",
                        fmt(metrics.get(f"{row}_{split}_accuracy")),
                        "—",
                        fmt(metrics.get(f"{row}_latency_ms"), 2),
                        "—",
                    ]
                )
        if f"{split}_accuracy_without_tta" in metrics:
            rows.append(
                [
                    "",
                    "&nbsp;&nbsp;the same without TTA",
                    "",
                    fmt(metrics[f"{split}_accuracy_without_tta"]),
                    "—",
                    "—",
                    "—",
                ]
            )
    note = (
        "<p class=note>Scored once on the evaluation split after the refit. An ensemble's val choice and "
        "TTA's val judgement are in the final run's ensemble.json and tta.json; a distilled student's comparison "
        "in distill.json.</p>"
    )
    header = ["finalized", "shipped", "weights", "accuracy", "macro-F1", "latency ms", "int8 accuracy"]
    return table(header, rows) + note


# --------------------------------------------------------------------------- the page

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:0 24px 48px;color:#222}
h1{margin:24px 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
nav a{margin-right:14px}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid #e4e4e4;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#666;font-size:12px}.state.complete{color:#18794e}.state.pruned{color:#a35200}
.state.fail{color:#c62828}.summary td{border:none;padding:2px 12px 2px 0}img{max-width:100%}
"""


def page(title: str, summary: list[tuple[str, str]], sections: dict[str, str]) -> str:
    """The whole document: plotly's JS inlined once in the head, then each section."""
    from plotly.offline import get_plotlyjs

    nav = "".join(f"<a href='#{key}'>{html.escape(TITLES[key])}</a>" for key in sections)
    facts = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in summary)
    body = "".join(
        f"<section id='{key}'><h2>{html.escape(TITLES[key])}</h2>{content}</section>"
        for key, content in sections.items()
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><table class=summary>{facts}</table>"
        f"<nav>{nav}</nav>{body}</body></html>"
    )


def build_report(
    spec: Spec,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    out: Path | None = None,
) -> ReportResult:
    """Write reports/<name>.html (or `out`) and log it to the study's parent MLflow run.

    Example:
        >>> autocnn.build_report(spec, out=Path("digits.html")).path
    """
    from autocnn.search.storage import open_study, storage_url
    from autocnn.tracking.tracker import Tracker, default_tracking_uri

    study = open_study(spec, storage_url(spec, storage))
    if not study.get_trials(deepcopy=False):
        raise StudyError(f"study '{spec.name}' has no trials yet; run `autocnn study` first")
    warnings: list[str] = []
    tracker = Tracker(tracking_uri or spec.mlflow.tracking_uri or default_tracking_uri(), spec.experiment_name)
    parent = tracker.find_study_run(spec.name)
    parent_id = parent.info.run_id if parent is not None else None
    if parent_id is None:
        warnings.append(
            f"no MLflow run for study '{spec.name}' at {tracker.tracking_uri}: curves and facts are missing"
        )
    objective = primary(spec)
    trials = gather_trials(study, objective, tracker, parent_id)
    counts = count_states(study)
    metric = objective.metric
    complete = [t for t in trials if t.state == "COMPLETE"]
    best = complete[0] if complete else None
    sections = {
        "leaderboard": leaderboard_html(trials, metric),
        "models": families_html(families(trials, objective)),
        **({"pareto": pareto_html(spec, study)} if has_front(spec) else {}),
        **{
            kind: optuna_plot(kind, study, len(complete), metric=metric, objective=objective)
            for kind in ("history", "importance", "parallel", "intermediate")
        },
        "curves": curves_html(trials, metric),
        "confusion": confusion_html(tracker, best),
        "labels": labels_html(spec.name),
    }
    finals = tracker.final_runs(spec.name)
    sections["explain"] = explain_html(spec, study, tracker, best.number if best else None, finals)
    if finals:
        sections["shipped"] = shipped_html(finals)
    summary = [
        ("study", html.escape(spec.name)),
        ("metric", f"{metric} ({objective.direction})"),
        ("trials", ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)),
        (
            "best",
            "—" if best is None else f"trial {best.number} ({html.escape(best.model)}): {fmt(best.value)}",
        ),
        ("generated", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    path = out or Path.cwd() / "reports" / f"{spec.name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(f"autocnn report: {spec.name}", summary, sections), encoding="utf-8")
    if parent_id is not None:
        tracker.log_artifact(parent_id, path, "report")
    return ReportResult(path, path.stat().st_size, len(trials), parent_id, list(sections), warnings)
