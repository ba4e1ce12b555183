"""A stand-in Kubernetes API server on 127.0.0.1 for KubeApi's tests: answers what a test puts
into ``StandIn.objects`` and records every request (method, path, headers, body)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from kubernetes import client
from zthumb_operator.api import KubeApi


class StandIn(BaseHTTPRequestHandler):
    """Answers what the tests put into ``objects`` (path -> JSON); records every request."""

    objects: ClassVar[dict[str, Any]] = {}
    errors: ClassVar[dict[str, int]] = {}  # path -> the status a GET, PATCH or DELETE answers
    requests: ClassVar[list[tuple[str, str, dict[str, str], Any]]] = []

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, dict(self.headers), None))
        found = self.objects.get(self.path.split("?")[0])
        if self.path.split("?")[0] in self.errors:
            code = self.errors[self.path.split("?")[0]]
            self._answer(code, {"kind": "Status", "code": code})
        elif found:
            self._answer(200, found)
        else:
            self._answer(404, {"kind": "Status", "code": 404})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, dict(self.headers), body))
        # An Event has a generateName; the API server would add a random suffix.
        name = body["metadata"].get("name") or body["metadata"]["generateName"] + "x"
        path = f"{self.path.split('?')[0]}/{name}"
        if path in self.objects:
            self._answer(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
            return
        self.objects[path] = body
        self._answer(201, body)

    def _answer_stored(self, method: str) -> None:
        """PATCH and DELETE: recorded with their body; answer the stored object, 404 without one."""
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((method, self.path, dict(self.headers), body))
        path = self.path.split("?")[0]
        status = self.objects.get(path.removesuffix("/status"))
        if path in self.errors:
            self._answer(self.errors[path], {"kind": "Status", "code": self.errors[path]})
        elif status is None:
            self._answer(404, {"kind": "Status", "code": 404})
        else:
            self._answer(200, status if method == "PATCH" else {"kind": "Status", "status": "Success"})

    def do_PATCH(self) -> None:
        self._answer_stored("PATCH")

    def do_DELETE(self) -> None:
        self._answer_stored("DELETE")

    def log_message(self, *args: Any) -> None:
        pass


def serve() -> Iterator[KubeApi]:
    """A KubeApi talking to a fresh stand-in (for a fixture)."""
    StandIn.objects.clear()
    StandIn.requests.clear()
    StandIn.errors.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    kube = KubeApi(client.ApiClient(configuration), workers=2)
    try:
        yield kube
    finally:
        kube.close()
        server.shutdown()
        thread.join(timeout=5)
