"""The MLflow UI, as `autocnn ui` serves it, seen by a real headless Chromium.

The test starts its own `autocnn ui` on a free 127.0.0.1 port over a short digits study, drives
Debian's chromium through chromedriver (selenium), and checks what a user looks for: the study's
parent run with its trial runs nested under it, a trial's metric charts, the confusion matrix and
the HTML report as artifacts. Screenshots of each page land in the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autocnn.outputs.report import build_report
from autocnn.tracking.tracker import Tracker
from tests.finished_study import FinishedStudy, finish_study
from tests.local_servers import free_port, wait_until_answering

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 90
ML = "workflowType=machine_learning"  # MLflow 3 opens on its GenAI view otherwise

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary (install Debian's chromium and chromium-driver, as .ci/run does)",
)


@dataclass(frozen=True)
class Served:
    study: FinishedStudy
    base: str
    experiment_id: str
    parent_id: str
    trial_ids: dict[int, str]
    report_name: str
    shots: Path


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (mlflow ui and its workers), then SIGKILL."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.pid, signal.SIGKILL)  # workers that outlived their parent
    except ProcessLookupError:
        pass
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if CHROMIUM is None:
        pytest.skip("no Chromium binary")
    root = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        study = finish_study(root)
        report = build_report(study.spec, tracking_uri=study.tracking_uri)
    tracker = Tracker(study.tracking_uri, "digits-test")
    parent = tracker.find_study_run("digits-test").info.run_id
    trials = {int(r.data.tags["optuna.trial_number"]): r.info.run_id for r in tracker.trial_runs(parent)}
    port = free_port()
    log = root / "ui.log"
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }  # no job runner needed to browse
    command = [
        sys.executable,
        "-m",
        "autocnn",
        "ui",
        "--port",
        str(port),
        "--tracking-uri",
        study.tracking_uri,
    ]
    with log.open("wb") as out:
        server = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_answering(f"{base}/health", server, log)
        shots = root / "screenshots"
        shots.mkdir()
        yield Served(study, base, tracker.experiment_id, parent, trials, report.path.name, shots)
    finally:
        stop(server)


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    if CHROMEDRIVER is None:
        pytest.fail("chromium is installed but chromedriver is not: install Debian's chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={served.shots.parent / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, shot: Path | None = None) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(condition)
    except TimeoutException:
        if shot is not None:
            driver.save_screenshot(str(shot))
        pytest.fail(f"the MLflow UI never showed {what} (screenshot: {shot})")


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def by_text(driver: Any, text: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return [e for e in driver.find_elements(By.XPATH, f"//*[text()='{text}']") if e.is_displayed()]


def open_page(driver: Any, served: Served, route: str) -> None:
    driver.get(f"{served.base}/#/experiments/{served.experiment_id}{route}")


def click_file(driver: Any, name: str, shot: Path) -> None:
    """Click a name in the run's artifact tree once it is shown."""
    found = wait_for(driver, lambda d: by_text(d, name), f"the artifact {name}", shot)
    found[0].click()


# --------------------------------------------------------------------------- the tests


@needs_chromium
def test_study_run_shows_its_trial_runs_nested_under_it(served: Served, browser: Any) -> None:
    shot = served.shots / "runs.png"
    open_page(browser, served, f"/runs?{ML}")
    parent_row = f".ag-row[row-id='{served.parent_id}']"
    wait_for(browser, lambda d: css(d, parent_row), "the study's parent run", shot)
    assert "digits-test" in css(browser, parent_row)[0].text
    assert not css(browser, f".ag-row[row-id='{served.trial_ids[0]}']")  # collapsed under it

    expand = css(browser, f"{parent_row} button[data-component-id*='runnamecellrenderer']")
    assert expand, "the parent run has no expander: its trials are not nested"
    browser.execute_script("arguments[0].click()", expand[0])
    wanted = [f".ag-row[row-id='{run_id}']" for run_id in served.trial_ids.values()]
    wait_for(browser, lambda d: all(css(d, sel) for sel in wanted), "the nested trial runs", shot)
    names = css(browser, ".ag-center-cols-container, .ag-pinned-left-cols-container, .ag-root")[0].text
    for number in served.trial_ids:
        assert f"trial-{number}" in names
    # The Dataset column: the study's data, by name and digest, as each trial run's input.
    tracker = Tracker(served.study.tracking_uri, "digits-test")
    expected = {run_id: tracker.dataset_inputs(run_id)[0]["digest"] for run_id in served.trial_ids.values()}

    def datasets_shown(driver: Any) -> bool:
        rows = {run_id: " ".join(e.text for e in css(driver, f".ag-row[row-id='{run_id}']")) for run_id in expected}
        return all("digits" in rows[run_id] and digest in rows[run_id] for run_id, digest in expected.items())

    wait_for(browser, datasets_shown, "the dataset (name and digest) in the trial runs' Dataset column", shot)
    browser.save_screenshot(str(shot))


@needs_chromium
def test_trial_run_shows_its_metric_charts(served: Served, browser: Any) -> None:
    shot = served.shots / "metrics.png"
    best = served.study.result.best_number
    open_page(browser, served, f"/runs/{served.trial_ids[best]}/model-metrics?{ML}")
    card = "[data-testid='experiment-view-compare-runs-card']"

    def chart(name: str) -> Callable[[Any], Any]:
        def found(driver: Any) -> Any:
            for element in css(driver, card):
                if element.text.split("\n", 1)[0].strip() == name:
                    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
                    plots = element.find_elements("css selector", ".js-plotly-plot svg.main-svg")
                    return element if plots else None
            driver.execute_script(
                "document.querySelectorAll('main *').forEach(e => {"
                " if (e.scrollHeight > e.clientHeight + 10) e.scrollTop += 400 })"
            )
            return None

        return found

    for name in ("val_accuracy", "val_macro_f1", "val_loss", "train_loss"):
        element = wait_for(browser, chart(name), f"a {name} chart for trial {best}", shot)
        assert f"trial-{best}" in element.text  # the legend names the run
    browser.save_screenshot(str(shot))


@needs_chromium
def test_confusion_matrix_is_shown_as_an_image(served: Served, browser: Any) -> None:
    shot = served.shots / "confusion_matrix.png"
    best = served.study.result.best_number
    open_page(browser, served, f"/runs/{served.trial_ids[best]}/artifacts?{ML}")
    click_file(browser, "confusion_matrix.png", shot)

    def loaded_image(driver: Any) -> Any:
        images = [i for i in css(driver, "main img") if (i.get_attribute("src") or "").startswith("blob:")]
        ok = [
            i for i in images if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
        ]
        return ok[0] if ok else None

    image = wait_for(browser, loaded_image, "the confusion matrix image", shot)
    assert browser.execute_script("return arguments[0].naturalWidth", image) >= 200
    browser.save_screenshot(str(shot))


@needs_chromium
def test_report_is_an_artifact_of_the_study_run_and_renders(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    shot = served.shots / "report.png"
    open_page(browser, served, f"/runs/{served.parent_id}/artifacts?{ML}")
    click_file(browser, "report", shot)
    click_file(browser, served.report_name, shot)
    frame = wait_for(browser, lambda d: css(d, "iframe"), "the report in the artifact viewer", shot)[0]
    browser.switch_to.frame(frame)
    try:
        body = wait_for(
            browser,
            lambda d: (b := d.find_element(By.TAG_NAME, "body")) and "Leaderboard" in b.text and b,
            "the report's content",
            shot,
        )
        assert "autocnn report: digits-test" in body.text and "Confusion matrix of the best trial" in body.text
        plots = wait_for(
            browser,
            lambda d: len(css(d, ".js-plotly-plot")) >= 4 and css(d, ".js-plotly-plot"),
            "plots",
        )
        assert len(plots) >= 4  # Optuna's plots and the learning curves drew offline, inside MLflow
    finally:
        browser.switch_to.default_content()
    browser.save_screenshot(str(shot))


@needs_chromium
def test_the_ajax_endpoints_the_pages_load_answer(served: Served, browser: Any) -> None:
    """The same requests the pages make, from the page's own origin."""
    open_page(browser, served, f"/runs?{ML}")
    fetch = """
        const [url, body, done] = arguments;
        const headers = {'Content-Type': 'application/json'};
        const init = body ? {method: 'POST', headers, body} : {};
        fetch(url, init).then(async r => done({status: r.status,
                                               type: r.headers.get('content-type'),
                                               text: (await r.text()).slice(0, 200000)}))
                        .catch(e => done({status: 0, text: String(e)}));
    """

    def call(url: str, body: dict | None = None) -> dict:
        return browser.execute_async_script(fetch, url, json.dumps(body) if body else None)

    browser.set_script_timeout(WAIT_S)
    found = call(
        "/ajax-api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [served.experiment_id],
            "filter": f"tags.`mlflow.parentRunId` = '{served.parent_id}'",
        },
    )
    assert found["status"] == 200
    runs = json.loads(found["text"])["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == sorted(f"trial-{n}" for n in served.trial_ids)
    for run in runs:  # what the runs table's Dataset column shows
        [dataset] = [d["dataset"] for d in run["inputs"]["dataset_inputs"]]
        assert dataset["name"] == "digits" and dataset["source_type"] == "code" and len(dataset["digest"]) == 10
    best = served.trial_ids[served.study.result.best_number]
    history = call(f"/ajax-api/2.0/mlflow/metrics/get-history?run_id={best}&metric_key=val_accuracy")
    assert [m["step"] for m in json.loads(history["text"])["metrics"]] == [1, 2]
    image = call(f"/get-artifact?path=confusion_matrix.png&run_uuid={best}")
    assert image["status"] == 200 and image["type"].startswith("image/png")
    report = call(f"/get-artifact?path=report/{served.report_name}&run_uuid={served.parent_id}")
    assert report["status"] == 200 and "autocnn report: digits-test" in report["text"]
