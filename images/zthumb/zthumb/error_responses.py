"""The one place that turns exceptions into HTTP answers (the exceptions are ``errors``'s).

Every error body has the same shape::

    {"error": "<stable_code>", "message": "<for humans>", "field": "<request field or null>"}

except on OpenAI's paths (``/v1/…``), where clients expect OpenAI's shape::

    {"error": {"message": "<for humans>", "type": "<OpenAI error type>", "param": "<field or null>",
               "code": "<stable_code>"}}

and on the report pages (``/reports/…``), which a browser shows as a page. A field inside a list
is named like ``loras[1].path``. The ASGI middlewares (``middleware``), which answer before any
route runs, render their refusals with ``zthumb_error_response`` / ``http_error_response`` too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from zthumb_contract.steps import REPORTS_URL_PREFIX

from zthumb.errors import ZThumbError
from zthumb.reports import error_page

log = logging.getLogger("zthumb.errors")

OPENAI_PREFIX = "/v1/"
# The request id every answer carries (set by the access log middleware, ``middleware``).
REQUEST_ID_HEADER = "x-request-id"
REPORTS_PREFIX = f"{REPORTS_URL_PREFIX}/"


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": code, "message": message, "field": field}


def openai_error_type(status: int) -> str:
    """OpenAI's ``error.type`` for an HTTP status (what its clients and SDKs look at)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def respond(
    request: Request,
    status: int,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> Response:
    """``body`` is ours; on ``/v1/`` paths it is rewritten into OpenAI's error shape, and on the
    report pages (``/reports/``) it is a page a browser shows (with the login form on a 401)."""
    if request.url.path.startswith(REPORTS_PREFIX):
        return error_page(request, status, body, headers)
    if request.url.path.startswith(OPENAI_PREFIX):
        body = {
            "error": {
                "message": body["message"],
                "type": openai_error_type(status),
                "param": body["field"],
                "code": body["error"],
            }
        }
    return JSONResponse(body, status_code=status, headers=headers)


# Where FastAPI found the invalid value: the first item of a validation error's location.
REQUEST_PARTS = ("body", "query", "path", "header", "cookie")


def _field_of(error: Mapping[str, Any]) -> str | None:
    """The request field of a validation error: ``("body", "loras", 1, "path")`` ->
    ``loras[1].path``. The request part is dropped, and only as the first item (a body field may be
    called ``path``); a body that is not JSON has no field (its location is a character offset)."""
    if error.get("type") == "json_invalid":
        return None
    loc = error.get("loc", ())
    parts = list(loc[1:] if loc and loc[0] in REQUEST_PARTS else loc)
    field = ""
    for part in parts:
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
    return field or None


def zthumb_error_response(request: Request, exc: ZThumbError) -> Response:
    if exc.status >= 500 and exc.status not in (503, 504):
        log.error("request failed: %s", exc.message)
    return respond(request, exc.status, error_body(exc.code, exc.message, exc.field), exc.headers)


HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def http_error_response(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's and FastAPI's own HTTP errors (404, 405, …) and ``BodyTooLargeError``."""
    code = getattr(exc, "code", None) or HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return respond(request, exc.status_code, error_body(code, str(exc.detail)), exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to HTTP error bodies."""

    @app.exception_handler(ZThumbError)
    async def _zthumb_error(request: Request, exc: ZThumbError) -> Response:
        return zthumb_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        field = _field_of(first)
        if first.get("type") == "extra_forbidden":
            message = f"unknown field {field!r}"
        elif first.get("type") in ("json_invalid", "model_attributes_type") or field is None:
            message = f"request body is not a valid JSON object: {first.get('msg', 'invalid')}"
        else:
            message = f"{field}: {first.get('msg', 'invalid value')}"
        body = error_body("invalid_request", message, field)
        body["details"] = [
            {"field": _field_of(e), "message": e.get("msg"), "type": e.get("type")} for e in errors
        ]
        return respond(request, 422, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return http_error_response(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Starlette answers this one from its outermost middleware, outside the access log that
        # stamps the request id on every other answer: stamp it here, and name it in the log line,
        # so the details "in the server log" can be found for the request that got this 500.
        request_id = request.scope.get("state", {}).get("request_id")
        log.exception(
            "unexpected error: %s",
            type(exc).__name__,
            extra={"request_id": request_id, "path": request.url.path},
        )
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        body = error_body("internal_error", "internal error; see the server log")
        return respond(request, 500, body, headers)
