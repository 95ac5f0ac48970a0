"""Servers autocnn starts (`autocnn ui`, `autocnn dashboard`) end with it: a stop signal to autocnn
alone, as a process manager or a closed terminal sends it, frees the port and leaves no process.

Each test starts the real server over a short finished digits study, waits until it answers,
signals the autocnn process (not its group), then polls with deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autocnn.cli.app import app
from tests.finished_study import FinishedStudy, finished_study_in
from tests.local_servers import free_port, wait_until_answering

STOP_TIMEOUT_S = 30  # autocnn's own grace period is 10 s

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process trees from /proc")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedStudy]:
    with finished_study_in(tmp_path_factory.mktemp("servers")) as study:
        yield study


def start(args: list[str], cwd: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """`python -m autocnn ARGS` in a session of its own, as a service manager starts it."""
    log = cwd / f"server-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "autocnn", *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log


def _stat(pid: int) -> list[str] | None:
    """Fields after the command name in /proc/PID/stat: state, ppid, pgrp, ...; None once gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pids: set[int]) -> set[int]:
    """Those still running: a zombie (exited, not reaped yet) holds no port and does no work."""
    return {pid for pid in pids if (fields := _stat(pid)) is not None and fields[0] != "Z"}


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as any server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_and_check(process: subprocess.Popen[bytes], sig: int, port: int, log: Path) -> None:
    """Signal autocnn alone; it must exit 0, free the port and leave none of its processes."""
    spawned = descendants(process.pid)
    assert spawned, "the server runs in a child process of autocnn"
    os.kill(process.pid, sig)
    try:
        code = process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"autocnn did not exit within {STOP_TIMEOUT_S} s of {signal.Signals(sig).name}")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (running(spawned) or not port_is_free(port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = running(spawned)
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after autocnn exited: {sorted(left)}"
    assert port_is_free(port), f"port {port} is still taken"
    assert code == 0, log.read_text()[-3000:]


@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_ui_stopped_by_a_signal_frees_its_port_and_leaves_no_process(study: FinishedStudy, sig: int) -> None:
    port = free_port()
    process, log = start(["ui", "--port", str(port), "--tracking-uri", study.tracking_uri], study.root)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/health", process, log)
        stop_and_check(process, sig, port, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _dashboard_study(base: str, name: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as response:
        studies = json.loads(response.read())["study_summaries"]
    study_id = next(s["study_id"] for s in studies if s["study_name"] == name)
    with urllib.request.urlopen(f"{base}/api/studies/{study_id}?after=0", timeout=10) as response:
        return json.loads(response.read())


@needs_proc
@pytest.mark.slow
def test_dashboard_shows_the_metric_name_and_ctrl_c_stops_it(study: FinishedStudy) -> None:
    pytest.importorskip("optuna_dashboard")
    port = free_port()
    process, log = start(["dashboard", str(study.spec_path), "--port", str(port)], study.root)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_answering(f"{base}/api/studies", process, log)
        assert _dashboard_study(base, "digits-test")["objective_names"] == ["val_accuracy"]
        stop_and_check(process, signal.SIGINT, port, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_dashboard_without_the_package_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # what an environment without it sees
    result = CliRunner().invoke(app, ["dashboard", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: optuna-dashboard is not installed"), result.output
    assert "pip install 'autocnn[dashboard]'" in lines[0]


def test_a_server_that_ends_by_itself_passes_on_its_exit_code() -> None:
    from autocnn.cli.servers import serve

    assert serve([sys.executable, "-c", "raise SystemExit(3)"], env=dict(os.environ)) == 3


def test_a_killed_autocnn_leaves_no_server_behind() -> None:
    """kill -9 of the process that runs `autocnn ui` or `dashboard`: its watcher stops the server."""
    from autocnn.cli.servers import _group_alive

    server = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
    starter = f"import os, sys; from autocnn.cli.servers import serve; serve([sys.executable, '-c', {server!r}], env=dict(os.environ))"
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    assert _group_alive(server_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _group_alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(server_pid)
