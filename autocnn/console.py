"""What people see in the terminal: rich progress while a study runs, tables after."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from autocnn.checks import CheckReport
    from autocnn.export import FinalizeResult, TopK
    from autocnn.plan import Plan
    from autocnn.predict import PredictResult
    from autocnn.space import TrialConfig
    from autocnn.study import StudyResult
    from autocnn.train import EpochMetrics

STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "blue"}


class RichReporter:
    """Trial i/N and the running trial's epoch, model and current metric, on one live display."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.trials_task: Any = None
        self.epoch_task: Any = None
        self.data_task: Any = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def message(self, text: str) -> None:
        self.progress.console.print(text, style="yellow" if text.startswith("warning") else None, markup=False)

    def data_progress(self, done: int, total: int) -> None:
        if self.data_task is None:
            self.data_task = self.progress.add_task("decoding images", total=total, info="")
        self.progress.update(self.data_task, completed=done, total=total)

    def study_started(self, *, name: str, done: int, target: int | None, to_run: int | None) -> None:
        if done and target is None:
            self.message(f"resuming study '{name}': {done} trials done, more until the time is spent")
        elif done:
            self.message(f"resuming study '{name}': {done} of {target} trials done, {to_run} to run")
        self.trials_task = self.progress.add_task(f"study {name}", total=target, completed=done, info="")

    def trial_started(self, number: int, config: TrialConfig, epochs: int) -> None:
        description = f"trial {number} · {config.model}"
        if self.epoch_task is None:
            self.epoch_task = self.progress.add_task(description, total=epochs, info="")
        self.progress.reset(self.epoch_task, total=epochs, description=description, info="")

    def epoch_done(self, number: int, metrics: EpochMetrics, metric: str) -> None:
        value = getattr(metrics, metric)
        self.progress.update(self.epoch_task, completed=metrics.epoch, info=f"{metric} {value:.4f}")

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        if state in ("COMPLETE", "PRUNED") and self.trials_task is not None:
            self.progress.advance(self.trials_task)
        shown = f" {value:.4f}" if value is not None else ""
        self.progress.update(self.trials_task, info=f"last: trial {number} {state.lower()}{shown}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def leaderboard_table(result: StudyResult, metric: str) -> Table:
    table = Table(title=f"{result.name}: top trials", title_justify="left")
    for column in ("trial", "model", "key params", metric, "state", "epochs", "seconds"):
        table.add_column(column, justify="right" if column in ("trial", metric, "epochs", "seconds") else "left")
    for row in result.leaderboard:
        params = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in row["params"].items())
        table.add_row(
            str(row["number"]),
            row["model"],
            params,
            "" if row["value"] is None else f"{row['value']:.4f}",
            f"[{STATE_STYLE.get(row['state'], '')}]{row['state']}[/]",
            str(row["epochs"]),
            "" if row["seconds"] is None else f"{row['seconds']:.1f}",
        )
    return table


def counts_table(result: StudyResult, target: int | None) -> Table:
    table = Table(title=f"{result.name}: trials by state", title_justify="left")
    table.add_column("state")
    table.add_column("trials", justify="right")
    for state, n in result.counts.items():
        table.add_row(f"[{STATE_STYLE.get(state, '')}]{state.lower()}[/]", str(n))
    done = result.counts.get("COMPLETE", 0) + result.counts.get("PRUNED", 0)
    table.add_row("remaining", "until study.timeout" if target is None else str(max(0, target - done)))
    return table


def check_tables(report: CheckReport) -> list[Table]:
    data = Table(title="data", title_justify="left", show_header=False)
    data.add_column("key")
    data.add_column("value")
    for key, value in report.data.items():
        data.add_row(key, value)
    space = Table(title="search space", title_justify="left")
    for column in ("parameter", "distribution", "range / choices"):
        space.add_column(column)
    for param in report.params:
        space.add_row(param.name, param.distribution, param.domain)
    return [data, space]


def plan_table(plan: Plan) -> Table:
    """How much training trials get and when they are first judged: what decides small-data studies."""
    from autocnn.plan import describe

    table = Table(title="plan", title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key, value in describe(plan):
        table.add_row(key, value)
    return table


def finalize_tables(result: FinalizeResult) -> list[Table]:
    """The one evaluation of the finalized model, then float vs int8 side by side."""
    s = result.scores
    title = f"{result.study}: trial {result.trial} ({result.model}, {result.weights_from}) on {s.split}"
    scores = Table(title=title, title_justify="left")
    for column in ("class", "precision", "recall", "f1", "support"):
        scores.add_column(column, justify="left" if column == "class" else "right")
    for name in s.classes:
        row = s.per_class[name]
        scores.add_row(name, *(f"{row[k]:.4f}" for k in ("precision", "recall", "f1-score")), str(int(row["support"])))
    scores.add_section()
    scores.add_row(f"accuracy ({s.n_images} images)", "", "", f"{s.accuracy:.4f}", "")
    scores.add_row("macro-F1", "", "", f"{s.macro_f1:.4f}", "")
    exports = Table(title="exported models", title_justify="left")
    for column in ("file", f"{s.split} accuracy", "size MB", "check"):
        exports.add_column(column, justify="left" if column in ("file", "check") else "right")
    exports.add_row(
        "model.onnx (float32)",
        f"{result.onnx_accuracy:.4f}",
        f"{result.onnx_size_mb:.3f}",
        f"max |ONNX - PyTorch| = {result.onnx_max_abs_diff:.1e}",
    )
    if result.int8_accuracy is not None and result.int8_size_mb is not None:
        exports.add_row(
            "model.int8.onnx (int8 QDQ)",
            f"{result.int8_accuracy:.4f}",
            f"{result.int8_size_mb:.3f}",
            "static, calibrated",
        )
    else:
        exports.add_row("model.int8.onnx (int8 QDQ)", "—", "—", "[red]not exported[/]")
    return [scores, exports] if result.top_k is None else [top_k_table(result.top_k), scores, exports]


def top_k_table(top_k: TopK) -> Table:
    """Each compared config's mean and spread over seeds, beside the single value the study saw."""
    title = f"top {len(top_k.candidates)} configurations re-trained on train, {top_k.seeds} seed(s) each"
    table = Table(title=title, title_justify="left", caption=f"picked {top_k.reason}", caption_justify="left")
    for column in ("trial", "model", f"study {top_k.metric}", "mean", "std", "values", "picked"):
        table.add_column(column, justify="left" if column in ("model", "values") else "right")
    for c in top_k.candidates:
        table.add_row(
            str(c.trial),
            c.model,
            f"{c.study_value:.4f}",
            f"{c.mean:.4f}",
            f"{c.std:.4f}",
            ", ".join(f"{v:.4f}" for v in c.values),
            "[green]✓[/]" if c is top_k.picked else "",
        )
    return table


def predictions_table(result: PredictResult) -> Table:
    table = Table(title="predictions", title_justify="left")
    table.add_column("file")
    table.add_column("top labels (probability)")
    for p in result.predictions:
        table.add_row(p.path, ", ".join(f"{label} ({prob:.3f})" for label, prob in p.top))
    return table
