"""The API key (``ZTHUMB_API_KEY``): which requests need it, and whether a request carries it.

With a key set, every path needs it but the few in ``open_paths``: the health probes, the report
login form (and its stylesheet), and, as ``ZTHUMB_PUBLIC_METRICS`` / ``ZTHUMB_PUBLIC_DOCS`` say,
``/metrics`` and the API docs. The check (``middleware.ApiKeyMiddleware``) runs before any route,
so before a byte of the body is read, and a route added later needs the key without anyone
remembering to ask for it. Callers send ``Authorization: Bearer <key>``; the report pages also
take the session cookie their login form sets (``sessions``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from fastapi import FastAPI
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection
from zthumb_contract.steps import REPORTS_URL_PREFIX

from zthumb.errors import LoginRequiredError, UnauthorizedError
from zthumb.sessions import SESSION_COOKIE, SessionCookies
from zthumb.settings import Settings

CHALLENGE = {"WWW-Authenticate": "Bearer"}
HEALTH_PATHS = ("/healthz", "/readyz")
METRICS_PATH = "/metrics"
REPORTS_PREFIX = f"{REPORTS_URL_PREFIX}/"
REPORTS_LOGIN_PATH = f"{REPORTS_URL_PREFIX}/login"
# The login form a refused report page shows links this stylesheet.
REPORTS_STYLESHEET_PATH = f"{REPORTS_URL_PREFIX}/static/report.css"

# Declares the bearer scheme in the OpenAPI document (a dependency of the API's routes that only
# reads the header); the check itself is the middleware's.
openapi_bearer = HTTPBearer(auto_error=False)


def configured_key(settings: Settings) -> str | None:
    """The server's API key, or None when it serves without one."""
    return None if settings.api_key is None else str(settings.api_key.get_secret_value())


def docs_paths(app: FastAPI) -> list[str]:
    """The API documentation FastAPI serves: the OpenAPI document, Swagger UI and its OAuth2
    redirect, ReDoc."""
    urls = (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
    return [url for url in urls if url]


def open_paths(settings: Settings, docs: Iterable[str]) -> frozenset[str]:
    """The paths that answer without the key (compared exactly: no prefix opens anything)."""
    paths = {*HEALTH_PATHS, REPORTS_LOGIN_PATH, REPORTS_STYLESHEET_PATH}
    if settings.public_metrics:
        paths.add(METRICS_PATH)
    if settings.public_docs:
        paths.update(docs)
    return frozenset(paths)


def matches(given: str, key: str) -> bool:
    """Constant-time comparison, so a wrong key's timing says nothing about the right one."""
    return secrets.compare_digest(given.encode(), key.encode())


def refusal(connection: HTTPConnection, key: str, sessions: SessionCookies) -> UnauthorizedError | None:
    """None when the request carries the key: a valid bearer token, or on a report page the
    session cookie. A header that is not a valid bearer token is refused, whatever cookie comes
    with it: a wrong key is an answer of its own, not a reason to look further."""
    header = connection.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return UnauthorizedError("missing bearer token", headers=CHALLENGE)
        if matches(token.strip(), key):
            return None
        return UnauthorizedError("invalid bearer token", headers=CHALLENGE)
    if connection.scope["path"].startswith(REPORTS_PREFIX):
        if sessions.valid(connection.cookies.get(SESSION_COOKIE, "")):
            return None
        return LoginRequiredError("this server wants its API key", headers=CHALLENGE)
    return UnauthorizedError("missing bearer token", headers=CHALLENGE)
