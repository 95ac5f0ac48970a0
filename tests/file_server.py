"""A local HTTP server on 127.0.0.1 for download tests: fixed files, a mimic of the hub's resolve
endpoint, and a way to cut a download short. No network is ever needed."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    """What the server holds and what it was asked for."""

    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    truncated: set[str] = field(default_factory=set)  # paths sent half-way, then the connection dropped
    hub_files: dict[str, bytes] = field(default_factory=dict)  # "timm/name/model.safetensors" -> body
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    url: str = ""


def _handler(served: Served) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            path = self.path.split("?")[0]
            served.requests.append((self.command, path))
            data, headers = self._lookup(path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", HUB_COMMIT)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            if path in served.truncated:
                self.send_header("Connection", "close")
            self.end_headers()
            if not body:
                return
            if path in served.truncated:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(data)

        def _lookup(self, path: str) -> tuple[bytes | None, dict[str, str]]:
            if path in served.files:
                return served.files[path], {"Content-Type": "application/octet-stream"}
            # The hub: /<repo>/resolve/<revision>/<file>, with the headers huggingface_hub requires.
            parts = path.strip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                key = "/".join([*parts[:2], *parts[4:]])
                data = served.hub_files.get(key)
                if data is not None:
                    etag = hashlib.sha256(data).hexdigest()
                    return data, {"X-Repo-Commit": HUB_COMMIT, "ETag": f'"{etag}"'}
            return None, {}

    return Handler


@contextmanager
def file_server(served: Served | None = None) -> Iterator[Served]:
    """Serve `served` on a free port of 127.0.0.1 until the block ends."""
    served = served or Served()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    server.daemon_threads = True
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: a connect is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
