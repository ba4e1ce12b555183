"""A small threaded static file server on loopback that honours HTTP Range requests.

The local run serves the tiny base model through it, so fetch-model does a real
download (and tests use it to interrupt, resume, and refuse transfers).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single ``Range: bytes=a-b`` requests (206/416)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test and demo output quiet

    def send_head(self) -> Any:
        header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        match = _RANGE.match(header.strip()) if header else None
        if not match or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else size - 1
        if start >= size:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        end = min(end, size - 1)
        handle = path.open("rb")
        handle.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Limited(handle, end - start + 1)

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if isinstance(source, _Limited):
            remaining = source.length
            while remaining > 0:
                chunk = source.handle.read(min(1 << 16, remaining))
                if not chunk:
                    break
                outputfile.write(chunk)
                remaining -= len(chunk)
            return
        super().copyfile(source, outputfile)


class _Limited:
    def __init__(self, handle: Any, length: int) -> None:
        self.handle, self.length = handle, length

    def close(self) -> None:
        self.handle.close()


class StaticServer:
    """Serve ``root`` on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, root: Path, handler: Callable[..., Any] | None = None) -> None:
        directory = os.fspath(root)
        handler_class = handler or RangeRequestHandler

        def make_handler(*args: Any, **kwargs: Any) -> Any:
            if isinstance(handler_class, type) and issubclass(handler_class, SimpleHTTPRequestHandler):
                kwargs["directory"] = directory
            return handler_class(*args, **kwargs)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
