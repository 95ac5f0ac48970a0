"""Waiting for a server a test started on 127.0.0.1, and a port nobody uses."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT_S = 240  # the MLflow server imports a lot and starts workers: slow on 2 busy cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_answering(url: str, process: subprocess.Popen, log: Path) -> bytes:
    """The first 200 answer's body; the test fails with the server's log if it exits or never answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return response.read()
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"nothing answered on {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
