"""The `autocnn` command: a thin layer that parses options, calls the library, prints results.

It is the only place where errors become exit codes: an AutocnnError (the user's to fix) is one
line per problem on stderr and exit code 2, with no traceback. It is also the only place that
starts other processes (the MLflow UI, optuna-dashboard), and it stops them when it is stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from autocnn.cli.servers import serve

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


_verbose = False  # set once per command by the callback below


@app.callback()
def quiet_libraries(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show other libraries' INFO logs and warnings.")
    ] = False,
) -> None:
    """Settings for the command line only; the Python API leaves them to its caller.

    autocnn reports trials, data problems and errors itself. What MLflow, Optuna, torch and the
    rest log at INFO ("Creating initial MLflow database tables") or warn about is meant for their
    own developers: hidden unless --verbose, and then one line each, never a source line. MLflow's
    settings are environment variables so that they hold whenever MLflow is first imported; a
    user's own setting wins.
    """
    global _verbose
    _verbose = verbose
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # With a tracking server MLflow prints two links per ended run: a study's output would be mostly links.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    ctx.call_on_close(_route_library_output(verbose))


def _route_library_output(verbose: bool) -> Callable[[], None]:
    """Every library's log records and Python's warnings go to one stderr handler: INFO and up with
    --verbose, errors only without. Returns what puts the previous settings back, for a caller
    that goes on in the same process (tests invoking the app)."""
    root = logging.getLogger()
    level, showwarning = root.level, warnings.showwarning
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.ERROR)
    warnings.showwarning = _log_warning

    def restore() -> None:
        root.removeHandler(handler)
        root.setLevel(level)
        warnings.showwarning = showwarning

    return restore


def _log_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """A warning as one log line naming its file, without the source line Python would print."""
    where = f"{Path(filename).name}:{lineno}"
    logging.getLogger("py.warnings").warning("%s: %s (%s)", category.__name__, message, where)


def _quiet_optuna() -> None:
    """Trial outcomes are reported by autocnn itself: Optuna's own lines would repeat them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if _verbose else optuna.logging.ERROR)


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


def _load(spec_path: Path, *, storage: str | None = None, tracking_uri: str | None = None) -> Any:
    """The spec, after the command line's --storage / --tracking-uri pass the spec's own checks."""
    from autocnn import load_spec
    from autocnn.spec.fields import check_overrides

    check_overrides(storage=storage, tracking_uri=tracking_uri)
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
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes on this machine, sharing the study: each gets its share of the cores, or a GPU.",
        ),
    ] = 1,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for running trials' checkpoints; on storage every worker machine sees, so a dead "
            "worker's trial resumes on another. Default: .autocnn/ beside the spec."
        ),
    ] = None,
) -> None:
    """Run a study, or resume it: only the missing trials run.

    Any number of `autocnn study` processes, on this machine or others sharing --storage, run the
    same study together.

    Example: autocnn study studies/digits.yaml --trials 20 --workers 2
    """
    from autocnn import StudyOptions, run_study
    from autocnn.cli.console import RichReporter, leaderboard_table

    _quiet_optuna()
    with user_errors():
        loaded = _load(spec, storage=storage, tracking_uri=tracking_uri)
        seconds = _duration(timeout)
        console = _console()
        options = StudyOptions(
            trials=trials,
            timeout=seconds,
            storage=storage,
            tracking_uri=tracking_uri,
            keep_checkpoints=keep_checkpoints,
            workers=workers,
            checkpoint_dir=checkpoint_dir.resolve() if checkpoint_dir is not None else None,
        )
        try:
            with RichReporter(console, metric=loaded.study.training_metric) as reporter:
                result = run_study(loaded, options, reporter)
        except KeyboardInterrupt:
            console.print(f"\n[yellow]interrupted.[/] resume with: autocnn study {spec}")
            raise typer.Exit(130) from None
        console.print(leaderboard_table(result, loaded.study.training_metric, width=console.width))
        if result.best_number is not None:
            console.print(f"best trial {result.best_number}: {loaded.study.training_metric} = {result.best_value:.4f}")
        # Paths are printed whole, even past the width: a path broken over two lines cannot be copied.
        console.print(f"results: {result.tracking_uri} (browse with `autocnn ui`)", soft_wrap=True)
        console.print(f"study: {result.storage} (browse with `autocnn dashboard {spec}`)", soft_wrap=True)
        if result.stopped_reason:
            console.print(f"[red]stopped:[/] {result.stopped_reason}")
            raise typer.Exit(1)


def _duration(value: str | None, option: str = "--timeout") -> float | None:
    from pydantic_core import PydanticCustomError

    from autocnn.errors import SpecError
    from autocnn.spec.schema import parse_duration

    if value is None:
        return None
    try:
        return float(parse_duration(value))
    except PydanticCustomError:
        raise SpecError([f"{option}: expected seconds or 90s / 45m / 3h, got {value!r}"]) from None


@app.command()
def validate(
    spec: SpecPath,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Time a few training steps per model family for the plan.")
    ] = True,
    labels: Annotated[
        bool,
        typer.Option(
            "--labels",
            help="Also list the train/val images most likely mislabelled (confident learning on cross-validated "
            "predictions); writes reports/<name>-labels.csv and .png.",
        ),
    ] = False,
) -> None:
    """Check a spec and its data, print the search space and the plan; writes no study (a dataset by name
    or missing pretrained weights are fetched into their caches on first use).

    The plan says how many optimizer steps each trial gets, when pruning first judges it, and
    (after a few timed training steps per model family) how long trials take and how many fit.

    Example: autocnn validate studies/20classes.yaml
    """
    from autocnn.cli.console import RichReporter, check_tables, class_counts_table, plan_table
    from autocnn.data.cache import DataCache
    from autocnn.data.checks import run_data_checks
    from autocnn.search.checks import check_spec, unreadable_images
    from autocnn.search.first_use import fetch_on_first_use
    from autocnn.search.plan import plan_for

    with user_errors():
        loaded = _load(spec)
        with RichReporter(_console()) as downloads:
            fetch_on_first_use(loaded, downloads)
        cache = DataCache(loaded.data, seed=loaded.seed)
        report = check_spec(loaded, cache)
        plan = plan_for(loaded, cache, probe=probe)
        checks = run_data_checks(cache, metric=loaded.study.metric)
    console = _console()
    for warning in [*report.warnings, *unreadable_images(cache), *checks.warnings, *plan.warnings]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    for table in [*check_tables(report), class_counts_table(checks), plan_table(plan)]:
        console.print(table)
    console.print(f"[green]ok:[/] {spec} is valid ({len(report.params)} searched parameters)")
    if labels:
        _check_labels(loaded, cache, console)


def _check_labels(loaded: Any, cache: Any, console: Any) -> None:
    """`validate --labels`: the flagged images as a table, and where the CSV and contact sheet went."""
    from autocnn.cli.console import label_issues_table
    from autocnn.outputs.labels import find_label_issues

    with user_errors():
        found = find_label_issues(loaded, cache, say=lambda text: console.print(text, style="dim", markup=False))
    console.print(label_issues_table(found))
    console.print(f"contact sheet: {found.png_path}; every flagged image: {found.csv_path}", soft_wrap=True)


@app.command()
def status(spec: SpecPath, storage: Storage = None) -> None:
    """Trials by state, the best trial and its value, how many remain.

    Example: autocnn status studies/digits.yaml
    """
    from autocnn import study_status
    from autocnn.cli.console import counts_table, leaderboard_table

    _quiet_optuna()
    with user_errors():
        loaded = _load(spec, storage=storage)
        result = study_status(loaded, storage=storage)
    console = _console()
    console.print(counts_table(result, loaded.study.target_trials))
    for number, worker in result.running.items():
        if number not in result.stale and number not in result.frozen:
            console.print(f"running: trial {number} on {worker}", highlight=False)
    for number, why in result.frozen.items():
        console.print(f"[yellow]frozen:[/] trial {number} is RUNNING but {why}", highlight=False)
    for number in result.stale:
        console.print(
            f"[yellow]stale:[/] trial {number} is RUNNING but its process is gone; it resumes on the next `autocnn study`"
        )
    for number, original in result.retries.items():
        console.print(
            f"waiting: trial {number} continues trial {original} on the next `autocnn study`", highlight=False
        )
    if result.best_number is not None:
        console.print(f"best trial {result.best_number}: {loaded.study.training_metric} = {result.best_value:.4f}")
    console.print(leaderboard_table(result, loaded.study.training_metric, width=console.width))


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
        loaded = _load(spec, storage=storage, tracking_uri=tracking_uri)
        result = build_report(loaded, storage=storage, tracking_uri=tracking_uri, out=out)
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
    pick: Annotated[
        str | None,
        typer.Option(
            help='Choose from the Pareto front, e.g. "max val_accuracy where latency_ms <= 5" '
            "(default: the most accurate feasible trial)."
        ),
    ] = None,
    ensemble: Annotated[
        int,
        typer.Option(
            min=1,
            help="Ship up to K trials as one model, chosen by forward selection on their val predictions "
            "and each refit as a single trial would be.",
        ),
    ] = 1,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            help="Judge test-time augmentation (flips where the spec allows them, corner crops) on val; "
            "ship it only where it helps beyond noise.",
        ),
    ] = False,
    distill: Annotated[
        bool,
        typer.Option(
            "--distill",
            help="Ship the fastest trial near the best, trained on an ensemble's soft labels (--ensemble K members, "
            "3 by default), beside the ensemble and the same trial alone.",
        ),
    ] = False,
    student: Annotated[
        int | None,
        typer.Option(
            help="With --distill: the trial to teach (default: the fastest within one standard error of the best)."
        ),
    ] = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Refit the best trial on train + val, evaluate it once on test, register it, export ONNX and int8 ONNX.

    Example: autocnn finalize studies/digits.yaml --top-k 3 --seeds 3
    """
    from autocnn import FinalizeOptions
    from autocnn import finalize as run_finalize
    from autocnn.cli.console import finalize_tables

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
        pick=pick,
        ensemble=ensemble,
        tta=tta,
        distill=distill,
        student=student,
    )
    console = _console()
    with user_errors():
        loaded = _load(spec, storage=storage, tracking_uri=tracking_uri)
        result = run_finalize(loaded, options, say=lambda text: console.print(text, style="dim", markup=False))
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
    explain: Annotated[
        bool, typer.Option("--explain", help="Also write each image beside its Grad-CAM heat map (top label).")
    ] = False,
    explain_dir: Annotated[Path, typer.Option(help="Folder for the --explain pictures.")] = Path("explanations"),
) -> None:
    """Top-k labels with probabilities for images; unreadable files are reported and skipped.

    Example: autocnn predict models/digits/ img1.png photos/ --top 3 --explain
    """
    import json

    from autocnn import Predictor, predict_files
    from autocnn.cli.console import predictions_table

    with user_errors():
        predictor = Predictor(model_dir, backend="torch" if torch else "onnx")
        result = predict_files(predictor, paths, top=top, explain_dir=explain_dir if explain else None)
    errors = _console(stderr=True)
    for path, reason in result.skipped:
        errors.print(f"[yellow]skipped:[/] {path}: {reason}", highlight=False)
    if explain and result.predictions:  # on stderr: --json's stdout stays one JSON document
        errors.print(f"explanations: {len(result.predictions)} Grad-CAM pictures in {explain_dir}", highlight=False)
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
    from autocnn.files import write_text_atomically
    from autocnn.spec.schema import json_schema_text

    text = json_schema_text()
    if out is None:
        sys.stdout.write(text)
        return
    try:
        write_text_atomically(out, text)
    except OSError as exc:
        _console(stderr=True).print(
            f"[bold red]error:[/] {out}: cannot write ({exc.strerror or exc})", highlight=False, soft_wrap=True
        )
        raise typer.Exit(2) from None


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Interface to bind; only this machine by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    tracking_uri: TrackingUri = None,
) -> None:
    """Open the MLflow UI over this project's runs (./mlruns).

    Example: autocnn ui --port 5001
    """
    from autocnn.spec.fields import check_overrides
    from autocnn.sqlite import enable_wal, sqlite_path
    from autocnn.tracking.tracker import default_tracking_uri

    with user_errors():
        check_overrides(tracking_uri=tracking_uri)
    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        _console(stderr=True).print(
            f"[bold red]error:[/] {db}: no MLflow store yet; run `autocnn study SPEC` first", soft_wrap=True
        )
        raise typer.Exit(2)
    if db is not None:
        enable_wal(db)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    url = f"http://{host}:{port}/#/experiments?workflowType=machine_learning"
    _console().print(f"MLflow UI on {url} over {uri} (Ctrl-C stops it)", soft_wrap=True)
    # One worker and no background job runner: a local UI over one SQLite file needs neither.
    raise typer.Exit(serve(command, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}))


@app.command()
def dashboard(
    spec: SpecPath,
    storage: Storage = None,
    host: Annotated[str, typer.Option(help="Interface to bind; only this machine by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of optuna-dashboard.")] = 8080,
) -> None:
    """Open optuna-dashboard over the study's Optuna storage (the optional `dashboard` extra).

    Example: autocnn dashboard studies/digits.yaml --port 8080
    """
    from rich.markup import escape

    if not _installed("optuna_dashboard"):
        _console(stderr=True).print(
            f"[bold red]error:[/] optuna-dashboard is not installed; install it with: {escape(DASHBOARD_INSTALL)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    from autocnn import study_status

    _quiet_optuna()
    with user_errors():
        url = study_status(_load(spec, storage=storage), storage=storage).storage  # an error when there is no study yet
    command = [*_dashboard_command(), url, "--host", host, "--port", str(port)]
    _console().print(f"optuna-dashboard on http://{host}:{port} over {url} (Ctrl-C stops it)", soft_wrap=True)
    raise typer.Exit(serve(command, env=dict(os.environ)))


DASHBOARD_INSTALL = "pip install 'autocnn[dashboard]' (or: pip install optuna-dashboard)"


def _dashboard_command() -> list[str]:
    """optuna-dashboard's own script, from this environment first; the package has no __main__."""
    script = shutil.which("optuna-dashboard", path=os.pathsep.join([str(Path(sys.executable).parent), os.defpath]))
    return [script] if script else [sys.executable, "-m", "optuna_dashboard._cli"]


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


weights_app = typer.Typer(
    help="Pretrained backbone weights on this machine (the Hugging Face hub cache timm uses).",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch")
def weights_fetch(
    names: Annotated[list[str], typer.Argument(help="timm model names, as keys under `models`.", show_default=False)],
) -> None:
    """Download timm's pretrained weights into the local cache, ahead of a study on an offline machine.

    Example: autocnn weights fetch resnet50 efficientnet_b0 mobilenetv2_035
    """
    from autocnn.cli.console import RichReporter
    from autocnn.models.hub import fetch_weights

    console = _console()
    with user_errors(), RichReporter(console) as bars:
        fetched = fetch_weights(names, progress=bars.download_progress)
    for name, path in fetched:
        console.print(f"[green]cached:[/] {name} -> {path}", highlight=False)


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


# --------------------------------------------------------------------------- from data to a first study


@app.command()
def init(
    data_dir: Annotated[
        Path, typer.Argument(help="A folder of class folders (or train/ val/ [test/]).", show_default=False)
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Spec to write (default: studies/<folder name>.yaml).")
    ] = None,
    budget: Annotated[str, typer.Option(help="Time the study may take: 90s, 45m, 3h.")] = "30m",
    flip: Annotated[
        bool, typer.Option("--flip/--no-flip", help="--no-flip: no mirrored images (letters, digits, arrows).")
    ] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace the spec if it exists.")] = False,
    weights: Annotated[
        list[str] | None,
        typer.Option(
            "--weights",
            help="A timm backbone to search first (its weights cached or fetched), or NAME=FILE for a local "
            "weight file; repeatable. Backbones whose weights are cached here are searched anyway.",
        ),
    ] = None,
) -> None:
    """Write a commented study spec for a folder of images, sized to the data, this machine and the budget.

    Example: autocnn init data/birds --budget 1h -o studies/birds.yaml --weights efficientnet_lite0
    """
    from rich.markup import escape

    from autocnn.cli.init_spec import init_spec

    with user_errors():
        seconds = _duration(budget, option="--budget") or 0.0
        if seconds < 60:
            from autocnn.errors import SpecError

            raise SpecError([f"--budget: at least a minute, got {budget!r}"])
        result = init_spec(data_dir, out=out, budget_s=seconds, flip=flip, force=force, weights=weights or [])
    console = _console()
    for line in result.choices.header:
        console.print(line, highlight=False, soft_wrap=True)
    models = ", ".join(["custom_cnn", *result.choices.backbones])
    console.print(f"searching: {models}; images at {result.choices.image_size} px; budget {result.choices.timeout}")
    for note in result.choices.backbone_note[1:]:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    console.print(
        f"[green]wrote[/] {result.path}; next: autocnn validate {result.path} && autocnn study {result.path}",
        soft_wrap=True,
    )


data_app = typer.Typer(
    help="Datasets by name (cifar10, cifar100): the cache studies read, or as files.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="cifar10 or cifar100.", show_default=False)],
    out_dir: Annotated[
        Path, typer.Argument(help="New folder for train/ val/ test/ class folders of PNGs.", show_default=False)
    ],
    labels: Annotated[
        str | None, typer.Option(help="cifar100: fine (100 classes) or coarse (20 superclasses).")
    ] = None,
    val: Annotated[float, typer.Option(min=0.01, max=0.5, help="Share of the training images kept for val/.")] = 0.2,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the stratified val split (a spec's seed draws the same).")
    ] = 0,
) -> None:
    """Download a dataset by name (once, into the shared cache) and write it as an image folder.

    Example: autocnn data fetch cifar100 data/cifar100-coarse --labels coarse
    """
    from autocnn.cli.console import RichReporter
    from autocnn.data.named import NAMED, export_imagefolder

    with user_errors():
        if name not in NAMED:
            from autocnn.errors import DataError

            raise DataError(f"NAME: unknown dataset {name!r}; choose one of: {', '.join(NAMED)}")
        if labels is not None and labels not in ("fine", "coarse"):
            from autocnn.errors import DataError

            raise DataError(f"--labels: expected fine or coarse, got {labels!r}")
        console = _console()
        with RichReporter(console) as bars:
            counts = export_imagefolder(
                name,
                out_dir,
                labels=labels,
                val=val,
                seed=seed,
                say=bars.message,
                progress=bars.download_progress,
                written=lambda done, total: bars.count_progress("writing images", done, total),
            )
    shown = ", ".join(f"{part} {n}" for part, n in counts.items())
    console.print(
        f"[green]wrote[/] {out_dir}: {shown} images; use it with data.source: imagefolder, root: {out_dir}",
        soft_wrap=True,
    )


if __name__ == "__main__":
    app()
