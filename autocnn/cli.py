"""The `autocnn` command: a thin layer that parses options, calls the library, prints results.

It is the only place where errors become exit codes: an AutocnnError (the user's to fix) is one
line per problem on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Search CNN architectures and training settings with Optuna; every trial tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SpecPath = Annotated[Path, typer.Argument(help="The study spec (YAML).", show_default=False)]
Storage = Annotated[
    str | None, typer.Option(help="Optuna storage URL or journal file (default: <spec dir>/<name>.optuna.db).")
]
TrackingUri = Annotated[str | None, typer.Option(help="MLflow tracking URI (default: sqlite in ./mlruns).")]


@app.callback()
def quiet_libraries() -> None:
    """Settings for the command line only; the Python API leaves them to its caller.

    MLflow logs at INFO on import ("Creating initial MLflow database tables") and draws its own
    artifact progress bars; autocnn shows progress itself. Environment variables, so they hold
    whenever MLflow is first imported, and a user's own setting wins.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _quiet_optuna() -> None:
    """Trial outcomes are reported by autocnn itself: Optuna's own lines would repeat them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


@contextmanager
def user_errors() -> Iterator[None]:
    """AutocnnError -> `error: ...` lines on stderr, exit code 2."""
    from autocnn.errors import AutocnnError

    try:
        yield
    except AutocnnError as exc:
        console = _console(stderr=True)
        for line in exc.lines():
            console.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _load(spec_path: Path) -> Any:
    from autocnn import load_spec

    return load_spec(spec_path)


@app.command()
def study(
    spec: SpecPath,
    trials: Annotated[int | None, typer.Option(min=1, help="Total trials the study should reach.")] = None,
    timeout: Annotated[
        str | None, typer.Option(help="Stop starting trials after this long: 600, 90s, 45m, 3h.")
    ] = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    keep_checkpoints: Annotated[
        bool, typer.Option("--keep-checkpoints", help="Keep per-epoch trial checkpoints after trials end.")
    ] = False,
) -> None:
    """Run a study, or resume it: only the missing trials run.

    Example: autocnn study studies/digits.yaml --trials 20
    """
    from autocnn import StudyOptions, run_study
    from autocnn.console import RichReporter, leaderboard_table

    _quiet_optuna()
    with user_errors():
        loaded = _load(spec)
        seconds = _duration(timeout)
        console = _console()
        options = StudyOptions(
            trials=trials,
            timeout=seconds,
            storage=storage,
            tracking_uri=tracking_uri,
            keep_checkpoints=keep_checkpoints,
        )
        try:
            with RichReporter(console) as reporter:
                result = run_study(loaded, options, reporter)
        except KeyboardInterrupt:
            console.print(f"\n[yellow]interrupted.[/] resume with: autocnn study {spec}")
            raise typer.Exit(130) from None
        console.print(leaderboard_table(result, loaded.study.metric))
        if result.best_number is not None:
            console.print(f"best trial {result.best_number}: {loaded.study.metric} = {result.best_value:.4f}")
        console.print(f"results: {result.tracking_uri} (browse with `autocnn ui`); study: {result.storage}")
        if result.stopped_reason:
            console.print(f"[red]stopped:[/] {result.stopped_reason}")
            raise typer.Exit(1)


def _duration(value: str | None) -> float | None:
    from pydantic_core import PydanticCustomError

    from autocnn.errors import SpecError
    from autocnn.spec import parse_duration

    if value is None:
        return None
    try:
        return float(parse_duration(value))
    except PydanticCustomError:
        raise SpecError([f"--timeout: expected seconds or 90s / 45m / 3h, got {value!r}"]) from None


@app.command()
def validate(
    spec: SpecPath,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Time a few training steps per model family for the plan.")
    ] = True,
) -> None:
    """Check a spec and its data, print the search space and the plan; writes nothing.

    The plan says how many optimizer steps each trial gets, when pruning first judges it, and
    (after a few timed training steps per model family) how long trials take and how many fit.

    Example: autocnn validate studies/20classes.yaml
    """
    from autocnn.checks import check_spec
    from autocnn.console import check_tables, plan_table
    from autocnn.data import DataCache
    from autocnn.plan import plan_for

    with user_errors():
        loaded = _load(spec)
        cache = DataCache(loaded)
        report = check_spec(loaded, cache)
        plan = plan_for(loaded, cache, probe=probe)
    console = _console()
    for warning in [*report.warnings, *plan.warnings]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for table in [*check_tables(report), plan_table(plan)]:
        console.print(table)
    console.print(f"[green]ok:[/] {spec} is valid ({len(report.params)} searched parameters)")


@app.command()
def status(spec: SpecPath, storage: Storage = None) -> None:
    """Trials by state, the best trial and its value, how many remain.

    Example: autocnn status studies/digits.yaml
    """
    from autocnn import study_status
    from autocnn.console import counts_table, leaderboard_table

    _quiet_optuna()
    with user_errors():
        loaded = _load(spec)
        result = study_status(loaded, storage=storage)
    console = _console()
    console.print(counts_table(result, loaded.study.target_trials))
    for number in result.stale:
        console.print(
            f"[yellow]stale:[/] trial {number} is RUNNING but its process is gone; it resumes on the next `autocnn study`"
        )
    if result.best_number is not None:
        console.print(f"best trial {result.best_number}: {loaded.study.metric} = {result.best_value:.4f}")
    console.print(leaderboard_table(result, loaded.study.metric))


@app.command()
def report(
    spec: SpecPath,
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: reports/<name>.html).")] = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Write one self-contained HTML report of a study and log it to the study's MLflow run.

    Example: autocnn report studies/digits.yaml
    """
    from autocnn import build_report

    _quiet_optuna()
    with user_errors():
        result = build_report(_load(spec), storage=storage, tracking_uri=tracking_uri, out=out)
    console = _console()
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    logged = f"; logged to MLflow run {result.parent_run_id}" if result.parent_run_id else ""
    console.print(f"report: {result.path} ({result.size_bytes / 1e6:.1f} MB, {result.n_trials} trials){logged}")


@app.command()
def finalize(
    spec: SpecPath,
    trial: Annotated[int | None, typer.Option(help="Trial number to finalize (default: the best).")] = None,
    refit: Annotated[
        bool,
        typer.Option(
            "--refit/--no-refit",
            help="Refit on train + val for the trial's best epoch count; --no-refit keeps the trial's saved weights.",
        ),
    ] = True,
    retrain: Annotated[
        bool, typer.Option(help="Instead of a refit, train the config again on train (val picks the epoch).")
    ] = False,
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, help="Re-train the K best configs on train; pick the best mean val score.")
    ] = 1,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per config for --top-k: mean and std over them.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Export folder (default: models/<name>/).")] = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Refit the best trial on train + val, evaluate it once on test, register it, export ONNX and int8 ONNX.

    Example: autocnn finalize studies/digits.yaml --top-k 3 --seeds 3
    """
    from autocnn import FinalizeOptions
    from autocnn import finalize as run_finalize
    from autocnn.console import finalize_tables

    _quiet_optuna()

    options = FinalizeOptions(
        trial=trial,
        retrain=retrain,
        refit=refit,
        top_k=top_k,
        seeds=seeds,
        storage=storage,
        tracking_uri=tracking_uri,
        out_dir=out,
    )
    console = _console()
    with user_errors():
        result = run_finalize(_load(spec), options, say=lambda text: console.print(text, style="dim", markup=False))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    for table in finalize_tables(result):
        console.print(table)
    console.print(f"exported to {result.out_dir}; MLflow run {result.run_id}; registered as {result.registered}")


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Folder written by `autocnn finalize`.", show_default=False)],
    paths: Annotated[list[Path], typer.Argument(help="Image files and folders.", show_default=False)],
    top: Annotated[int, typer.Option(min=1, help="How many labels to show per image.")] = 3,
    torch: Annotated[bool, typer.Option("--torch", help="Run the PyTorch weights instead of ONNX.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Top-k labels with probabilities for images; unreadable files are reported and skipped.

    Example: autocnn predict models/digits/ img1.png photos/ --top 3
    """
    import json

    from autocnn import Predictor, predict_files
    from autocnn.console import predictions_table

    with user_errors():
        predictor = Predictor(model_dir, backend="torch" if torch else "onnx")
        result = predict_files(predictor, paths, top=top)
    errors = _console(stderr=True)
    for path, reason in result.skipped:
        errors.print(f"[yellow]skipped:[/] {path}: {reason}", highlight=False)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    elif result.predictions:
        _console().print(predictions_table(result))
    if not result.predictions:
        raise typer.Exit(1)


@app.command()
def schema(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the schema to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the spec's JSON Schema, for editor completion and checks (yaml-language-server) and other tools.

    Example: autocnn schema -o studies/autocnn.schema.json
    """
    from autocnn.spec import json_schema_text

    text = json_schema_text()
    if out is None:
        sys.stdout.write(text)
        return
    try:
        _replace_file(out, text)
    except OSError as exc:
        _console(stderr=True).print(f"[bold red]error:[/] {out}: cannot write ({exc.strerror or exc})", highlight=False)
        raise typer.Exit(2) from None


def _replace_file(path: Path, text: str) -> None:
    """Write beside the target, then rename: an editor reading the schema never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Interface to bind; only this machine by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    tracking_uri: TrackingUri = None,
) -> None:
    """Open the MLflow UI over this project's runs (./mlruns).

    Example: autocnn ui --port 5001
    """
    from autocnn.storage import enable_wal, sqlite_path
    from autocnn.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        _console(stderr=True).print(f"[bold red]error:[/] {db}: no MLflow store yet; run `autocnn study SPEC` first")
        raise typer.Exit(2)
    if db is not None:
        enable_wal(db)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    url = f"http://{host}:{port}/#/experiments?workflowType=machine_learning"
    _console().print(f"MLflow UI on {url} over {uri} (Ctrl-C stops it)")
    _run_foreground(command)


def _run_foreground(command: list[str], run: Callable[..., Any] = subprocess.run) -> None:
    # One worker and no background job runner: a local UI over one SQLite file needs neither.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    try:
        raise typer.Exit(run(command, check=False, env=env).returncode)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


weights_app = typer.Typer(
    help="Pretrained backbone weights on this machine (the Hugging Face hub cache timm uses).",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch")
def weights_fetch(
    names: Annotated[list[str], typer.Argument(help="timm model names, as keys under `models`.", show_default=False)],
) -> None:
    """Download timm's pretrained weights into the local cache; the only command that goes online.

    Example: autocnn weights fetch resnet50 efficientnet_b0 mobilenetv2_035
    """
    from autocnn.models.hub import fetch_weights

    with user_errors():
        fetched = fetch_weights(names)
    for name, path in fetched:
        _console().print(f"[green]cached:[/] {name} -> {path}", highlight=False)


@weights_app.command("list")
def weights_list() -> None:
    """Show the timm weights in the local cache, which studies use without a network.

    Example: autocnn weights list
    """
    from rich.table import Table

    from autocnn.models.hub import hub_cache_dir, list_cached_weights

    with user_errors():
        rows = list_cached_weights()
    console = _console()
    if not rows:
        console.print(f"no timm weights cached in {hub_cache_dir()}; fetch some with `autocnn weights fetch NAME`")
        return
    table = Table("weights", "MB", "path", title=f"cached weights ({hub_cache_dir()})")
    for row in rows:
        table.add_row(row.model, f"{row.size_mb:.1f}", str(row.path))
    console.print(table)


if __name__ == "__main__":
    app()
