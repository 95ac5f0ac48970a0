"""Servers the command runs in the foreground (the MLflow UI, optuna-dashboard): in their own
process group, stopped with the command, by a signal or by a kill of the command itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
    watcher: tuple[subprocess.Popen[bytes], int] | None = None
    try:
        server = subprocess.Popen(command, env=env, start_new_session=True)
        watcher = _watch_for_our_death(server.pid)
        if stopped_at:  # the signal came while the server was being started
            _signal_group(server.pid, signal.SIGTERM)
        code = _wait(server, stopped_at)
    finally:
        if server is not None:
            _end_group(server)
        if watcher is not None:
            _dismiss(*watcher)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopped_at else code


# The watcher blocks on a pipe whose only writer is autocnn: when autocnn dies without stopping the
# server (kill -9, an OOM kill), the read returns, and it stops the server's group as autocnn would.
WATCHER = """\
import os, signal, sys, time
os.read(int(sys.argv[1]), 1)
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.killpg(int(sys.argv[2]), sig)
    except ProcessLookupError:
        break
    time.sleep(float(sys.argv[3]))
"""


def _watch_for_our_death(pgid: int) -> tuple[subprocess.Popen[bytes], int]:
    """A tiny process, in a session of its own (a Ctrl-C does not reach it), that stops the
    server's group once this process is gone; returns it and the pipe's write end."""
    read_end, write_end = os.pipe()
    try:
        watcher = subprocess.Popen(
            [sys.executable, "-c", WATCHER, str(read_end), str(pgid), str(STOP_GRACE_S)],
            pass_fds=(read_end,),
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return watcher, write_end


def _dismiss(watcher: subprocess.Popen[bytes], write_end: int) -> None:
    """The server's group is stopped already: end the watcher before it could signal a reused id."""
    watcher.kill()
    watcher.wait()
    os.close(write_end)


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
