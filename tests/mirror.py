"""A GLDv2 mirror folder served over HTTP on 127.0.0.1, with switches that simulate faults.

The server supports ``Range: bytes=N-`` requests (206 Partial Content) and
records every request, so tests can check what the download code requested.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import TracebackType

_RANGE = re.compile(r"bytes=(\d+)-")
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class RequestRecord:
    """One GET request as the server received it."""

    path: str
    range: str | None
    status: int


@dataclass
class Faults:
    """Switches that change how the server responds. Paths are relative to the mirror root."""

    # Paths whose next response sends the headers and half of the body, then closes.
    drop_halfway_once: set[str] = field(default_factory=set)
    # Paths whose next response is this HTTP status with no body.
    status_once: dict[str, int] = field(default_factory=dict)
    # Paths whose next response waits this many seconds before sending the body.
    stall_once: dict[str, float] = field(default_factory=dict)
    # When true, Range headers are ignored and every response is 200 with the whole file.
    ignore_range: bool = False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mirror: MirrorServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mirror = mirror

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that timed out or hung up makes the handler's writes fail. That is
        # the point of the fault switches, so the traceback is not printed.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        mirror = self.server.mirror
        relative = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        range_header = self.headers.get("Range")
        status_fault, stall_seconds, drop = mirror.take_faults(relative)

        if status_fault is not None:
            self._send_empty(relative, range_header, status_fault)
            return
        path = mirror.root / relative
        if ".." in PurePosixPath(relative).parts or not path.is_file():
            self._send_empty(relative, range_header, 404)
            return

        data = path.read_bytes()
        start = 0
        match = _RANGE.fullmatch(range_header or "")
        if match is not None and not mirror.faults.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self._send_empty(
                    relative, range_header, 416, {"Content-Range": f"bytes */{len(data)}"}
                )
                return
        body = data[start:]
        status = 206 if start > 0 else 200
        mirror.record(RequestRecord(relative, range_header, status))

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()

        if stall_seconds:
            time.sleep(stall_seconds)
        if drop:
            body = body[: len(body) // 2]
            self.close_connection = True
        for offset in range(0, len(body), _CHUNK_BYTES):
            self.wfile.write(body[offset : offset + _CHUNK_BYTES])
        self.wfile.flush()

    def _send_empty(
        self,
        relative: str,
        range_header: str | None,
        status: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.server.mirror.record(RequestRecord(relative, range_header, status))
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class MirrorServer:
    """HTTP server for the folder `root` at ``http://127.0.0.1:<port>``, in a background thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._server = _Server(self)
        # A short poll interval makes stop() return quickly, because shutdown() waits
        # for the next poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> MirrorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def record(self, request: RequestRecord) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_for(self, path: str) -> list[RequestRecord]:
        """Return the recorded requests for one path, oldest first."""
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def tar_requests(self) -> list[RequestRecord]:
        with self._lock:
            return [request for request in self.requests if request.path.endswith(".tar")]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def take_faults(self, relative: str) -> tuple[int | None, float, bool]:
        """Remove and return the one-shot faults for a path as (status, stall seconds, drop)."""
        with self._lock:
            status = self.faults.status_once.pop(relative, None)
            stall = self.faults.stall_once.pop(relative, 0.0)
            drop = relative in self.faults.drop_halfway_once
            self.faults.drop_halfway_once.discard(relative)
        return status, stall, drop
