"""The command line: help, exit codes, one-line errors, and nothing written on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autocnn.cli import app
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
    code = "import sys, autocnn.cli; print(sorted(m for m in ('torch', 'mlflow', 'timm', 'optuna', 'albumentations') if m in sys.modules))"
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
