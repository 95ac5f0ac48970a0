"""What people see: progress and a line per trial while a study runs, tables after.

In a terminal a study draws live progress bars; with the output going to a file or a CI log,
where a live display would only appear at the end, it prints plain lines as trials finish.
Tables fit the console's width (80 columns without a terminal).
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from autocnn.data.checks import DataChecks
    from autocnn.outputs.finalize import DistillOutcome, EnsembleOutcome, FinalizeResult, TopK
    from autocnn.outputs.labels import LabelIssues
    from autocnn.outputs.predict import PredictResult
    from autocnn.outputs.tta import TtaChoice
    from autocnn.search.checks import CheckReport
    from autocnn.search.plan import Plan
    from autocnn.search.results import StudyResult
    from autocnn.training.config import TrialConfig
    from autocnn.training.loop import EpochMetrics

STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "blue"}


class RichReporter:
    """A line per finished trial; in a terminal also trial i/N and the running trial's epoch on a
    live display."""

    def __init__(self, console: Console, *, metric: str = "value") -> None:
        self.console = console
        self.metric = metric
        self.live = console.is_terminal
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
        self.downloads: dict[str, Any] = {}  # what -> progress task (downloads, files written)
        self._running: dict[int, tuple[str, float]] = {}  # trial -> (model, start)
        self._last: dict[int, tuple[int, float]] = {}  # trial -> (epoch, metric value)

    def __enter__(self) -> RichReporter:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def _print(self, text: str, style: str | None = None) -> None:
        # soft_wrap: a long message (a path) stays one line in a log rather than breaking at 80.
        self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        self._print(text, style="yellow" if text.startswith("warning") else None)

    def data_progress(self, done: int, total: int) -> None:
        if not self.live:
            if done == total:
                self._print(f"decoded {total} images")
            return
        if self.data_task is None:
            self.data_task = self.progress.add_task("decoding images", total=total, info="")
        self.progress.update(self.data_task, completed=done, total=total)

    def download_progress(self, what: str, done: int, total: int | None) -> None:
        """A bar per download (weights, a dataset by name) before trial 1; a line at its end without a terminal."""
        if not self.live:
            if total is not None and done >= total:
                self._print(f"{what}: {done / 1e6:.1f} MB done")
            return
        mb_total = None if total is None else total / 1e6
        task = self.downloads.get(what)
        if task is None:
            task = self.downloads[what] = self.progress.add_task(what, total=mb_total, info="MB")
        self.progress.update(task, completed=done / 1e6, total=mb_total)

    def count_progress(self, what: str, done: int, total: int) -> None:
        """A bar counting items (images written by `autocnn data fetch`); a line at the end without a terminal."""
        if not self.live:
            if done >= total:
                self._print(f"{what}: {total}")
            return
        task = self.downloads.get(what)
        if task is None:
            task = self.downloads[what] = self.progress.add_task(what, total=total, info="")
        self.progress.update(task, completed=done, total=total)

    def study_started(self, *, name: str, done: int, target: int | None, to_run: int | None) -> None:
        if done and target is None:
            self.message(f"resuming study '{name}': {done} trials done, more until the time is spent")
        elif done:
            self.message(f"resuming study '{name}': {done} of {target} trials done, {to_run} to run")
        elif not self.live:
            trials = f"{target} trial{'' if target == 1 else 's'}" if target else "trials until the time is spent"
            self.message(f"study '{name}': {trials}")
        if self.live:
            self.trials_task = self.progress.add_task(f"study {name}", total=target, completed=done, info="")

    def trial_sampled(self, number: int, config: TrialConfig) -> None:
        self._running[number] = (config.model, time.monotonic())

    def trial_started(self, number: int, config: TrialConfig, epochs: int) -> None:
        self._running.setdefault(number, (config.model, time.monotonic()))
        if not self.live:
            return
        description = f"trial {number} · {config.model}"
        if self.epoch_task is None:
            self.epoch_task = self.progress.add_task(description, total=epochs, info="")
        self.progress.reset(self.epoch_task, total=epochs, description=description, info="")

    def epoch_done(self, number: int, metrics: EpochMetrics, metric: str) -> None:
        value = getattr(metrics, metric)
        self._last[number] = (metrics.epoch, value)
        if self.live:
            self.progress.update(self.epoch_task, completed=metrics.epoch, info=f"{metric} {value:.4f}")

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        self._print(self.trial_line(number, state, value), style=STATE_STYLE.get(state) if self.live else None)
        if not self.live or self.trials_task is None:
            return
        if state in ("COMPLETE", "PRUNED"):
            self.progress.advance(self.trials_task)
        shown = f" {value:.4f}" if value is not None else ""
        self.progress.update(self.trials_task, info=f"last: trial {number} {state.lower()}{shown}")

    def trial_line(self, number: int, state: str, value: float | None) -> str:
        """`trial 3  custom_cnn  COMPLETE  val_accuracy 0.9123  12.3 s`; a pruned trial shows the
        value it was pruned at."""
        model, start = self._running.pop(number, ("?", None))
        last = self._last.pop(number, None)
        if value is not None:
            outcome = f"{self.metric} {value:.4f}"
        elif state == "PRUNED" and last is not None:
            outcome = f"{self.metric} {last[1]:.4f} at epoch {last[0]}"
        else:
            outcome = "no value"
        seconds = "" if start is None else f"  {time.monotonic() - start:.1f} s"
        return f"trial {number}  {model}  {state}  {outcome}{seconds}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _params_text(params: dict[str, Any], sep: str) -> str:
    """`lr=0.00312` per parameter: the last part of each key path is enough to recognise it."""
    return sep.join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in params.items())


def leaderboard_table(result: StudyResult, metric: str, *, width: int | None = None) -> RenderableType:
    """The best trials: one row each when that fits `width`; otherwise the table without its
    parameters, which follow it as a wrapped line or two per trial, rather than a column squeezed
    into a one-word-per-line stack."""
    wide = _wide_leaderboard(result, metric)
    if width is None or _fits(wide, width):
        return wide
    return _narrow_leaderboard(result, metric)


def _fits(table: Table, width: int) -> bool:
    probe = Console(width=10_000, file=io.StringIO())
    return probe.measure(table).maximum <= width


def _value_cells(row: dict[str, Any]) -> list[str]:
    return [
        "" if row["value"] is None else f"{row['value']:.4f}",
        f"[{STATE_STYLE.get(row['state'], '')}]{row['state']}[/]",
        str(row["epochs"]),
        "" if row["seconds"] is None else f"{row['seconds']:.1f}",
    ]


def _wide_leaderboard(result: StudyResult, metric: str) -> Table:
    table = Table(title=f"{result.name}: top trials", title_justify="left")
    for column in ("trial", "model", "key params", metric, "state", "epochs", "seconds"):
        table.add_column(column, justify="right" if column in ("trial", metric, "epochs", "seconds") else "left")
    for row in result.leaderboard:
        table.add_row(str(row["number"]), row["model"], _params_text(row["params"], ", "), *_value_cells(row))
    return table


def _narrow_leaderboard(result: StudyResult, metric: str) -> Group:
    table = Table(title=f"{result.name}: top trials", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("trial", "model", metric, "state", "epochs", "seconds"):
        table.add_column(column, justify="left" if column in ("model", "state") else "right", overflow="fold")
    params = Table.grid(padding=(0, 1))
    params.add_column(justify="right", no_wrap=True)
    params.add_column(overflow="fold")  # wraps between parameters, never inside one that fits a line
    for row in result.leaderboard:
        table.add_row(str(row["number"]), row["model"], *_value_cells(row))
        if row["params"]:
            params.add_row(f"trial {row['number']}:", _params_text(row["params"], "  "))
    return Group(table, "key params:", params) if params.row_count else Group(table)


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


def class_counts_table(checks: DataChecks, *, limit: int = 40) -> Table:
    """Images per class in each split; past `limit` classes, the smallest ones (what needs a look)."""
    splits = list(checks.counts)
    table = Table(title="images per class", title_justify="left")
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    order = list(range(len(checks.classes)))
    if len(order) > limit:
        order = sorted(order, key=lambda i: checks.counts["train"][i])[:limit]
        table.caption = f"the {limit} smallest of {len(checks.classes)} classes in train"
    for i in order:
        table.add_row(checks.classes[i], *(str(checks.counts[split][i]) for split in splits))
    return table


def plan_table(plan: Plan) -> Table:
    """How much training trials get and when they are first judged: what decides small-data studies."""
    from autocnn.search.plan import describe

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
    scores.add_row("balanced accuracy", "", "", f"{s.balanced_accuracy:.4f}", "")
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
    first = [top_k_table(result.top_k)] if result.top_k is not None else []
    if result.ensemble is not None:
        first += ensemble_tables(result.ensemble)
    if result.tta is not None:
        first.append(tta_table(result.tta))
    if result.distill is not None:
        first.append(distill_table(result.distill))
    return [*first, scores, exports]


def tta_table(tta: TtaChoice) -> Table:
    """Each test-time augmentation policy on val against none, and what the kept one costs."""
    table = Table(
        title=f"test-time augmentation, judged on val ({tta.n_val} images, {tta.judged_on})",
        title_justify="left",
        caption=tta.reason(),
        caption_justify="left",
    )
    for column in ("views", "val accuracy", "fixed", "broken", "latency ms", "kept"):
        table.add_column(column, justify="left" if column == "views" else "right")
    latency = tta.latency_ms.get("none")
    table.add_row("none", f"{tta.plain_accuracy:.4f}", "", "", f"{latency:.2f}" if latency else "", "")
    for s in tta.scores:
        cost = tta.latency_ms.get(s.name)
        kept = "[green]✓[/]" if s.name == tta.policy else ""
        table.add_row(s.name, f"{s.accuracy:.4f}", str(s.fixed), str(s.broken), f"{cost:.2f}" if cost else "", kept)
    return table


def ensemble_tables(outcome: EnsembleOutcome) -> list[Table]:
    """The members and their weights, then the ensemble beside its best single trial."""
    members = Table(title="ensemble members (forward selection on val predictions)", title_justify="left")
    for column in ("trial", "model", "weight"):
        members.add_column(column, justify="left" if column == "model" else "right")
    for trial, model, weight in outcome.members:
        members.add_row(str(trial), model, f"{weight:.2f}")
    split = outcome.split
    compared = Table(
        title="ensemble against the best single trial",
        title_justify="left",
        caption=f"val: the trials' own predictions, before the refit; {split}: once, after it",
        caption_justify="left",
    )
    columns = ("model", f"val {outcome.metric}", f"{split} accuracy", f"{split} macro-F1", "latency ms", "size MB")
    for column in columns:
        compared.add_column(column, justify="left" if column == "model" else "right")
    for row in (outcome.ensemble, outcome.single):
        compared.add_row(
            row.name,
            f"{row.val_score:.4f}",
            f"{row.accuracy:.4f}",
            f"{row.macro_f1:.4f}",
            f"{row.latency_ms:.2f}",
            f"{row.size_mb:.2f}",
        )
    return [members, compared]


def distill_table(outcome: DistillOutcome) -> Table:
    """The shipped student beside its teacher and beside the same trial trained on the labels alone."""
    split = outcome.split
    table = Table(
        title=f"distilled student (trial {outcome.student_trial}) against its teacher and itself alone",
        title_justify="left",
        caption=f"student: {outcome.student_reason}; teacher: trials {', '.join(map(str, outcome.teacher_trials))}; "
        f"{split}: once, after the refits",
        caption_justify="left",
    )
    columns = ("model", f"{split} accuracy", f"{split} macro-F1", "latency ms", "size MB")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in (outcome.teacher, outcome.alone, outcome.student):
        table.add_row(
            row.name, f"{row.accuracy:.4f}", f"{row.macro_f1:.4f}", f"{row.latency_ms:.2f}", f"{row.size_mb:.2f}"
        )
    return table


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


def label_issues_table(found: LabelIssues, *, limit: int = 20) -> Table:
    """The images whose given label the out-of-sample classifier finds least likely, first."""
    title = f"possible label errors: {len(found.issues)} of {found.n_images} train + val images flagged"
    shown = found.issues[:limit]
    rest = f"; the other {len(found.issues) - len(shown)} in the CSV" if len(found.issues) > len(shown) else ""
    caption = (
        f"features: {found.features}; out-of-sample accuracy on the given labels {found.accuracy:.3f}"
        f" ({found.folds}-fold){rest}"
    )
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for column in ("file", "given", "suggested", "p(given)"):
        table.add_column(column, justify="right" if column == "p(given)" else "left", overflow="fold")
    for issue in shown:
        table.add_row(issue.item, issue.given, issue.suggested, f"{issue.p_given:.3f}")
    return table
