"""One request straight through an ASGI app, with a ``receive`` that counts what the app read.

The key check and the body bound must act before the app reads the body; a test client would
send the whole body up front, so these tests speak ASGI themselves. The apps are built without
their lifespan (no model loads): what is tested answers before any route needs the engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

KEY = "s3cret-key"


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    receive_calls: int = 0
    bytes_read: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    app: Any,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    chunks: Iterable[bytes] = (),
    client: tuple[str, int] = ("203.0.113.7", 50000),
) -> Answer:
    """Send ``chunks`` as the body, one per ``receive`` the app makes (lazily: a chunk the app
    never asks for is never produced); ``headers`` as given (no Content-Length is added)."""
    answer = Answer()
    body: Iterator[bytes] = iter(chunks)
    pending = next(body, None)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()],
        "client": client,
        "server": ("testserver", 80),
    }

    async def receive() -> dict[str, Any]:
        nonlocal pending
        answer.receive_calls += 1
        if pending is None:
            return {"type": "http.disconnect"}
        chunk, pending = pending, next(body, None)
        answer.bytes_read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": pending is not None}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return answer


def endless(chunk: bytes, most: int) -> Iterator[bytes]:
    """Up to ``most`` copies of ``chunk``, made only as they are asked for."""
    for _ in range(most):
        yield chunk
