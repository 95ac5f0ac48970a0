"""The command line: help, exit codes, one-line errors, and nothing written on bad input."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autocnn.cli.app import app
from tests.conftest import REPO, digits_spec_dict, write_spec

runner = CliRunner()


def test_every_command_has_help_with_an_example() -> None:
    import typer.main

    group = typer.main.get_command(app)
    assert {"study", "validate", "status", "ui"} <= set(group.commands)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a sub-app, e.g. `weights`
            continue
        assert command.help and "Example: autocnn" in command.help, name


def test_cli_start_up_imports_no_heavy_library() -> None:
    code = "import sys, autocnn.cli.app; print(sorted(m for m in ('torch', 'mlflow', 'timm', 'optuna', 'albumentations') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_validate_prints_data_and_search_space(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(REPO / "studies" / "digits.yaml")])
    assert result.exit_code == 0, result.output
    for text in ("search space", "train.lr", "float log-uniform", "models.custom_cnn.depth", "is valid"):
        assert text in result.output


def test_bad_spec_is_one_line_per_problem_exit_2_and_writes_nothing(in_tmp: Path) -> None:
    spec = digits_spec_dict(train={"lr": {"low": -1, "high": 1, "log": True}, "epochs": True})
    path = write_spec(in_tmp / "studies", spec)
    for command in ("validate", "study", "status"):
        result = runner.invoke(app, [command, str(path)])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), result.output
        assert "train.lr.low: must be > 0, got -1" in result.output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in in_tmp.rglob("*")) == ["spec.yaml", "studies"]


def test_missing_data_root_is_named(in_tmp: Path) -> None:
    path = write_spec(in_tmp, digits_spec_dict(data={"source": "imagefolder", "root": "data/none"}))
    result = runner.invoke(app, ["study", str(path)])
    assert result.exit_code == 2
    assert "data/none: data root not found" in result.output
    assert not (in_tmp / "mlruns").exists() and not list(in_tmp.glob("*.db"))


def test_status_and_ui_before_any_study(in_tmp: Path) -> None:
    path = write_spec(in_tmp, digits_spec_dict())
    result = runner.invoke(app, ["status", str(path)])
    assert result.exit_code == 2 and "no study storage yet" in result.output
    result = runner.invoke(app, ["ui"])
    assert result.exit_code == 2 and "no MLflow store yet" in result.output


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_status_names_the_worker_running_each_trial(in_tmp: Path) -> None:
    """Trials run by other processes, here on another machine, are shown with their host and pid."""
    import optuna

    from autocnn.search.resume import OWNER_ATTR
    from autocnn.search.storage import open_storage, storage_url
    from autocnn.spec.load import load_spec

    path = write_spec(in_tmp, digits_spec_dict())
    url = storage_url(load_spec(path))
    study = optuna.create_study(study_name="digits-test", storage=open_storage(url), direction="maximize")
    for owner in ("gpu-box-1:4242", "gpu-box-2:77"):
        study.ask().set_user_attr(OWNER_ATTR, owner)
    result = runner.invoke(app, ["status", str(path)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "running: trial 0 on gpu-box-1:4242" in result.output
    assert "running: trial 1 on gpu-box-2:77" in result.output
    assert "stale" not in result.output  # another host's process cannot be seen, so it is not called dead


def test_bad_timeout_option(in_tmp: Path) -> None:
    path = write_spec(in_tmp, digits_spec_dict())
    result = runner.invoke(app, ["study", str(path), "--timeout", "soon"])
    assert result.exit_code == 2 and "--timeout: expected seconds" in result.output


@pytest.mark.slow
def test_study_then_status_from_the_command_line(in_tmp: Path) -> None:
    path = write_spec(in_tmp, digits_spec_dict(study={"trials": 2}, train={"epochs": 1}))
    result = runner.invoke(app, ["study", str(path)])
    assert result.exit_code == 0, result.output
    assert "top trials" in result.output and "best trial" in result.output
    result = runner.invoke(app, ["status", str(path)])
    assert result.exit_code == 0, result.output
    assert "complete" in result.output and "remaining" in result.output
    result = runner.invoke(app, ["study", str(path), "--trials", "3"])
    assert result.exit_code == 0 and "resuming study 'digits-test': 2 of 3 trials done, 1 to run" in result.output


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2, "the README has exactly two install-and-run commands"
    quickstart, tests = commands
    assert quickstart.endswith("autocnn study studies/digits.yaml")
    assert tests in ci.splitlines()


# --------------------------------------------------------------------------- output without a terminal


def _plain_console() -> tuple[Any, io.StringIO]:
    from rich.console import Console

    out = io.StringIO()
    return Console(file=out, width=80, force_terminal=False), out


def _leaderboard_result(n: int) -> Any:
    from autocnn.search.results import StudyResult

    params = {
        "train.lr": 0.0031234,
        "train.weight_decay": 1.2e-05,
        "train.batch_size": 64,
        "train.optimizer": "adamw",
        "models.efficientnet_b0.pretrained": True,
        "models.efficientnet_b0.freeze": "partial",
        "models.efficientnet_b0.dropout": 0.25,
        "augment.preset": "medium",
    }
    rows = [
        {"number": i, "model": "efficientnet_b0", "params": params, "value": 0.9 - i / 100, "state": "COMPLETE"}
        | {"epochs": 12, "seconds": 123.4}
        for i in range(n)
    ]
    return StudyResult("flowers", "sqlite:///s.db", "sqlite:///m.db", {"COMPLETE": n}, 0, 0.9, n, leaderboard=rows)


def test_without_a_terminal_each_finished_trial_is_one_plain_line() -> None:
    from types import SimpleNamespace

    from autocnn.cli.console import RichReporter

    console, out = _plain_console()
    with RichReporter(console, metric="val_accuracy") as reporter:
        reporter.study_started(name="digits", done=0, target=3, to_run=3)
        for number, state in enumerate(["COMPLETE", "PRUNED", "FAIL"]):
            reporter.trial_sampled(number, SimpleNamespace(model="custom_cnn"))  # type: ignore[arg-type]
            reporter.epoch_done(number, SimpleNamespace(epoch=2, val_accuracy=0.5), "val_accuracy")  # type: ignore[arg-type]
            reporter.trial_finished(number, state, 0.9 if state == "COMPLETE" else None)
    lines = out.getvalue().splitlines()
    assert lines[0] == "study 'digits': 3 trials"
    assert lines[1].startswith("trial 0  custom_cnn  COMPLETE  val_accuracy 0.9000  ") and lines[1].endswith(" s")
    assert lines[2].startswith("trial 1  custom_cnn  PRUNED  val_accuracy 0.5000 at epoch 2  ")
    assert lines[3].startswith("trial 2  custom_cnn  FAIL  no value  ")
    assert len(lines) == 4 and "\x1b" not in out.getvalue()  # no live display, no colour codes


def test_the_leaderboard_fits_80_columns_with_key_params_under_the_model() -> None:
    from autocnn.cli.console import leaderboard_table

    console, out = _plain_console()
    console.print(leaderboard_table(_leaderboard_result(3), "val_accuracy", width=80))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, out.getvalue()
    text = out.getvalue()
    for expected in ("efficientnet_b0", "lr=0.00312", "weight_decay=1.2e-05", "freeze=partial", "0.8800", "COMPLETE"):
        assert expected in text  # whole: no parameter is broken over two lines
    assert len(lines) < 3 * 8, text  # not seven lines per trial


def test_a_wide_console_keeps_one_row_per_trial() -> None:
    from rich.console import Console

    from autocnn.cli.console import leaderboard_table

    out = io.StringIO()
    console = Console(file=out, width=250, force_terminal=False)
    console.print(leaderboard_table(_leaderboard_result(3), "val_accuracy", width=console.width))
    rows = [line for line in out.getvalue().splitlines() if "efficientnet_b0" in line]
    assert len(rows) == 3 and all("lr=0.00312" in row for row in rows)


def test_library_warnings_are_hidden_and_with_verbose_one_line_without_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import warnings

    from autocnn.cli.app import _route_library_output

    for verbose in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            restore = _route_library_output(verbose)
            try:
                warnings.warn("something a library's developers care about", UserWarning, stacklevel=1)
            finally:
                restore()
        err = capsys.readouterr().err
        if not verbose:
            assert err == ""
            continue
        [line] = err.splitlines()  # no source line under it
        assert line.startswith("WARNING py.warnings: UserWarning: something a library's developers care about")
        assert line.endswith(")") and "(test_cli.py:" in line


@pytest.mark.slow
def test_a_study_logged_to_a_file_prints_a_line_per_trial_and_an_80_column_leaderboard(in_tmp: Path) -> None:
    path = write_spec(in_tmp / "studies", digits_spec_dict(study={"trials": 3}, train={"epochs": 1}))
    log = in_tmp / "study.log"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "MLFLOW_LOGGING_LEVEL")}
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "autocnn", "study", str(path)],
            cwd=in_tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=True,
            timeout=600,
        )
    text = log.read_text()
    lines = text.splitlines()
    trial_lines = [line for line in lines if re.match(r"trial \d+  ", line)]  # not `trial 1: <params>`
    assert [line.split()[1] for line in trial_lines] == ["0", "1", "2"], text
    assert all(" COMPLETE " in line or " PRUNED " in line for line in trial_lines), text
    title = next(i for i, line in enumerate(lines) if line.strip() == "digits-test: top trials")
    board = lines[title : next(i for i, line in enumerate(lines) if line.startswith("best trial"))]
    assert board and max(len(line) for line in board) <= 80, text
    assert "INFO" not in text and "Warning" not in text and "warnings.warn" not in text, text
    assert "\x1b" not in text  # no colour codes or cursor movement in a log
