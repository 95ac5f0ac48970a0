"""A two-objective digits study end to end: pruning on, constraints marking trials, the Pareto
front on the parent run and in the report, and finalize choosing from it (or refusing, in one line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.outputs.report import build_report
from autocnn.search.costs import COSTS_ATTR, LATENCY_MACHINE_TAG, feasible
from autocnn.search.options import StudyOptions
from autocnn.search.pareto import pareto_front
from autocnn.search.storage import open_study, storage_url
from autocnn.search.study import run_study
from autocnn.spec.load import load_spec
from autocnn.spec.objectives import study_objectives
from autocnn.tracking.tracker import Tracker, default_tracking_uri
from tests.conftest import digits_spec_dict, write_spec

pytestmark = pytest.mark.slow

PARAMS_BOUND = 30_000  # width 8 fits, width 32 does not


def mo_spec(name: str, **study: Any) -> dict[str, Any]:
    spec = digits_spec_dict(
        name=name,
        train={"epochs": 4, "batch_size": 64, "lr": {"low": 1e-3, "high": 5e-3, "log": True}},
        models={"custom_cnn": {"depth": {"low": 2, "high": 3}, "width": {"choices": [8, 32]}, "dropout": 0.1}},
    )
    spec["study"] = {
        "trials": 6,
        "pruner": "median",
        "objectives": ["val_accuracy", "latency_ms"],
        "constraints": {"params": PARAMS_BOUND},
        **study,
    }
    return spec


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("multi")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        spec_path = write_spec(root / "studies", mo_spec("digits-mo"))
        uri = default_tracking_uri(root / "mlruns")
        run_study(load_spec(spec_path), StudyOptions(tracking_uri=uri))
    return root, spec_path, uri


def test_two_objective_study_ends_with_a_front_of_feasible_trials(finished: tuple[Path, Path, str]) -> None:
    _, spec_path, uri = finished
    spec = load_spec(spec_path)
    study = open_study(spec, storage_url(spec))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "latency_ms"]
    assert not [t.number for t in study.trials if t.state.name == "FAIL"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done and all(len(t.values) == 2 for t in done)
    for t in study.trials:  # costs and constraints are known before the first epoch, pruned or not
        if t.state.name in ("COMPLETE", "PRUNED"):
            assert set(t.user_attrs[COSTS_ATTR]) == {"latency_ms", "params"}
            assert "params" in t.constraints
            assert t.user_attrs[LATENCY_MACHINE_TAG].endswith("(ONNX Runtime CPU)")
    assert any(not feasible(t) for t in done), "the width-32 trials break params <= 30000"
    front = pareto_front(study, study_objectives(spec))
    assert front and all(feasible(t) for t in front)
    # The parent run carries the front.
    tracker = Tracker(uri, spec.name)
    parent = tracker.find_study_run(spec.name)
    assert parent is not None
    tags = tracker.run_tags(parent.info.run_id)
    assert tags["autocnn.pareto_front"] == ",".join(str(t.number) for t in front)
    record = json.loads(
        tracker.download_artifact(parent.info.run_id, "pareto_front.json", finished[0] / "dl").read_text()
    )
    assert [item["trial"] for item in record["front"]] == [t.number for t in front]
    assert record["constraints"] == {"params": {"max": PARAMS_BOUND}}


def test_report_shows_the_front(finished: tuple[Path, Path, str]) -> None:
    root, spec_path, uri = finished
    report = build_report(load_spec(spec_path), tracking_uri=uri, out=root / "report.html")
    assert "pareto" in report.sections
    text = report.path.read_text(encoding="utf-8")
    section = text.split("id='pareto'")[1].split("</section>")[0]
    assert "plot-pareto" in section and "Pareto front" in section and "outside the constraints" in section
    assert "<b>front</b>" in section and "params &lt;= 30000" in section


def test_finalize_picks_from_the_front_and_records_the_trade_off(finished: tuple[Path, Path, str]) -> None:
    root, spec_path, uri = finished
    out = root / "picked"
    rule = "min latency_ms where val_accuracy >= 0.1"
    result = CliRunner().invoke(
        app,
        ["finalize", str(spec_path), "--no-refit", "--pick", rule, "--out", str(out), "--tracking-uri", uri],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    trade_off = json.loads((out / "trade_off.json").read_text())
    assert trade_off["rule"] == rule and trade_off["trial"] in trade_off["pareto_front"]
    assert trade_off["values"]["params"] <= PARAMS_BOUND
    assert json.loads((out / "metrics.json").read_text())["trade_off"] == trade_off


def test_a_constraint_no_trial_meets_is_one_line_at_finalize(in_tmp: Path) -> None:
    spec_path = write_spec(
        in_tmp / "studies", mo_spec("digits-none", trials=2, pruner="none", constraints={"params": 10})
    )
    spec = load_spec(spec_path)
    run_study(spec, StudyOptions(trials=2))
    result = CliRunner().invoke(app, ["finalize", str(spec_path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: study.constraints: none of the 2 complete trials meets them")
    assert "Traceback" not in result.output
