"""Specs written to break autocnn: each ends in exit 2 with a few lines naming the key or the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.spec.load import MAX_ERROR_LINES, MAX_SPEC_BYTES

runner = CliRunner()

BASE = "name: hostile\ndata: {source: digits}\nmodels: {custom_cnn: {}}\n"


def validate(path: Path) -> list[str]:
    """`autocnn validate` on a spec that must be refused: its error lines (exit 2, no traceback)."""
    result = runner.invoke(app, ["validate", "--no-probe", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), result.output
    return lines


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# The document's own mapping is the first level, so the 32nd `[` (column 6 + 32) opens the 33rd.
HOSTILE = {
    "nested thousands deep (flow)": (
        "name: hostile\ndata: " + "[" * 5000 + "]" * 5000 + "\n",
        "line 2, column 38: invalid YAML: nested deeper than 32 levels",
    ),
    "nested deep but loadable (block)": (
        BASE + "train:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(60)) + "  " * 61 + "v: 1\n",
        "invalid YAML: nested deeper than 32 levels",
    ),
    "an alias inside its own anchor": (
        "name: &a [*a]\n",
        "invalid YAML: alias *a refers to a collection that contains it",
    ),
    "storage with an unsupported scheme": (
        BASE + "study: {storage: 'gopher://example.com/study'}\n",
        "study.storage: unsupported scheme 'gopher:'",
    ),
    "storage with a traversal": (
        BASE + "study: {storage: 'sqlite:///../../../tmp/study.db'}\n",
        "study.storage: '..' path segments are refused",
    ),
    "a journal path with a traversal": (BASE + "study: {storage: 'runs/../../x.log'}\n", "study.storage: '..'"),
    "tracking uri file: with a traversal": (
        BASE + "mlflow: {tracking_uri: 'file:../../etc/mlruns'}\n",
        "mlflow.tracking_uri: '..' path segments are refused",
    ),
    "tracking uri with an unsupported scheme": (
        BASE + "mlflow: {tracking_uri: 'gopher://example.com/'}\n",
        "mlflow.tracking_uri: unsupported scheme 'gopher:'",
    ),
    "tracking uri as a plain path": (
        BASE + "mlflow: {tracking_uri: 'mlruns'}\n",
        "mlflow.tracking_uri: a plain path is MLflow's file store",
    ),
    "an absurd number of epochs": (
        BASE + "train: {epochs: 1000000000000000000000000000000}\n",
        "train.epochs: expected a whole number from 1 to 10000 or auto, got 1000000000000000000000000000000",
    ),
    "an absurd batch size": (
        BASE + "train: {batch_size: {low: 1, high: 99999999999999999999}}\n",
        "train.batch_size.high: must be <= 65536",
    ),
    "an absurd trial count": (BASE + "study: {trials: 100000000000}\n", "study.trials: must be <= 100000"),
    "an absurd seed": (BASE + "seed: 99999999999999999999\n", "seed: must be <= 2147483647"),
    "a number Python will not read": (BASE + "seed: " + "9" * 5000 + "\n", "invalid YAML: cannot read '99999"),
    "a date that does not exist": ("name: 2024-13-45\n", "line 1, column 7: invalid YAML: cannot read '2024-13-45'"),
    "a study named off": (
        "name: off\ndata: {source: digits}\nmodels: {custom_cnn: {}}\n",
        "name: input should be a valid string, got False (YAML reads yes/no/on/off as booleans; quote the word",
    ),
    "a study named yes": (
        "name: yes\ndata: {source: digits}\nmodels: {custom_cnn: {}}\n",
        "got True (YAML reads yes/no",
    ),
    "a study named by a number": (
        "name: 2024\ndata: {source: digits}\nmodels: {custom_cnn: {}}\n",
        "name: input should be a valid string, got 2024 (YAML reads it as a number; quote it",
    ),
    "a data root name longer than file systems allow": (
        "name: hostile\ndata: {source: imagefolder, root: '" + "a" * 300 + "'}\nmodels: {custom_cnn: {}}\n",
        "data.root: a file or folder name in it is 300 bytes; file systems allow 255",
    ),
    "a NUL in a weights path": (
        'name: hostile\ndata: {source: digits}\nmodels: {resnet18: {pretrained: "w\\0.pth"}}\n',
        "models.resnet18.pretrained: must not contain control characters",
    ),
    "a newline in the experiment name": (
        BASE + 'mlflow: {experiment: "a\\nINFO forged log line"}\n',
        "mlflow.experiment: must not contain control characters",
    ),
    "a list as a key": (BASE + "? [a, b]\n: 1\n", "invalid YAML: a key must be a word or a number"),
    "too many choices": (
        BASE + "train: {batch_size: {choices: [" + ", ".join(str(i) for i in range(1, 1001)) + "]}}\n",
        "train.batch_size.choices: list should have at most 256 items",
    ),
    "too many models": (
        "name: hostile\ndata: {source: digits}\nmodels: {" + ", ".join(f"m{i}" for i in range(500)) + "}\n",
        "models: at most 64 models, got 500",
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "expected"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_spec_is_refused_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = spec_file(tmp_path, text)
    lines = validate(path)
    assert len(lines) <= 3, lines
    assert any(expected in line for line in lines), lines
    assert all(str(path) in line for line in lines), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.yaml"]


@pytest.mark.timeout(60)
def test_an_alias_bomb_is_measured_once_and_refused_quickly(tmp_path: Path) -> None:
    # Nine levels of ten aliases each would expand to a billion values.
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "x-bomb:\n" + "".join(f"  {line}\n" for line in levels) + "name: hostile\ndata: {source: digits}\n"
    text += "train: {lr: {choices: *a8}}\nmodels: {custom_cnn: {}}\n"
    lines = validate(spec_file(tmp_path, text))
    assert any("x-bomb: unknown key" in line for line in lines), lines
    assert any("train.lr.choices.0: input should be a valid number" in line for line in lines), lines


def test_many_problems_are_capped(tmp_path: Path) -> None:
    models = ", ".join(f"m{i}: {{unfreeze_last: 0}}" for i in range(40))
    lines = validate(spec_file(tmp_path, f"name: hostile\ndata: {{source: digits}}\nmodels: {{{models}}}\n"))
    assert len(lines) == MAX_ERROR_LINES + 1
    assert lines[-1].endswith(f"... and {40 - MAX_ERROR_LINES} more problems")


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = spec_file(tmp_path, BASE + "# " + "x" * MAX_SPEC_BYTES + "\n")
    (line,) = validate(path)
    assert line == f"error: {path}: larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a few KB of YAML"


def test_a_folder_and_a_fifo_are_not_spec_files(tmp_path: Path) -> None:
    (line,) = validate(tmp_path)
    assert line == f"error: {tmp_path}: is a folder, not a spec file"
    if not hasattr(os, "mkfifo"):
        return
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    (line,) = validate(fifo)  # reading a FIFO would block until someone writes to it
    assert line == f"error: {fifo}: not a regular file"


def test_deep_nesting_exits_2_in_a_real_process(tmp_path: Path) -> None:
    """Through the installed entry point: the interpreter's own traceback would show here."""
    path = spec_file(tmp_path, "name: " + "[" * 20000 + "]" * 20000 + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "autocnn", "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: {path}: line 1, column 38: invalid YAML: nested deeper than 32 levels; a spec needs about 6"
    ]
