"""Servers the command runs in the foreground (the MLflow UI, optuna-dashboard): in their own
process group, stopped with the command, by a signal or by a kill of the command itself."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType

# Ctrl-C, a process manager's stop, a closed terminal (no SIGHUP on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
STOP_GRACE_S = 10.0  # how long a stopped server may take to close before it is killed


def serve(command: list[str], *, env: dict[str, str]) -> int:
    """Run a server until it ends or autocnn is stopped; the exit code for autocnn.

    The server gets a session of its own, so it and every process it starts (MLflow's uvicorn
    worker) form one process group, which autocnn stops as a whole: on Ctrl-C, SIGTERM (a process
    manager) or SIGHUP (a closed terminal) the group gets SIGTERM, and SIGKILL on a second signal
    or after STOP_GRACE_S; nothing is left holding the port. Stopping is how a server ends, so a
    stop on request exits 0; a server that ends by itself (port taken) passes on its own code.
    """
    stopped_at: list[float] = []
    server: subprocess.Popen[bytes] | None = None

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stopped_at.append(time.monotonic())
        if server is not None:
            _signal_group(server.pid, signal.SIGTERM if len(stopped_at) == 1 else signal.SIGKILL)

    previous = {sig: signal.signal(sig, on_stop) for sig in STOP_SIGNALS}
    try:
        server = subprocess.Popen(command, env=env, start_new_session=True)
        if stopped_at:  # the signal came while the server was being started
            _signal_group(server.pid, signal.SIGTERM)
        code = _wait(server, stopped_at)
    finally:
        if server is not None:
            _end_group(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopped_at else code


def _wait(server: subprocess.Popen[bytes], stopped_at: list[float]) -> int:
    """The server's exit code; a server still running STOP_GRACE_S after a stop is killed."""
    while True:
        try:
            return server.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stopped_at and time.monotonic() - stopped_at[0] > STOP_GRACE_S:
                _signal_group(server.pid, signal.SIGKILL)


def _end_group(server: subprocess.Popen[bytes]) -> None:
    """Stop what is left of the server's group (a worker can outlive its parent) and reap the server.

    The group is signalled only while a member lives or the server is unreaped: until then its id
    cannot be given to another process.
    """
    if server.poll() is None or _group_alive(server.pid):
        _signal_group(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while (server.poll() is None or _group_alive(server.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.poll() is None or _group_alive(server.pid):
        _signal_group(server.pid, signal.SIGKILL)
    server.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies (exited, not yet reaped) do not count."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
