"""`autocnn report`: one self-contained HTML file with every section, logged to the study run."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.outputs.report import SECTIONS, ReportResult, TrialFacts, build_report, families, optuna_plot
from autocnn.search.storage import open_study, storage_url
from autocnn.spec.objectives import Objective
from autocnn.tracking.tracker import Tracker
from tests.conftest import digits_spec_dict, write_spec
from tests.finished_study import FinishedStudy, finished_study_in

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedStudy]:
    with finished_study_in(tmp_path_factory.mktemp("report")) as study:
        yield study


@pytest.fixture(scope="module")
def report(study: FinishedStudy) -> ReportResult:
    return build_report(study.spec, tracking_uri=study.tracking_uri, out=study.root / "out" / "report.html")


class Sources(HTMLParser):
    """Every tag's src/href, and the text of each section's heading."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append((tag, name, value))
            if name == "id" and value:
                self.ids.append(value)


def parse(text: str) -> Sources:
    parser = Sources()
    parser.feed(text)
    return parser


def test_report_is_one_self_contained_file(report: ReportResult) -> None:
    text = report.path.read_text(encoding="utf-8")
    refs = parse(text).refs
    external = [ref for ref in refs if re.match(r"\s*(https?:)?//", ref[2])]
    assert external == []
    assert not [ref for ref in refs if ref[0] in ("script", "link")]  # plotly's JS is inline
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # the plotly bundle itself is embedded
    images = [value for tag, _, value in refs if tag == "img"]
    assert images and all(value.startswith("data:image/png;base64,") for value in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_holds_every_section(study: FinishedStudy, report: ReportResult) -> None:
    text = report.path.read_text(encoding="utf-8")
    ids = parse(text).ids
    assert report.sections == list(SECTIONS)
    for key, title in SECTIONS.items():
        assert key in ids and f"<h2>{title}</h2>" in text, key
    for plot in ("history", "importance", "parallel", "intermediate", "curves"):
        assert f"plot-{plot}" in ids, plot  # a plotly figure, not an excuse, with 2 complete trials
    leaderboard = text.split("id='leaderboard'")[1].split("</section>")[0]
    assert [int(n) for n in re.findall(r"<tr><td>(\d+)</td>", leaderboard)] == [
        row["number"] for row in study.result.leaderboard
    ]
    assert leaderboard.count("COMPLETE") == 2


def test_model_family_row_uses_the_trial_runs_facts(study: FinishedStudy, report: ReportResult) -> None:
    text = report.path.read_text(encoding="utf-8")
    families_html = text.split("id='models'")[1].split("</section>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", families_html)
    assert len(rows) == 2  # header + custom_cnn
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[1])
    tracker = Tracker(study.tracking_uri, study.spec.experiment_name)
    best = study.result.best_number
    run = next(
        r
        for r in tracker.trial_runs(tracker.find_study_run("digits-test").info.run_id)
        if r.info.run_name == f"trial-{best}"
    )
    assert cells[0] == "custom_cnn" and cells[1] == "2 (2)" and cells[2] == str(best)
    history = MlflowClient(tracker.tracking_uri).get_metric_history(run.info.run_id, "val_accuracy")
    assert float(cells[3]) == pytest.approx(max(m.value for m in history), abs=1e-4)
    assert cells[5] == f"{int(run.data.metrics['params_total']):,}"
    assert cells[7] not in ("", "—")  # weights MB: logged by the trial, or estimated from params


def test_report_is_logged_to_the_study_run(study: FinishedStudy, report: ReportResult) -> None:
    tracker = Tracker(study.tracking_uri, study.spec.experiment_name)
    parent = tracker.find_study_run("digits-test")
    assert parent is not None and report.parent_run_id == parent.info.run_id
    logged = [a.path for a in MlflowClient(tracker.tracking_uri).list_artifacts(parent.info.run_id, "report")]
    assert "report/report.html" in logged


def test_importance_explains_itself_with_fewer_than_two_complete_trials(
    study: FinishedStudy,
) -> None:
    spec = study.spec
    optuna_study = open_study(spec, storage_url(spec))
    assert "at least 2 complete trials" in optuna_plot("importance", optuna_study, 1)
    assert "plot-importance" in optuna_plot("importance", optuna_study, 2)


def test_families_describe_the_best_trial_at_its_best_epoch() -> None:
    def trial(number: int, model: str, value: float | None, state: str = "COMPLETE") -> TrialFacts:
        curves = {
            "val_accuracy": [(1, 0.5), (2, value or 0.0), (3, 0.1)],
            "val_macro_f1": [(1, 0.4), (2, 0.77), (3, 0.05)],
        }
        return TrialFacts(number, model, {}, state, value, 3, 10.0, curves=curves)

    rows = families(
        [
            trial(3, "b", 0.9),
            trial(0, "a", 0.8),
            trial(1, "a", 0.7),
            trial(2, "a", None, "PRUNED"),
        ],
        Objective("val_accuracy", "maximize"),
    )
    assert [(f.model, f.n_trials, f.n_complete, f.best.number) for f in rows] == [
        ("b", 1, 1, 3),
        ("a", 3, 2, 0),
    ]
    assert rows[1].val_accuracy == 0.8 and rows[1].val_macro_f1 == 0.77  # epoch 2, not the last one
    assert rows[1].total_seconds == 30.0


def test_report_command_writes_the_file_and_says_where(study: FinishedStudy) -> None:
    out = study.root / "cli" / "digits.html"
    result = CliRunner().invoke(
        app,
        ["report", str(study.spec_path), "--tracking-uri", study.tracking_uri, "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert out.is_file() and str(out) in result.output.replace("\n", "")


def test_report_without_a_study_is_one_line_exit_2(tmp_path: Path) -> None:
    path = write_spec(tmp_path, digits_spec_dict(name="never-ran"))
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()


def test_family_row_shows_seconds_per_frozen_trial_by_feature_path() -> None:
    from autocnn.outputs.report import families_html

    def trial(number: int, seconds: float, path: str | None, freeze: str = "backbone") -> TrialFacts:
        tags = {"autocnn.freeze": freeze} | ({"autocnn.feature_path": path} if path else {})
        return TrialFacts(number, "resnet50", {}, "COMPLETE", 0.5, 3, seconds, tags=tags)

    trials = [trial(0, 2.0, "cached"), trial(1, 4.0, "cached"), trial(2, 30.0, "full"), trial(3, 99.0, "full", "none")]
    trials.append(trial(4, 20.0, None))  # a run from before the tag: the full path
    (row,) = families(trials, Objective("val_accuracy", "maximize"))
    assert row.frozen_seconds == {"cached": [2.0, 4.0], "full": [30.0, 20.0]}
    assert "<td class=num>cached 3 (2) · full 25 (2)</td>" in families_html([row])
