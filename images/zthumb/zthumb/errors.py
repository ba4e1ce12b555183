"""Exceptions of the server and the one place that turns them into HTTP answers.

Every error body has the same shape::

    {"error": "<stable_code>", "message": "<for humans>", "field": "<request field or null>"}

except on OpenAI's paths (``/v1/…``), where clients expect OpenAI's shape::

    {"error": {"message": "<for humans>", "type": "<OpenAI error type>", "param": "<field or null>",
               "code": "<stable_code>"}}

A field inside a list is named like ``loras[1].path``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from zthumb_contract.steps import REPORTS_URL_PREFIX

log = logging.getLogger("zthumb.errors")


class ZThumbError(Exception):
    """Base class: a stable ``code``, an HTTP ``status`` and optionally the offending ``field``."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequestError(ZThumbError):
    status = 422
    code = "invalid_request"


class BadRequestError(ZThumbError):
    status = 400
    code = "bad_request"


class AdapterNotFoundError(ZThumbError):
    status = 404
    code = "lora_not_found"


class AdapterRefusedError(ZThumbError):
    """A path outside the LoRA root, an escaping symlink or a non-safetensors file."""

    status = 400
    code = "lora_path_refused"


class AdapterLoadError(ZThumbError):
    """The file is inside the root and is safetensors, but it is not a loadable LoRA."""

    status = 422
    code = "lora_invalid"


class UnauthorizedError(ZThumbError):
    status = 401
    code = "unauthorized"


class LoginRequiredError(UnauthorizedError):
    """A report page without a valid key: the page answers with the login form."""

    code = "login_required"


class ReportNotFoundError(ZThumbError):
    status = 404
    code = "report_not_found"


class NotReadyError(ZThumbError):
    status = 503
    code = "not_ready"


class QueueFullError(ZThumbError):
    status = 429
    code = "queue_full"


class GenerationTimeoutError(ZThumbError):
    status = 504
    code = "timeout"


class GenerationCancelledError(ZThumbError):
    """The client went away or the deadline passed; the generation was stopped or never ran."""

    status = 499
    code = "cancelled"


OPENAI_PREFIX = "/v1/"
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


def _respond(
    request: Request,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> Response:
    """``body`` is ours; on ``/v1/`` paths it is rewritten into OpenAI's error shape, and on the
    report pages (``/reports/``) it is a page a browser shows (with the login form on a 401)."""
    if request.url.path.startswith(REPORTS_PREFIX):
        from zthumb.reports import error_page  # the pages' own rendering (it imports this module)

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


def _field_from_loc(loc: tuple[Any, ...] | list[Any]) -> str | None:
    field = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
    return field or None


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to HTTP error bodies."""

    @app.exception_handler(ZThumbError)
    async def _zthumb_error(request: Request, exc: ZThumbError) -> Response:
        if exc.status >= 500 and exc.status not in (503, 504):
            log.error("request failed: %s", exc.message)
        return _respond(request, exc.status, error_body(exc.code, exc.message, exc.field), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        field = _field_from_loc(first.get("loc", ()))
        if first.get("type") == "extra_forbidden":
            message = f"unknown field {field!r}"
        elif first.get("type") in ("json_invalid", "model_attributes_type") or field is None:
            message = f"request body is not a valid JSON object: {first.get('msg', 'invalid')}"
        else:
            message = f"{field}: {first.get('msg', 'invalid value')}"
        body = error_body("invalid_request", message, field)
        body["details"] = [
            {"field": _field_from_loc(e.get("loc", ())), "message": e.get("msg"), "type": e.get("type")}
            for e in errors
        ]
        return _respond(request, 422, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        return _respond(
            request, exc.status_code, error_body(code, str(exc.detail)), getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error: %s", type(exc).__name__)
        return _respond(request, 500, error_body("internal_error", "internal error; see the server log"))
