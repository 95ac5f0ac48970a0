"""Going online on first use: whether it can, quickly, and what it shows while it does.

Datasets by name and pretrained weights are fetched the first time a spec needs them. On a
machine without a network that must fail in seconds with a message naming what is missing,
never after a minute of a library's retries, so every download is preceded by one TCP connect
to its host under a short timeout. `HF_HUB_OFFLINE=1`, set by the user, forbids downloads of
both kinds: it is the usual switch on air-gapped machines.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0  # one TCP connect: a reachable host answers in well under a second
OFFLINE_VARIABLE = "HF_HUB_OFFLINE"
_TRUE = {"1", "ON", "YES", "TRUE"}

# (what, bytes done, bytes in all or None when unknown); called from the downloading thread.
DownloadProgress = Callable[[str, int, int | None], None]


def user_offline() -> bool:
    """Whether the user forbade downloads; read at call time, so a test or a notebook can change it."""
    return os.environ.get(OFFLINE_VARIABLE, "").strip().upper() in _TRUE


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.hostname or "", port


def unreachable(url: str, *, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why `url`'s host cannot be reached, or None when a TCP connection opens within `timeout`.

    The name lookup runs inside the same bounded wait: a resolver that never answers (a laptop
    on a plane) costs `timeout`, not the resolver's own minute.
    """
    host, port = _host_port(url)
    if not host:
        return f"{url} has no host"
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot reach {host}:{port} ({getattr(exc, 'strerror', None) or exc})")

    worker = threading.Thread(target=connect, name="autocnn-connect-probe", daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:.0f} s"


def offline_reason(url: str) -> str | None:
    """Why nothing can be downloaded from `url` now, or None when it can be tried."""
    if user_offline():
        return f"{OFFLINE_VARIABLE}=1 is set"
    return unreachable(url)


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


@contextmanager
def watch_file(path: Path, label: str, progress: DownloadProgress | None, *, total: int | None) -> Iterator[None]:
    """Report a file's growth while a library downloads into it (torchvision takes no callback)."""
    if progress is None:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            progress(label, _size(path), total)

    poller = threading.Thread(target=poll, name="autocnn-download-progress", daemon=True)
    poller.start()
    try:
        yield
    finally:
        stop.set()
        poller.join()
    progress(label, _size(path), _size(path))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tqdm_reporting_to(label: str, progress: DownloadProgress | None) -> type | None:
    """A tqdm class for huggingface_hub's `tqdm_class=`: its updates go to `progress`, not stderr.

    A study's live display owns the terminal; a second bar written to stderr underneath it would
    come out as one garbled line.
    """
    if progress is None:
        return None
    from tqdm.auto import tqdm

    class Reporting(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done = 0

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            progress(label, self.done, int(self.total) if self.total else None)
            return None

    return Reporting
