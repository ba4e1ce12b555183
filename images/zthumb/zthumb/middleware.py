"""The ASGI middlewares around the routes, outermost first: the access log, the API key, the body
bound. Pure ASGI (no ``BaseHTTPMiddleware``): the key check and the body bound act on the scope
and on ``receive`` before any route reads or parses the body."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zthumb.auth import refusal
from zthumb.error_responses import REQUEST_ID_HEADER, http_error_response, zthumb_error_response
from zthumb.errors import BodyTooLargeError
from zthumb.sessions import SessionCookies

access_log = logging.getLogger("zthumb.access")


class AccessLogMiddleware:
    """Request id + one access-log line per request (method, path, status, seconds; no headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        for name, value in scope.get("headers", []):
            if name == REQUEST_ID_HEADER.encode() and value and len(value) <= 64:
                request_id = value.decode("latin-1")
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (REQUEST_ID_HEADER.encode(), request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["path"] not in ("/healthz", "/readyz", "/metrics"):
                access_log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "seconds": round(time.perf_counter() - started, 4),
                    },
                )


class ApiKeyMiddleware:
    """With a key set, a request to any path but ``open_paths`` without the key gets its 401 here,
    before a route runs: its body is never read (``auth.refusal`` says what counts as the key)."""

    def __init__(
        self, app: ASGIApp, *, key: str | None, sessions: SessionCookies | None, open_paths: frozenset[str]
    ) -> None:
        self.app = app
        self.key = key
        self.sessions = sessions
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only HTTP: the app has no WebSocket route (a test enumerates the routes).
        if scope["type"] != "http" or self.key is None or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        assert self.sessions is not None  # issued for every key (build_app)
        request = Request(scope)
        error = refusal(request, self.key, self.sessions)
        if error is None:
            await self.app(scope, receive, send)
            return
        await zthumb_error_response(request, error)(scope, receive, send)


class BodyLimitMiddleware:
    """Bounds every request body to ``max_bytes``, or a path's own bound in ``per_path``.

    A declared ``Content-Length`` over the bound is a 413 before the app runs; a body without one
    (chunked) is counted as it streams, and the read that crosses the bound raises
    ``BodyTooLargeError``: at most the bound plus one chunk is ever held. Both 413s have the
    server's error shapes. (FastAPI's own ``max_body_size`` answers a declared length with a
    plain-text 413 from outside the app, past these shapes and the key check.)
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, per_path: Mapping[str, int]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = dict(per_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            await http_error_response(Request(scope), BodyTooLargeError(limit))(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        await self.app(scope, bounded_receive, send)
