"""The API key (``ZTHUMB_API_KEY``): one check for the API's bearer header and the report pages."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from zthumb.errors import UnauthorizedError

CHALLENGE = {"WWW-Authenticate": "Bearer"}
# Declares the scheme in the OpenAPI document; the check itself is check_bearer's.
_openapi_bearer = HTTPBearer(auto_error=False)


def configured_key(request: Request) -> str | None:
    """The server's API key, or None when it serves without one."""
    key = request.app.state.settings.api_key
    return None if key is None else str(key.get_secret_value())


def matches(given: str, key: str) -> bool:
    """Constant-time comparison, so a wrong key's timing says nothing about the right one."""
    return secrets.compare_digest(given.encode(), key.encode())


def bearer_token(request: Request) -> str | None:
    """The Authorization header's bearer token; None without the header; a 401 for another scheme."""
    header = request.headers.get("authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise UnauthorizedError("missing bearer token", headers=CHALLENGE)
    return token.strip()


def check_bearer(request: Request, key: str) -> bool:
    """True for a valid bearer token, False without one; a wrong one is a 401."""
    token = bearer_token(request)
    if token is None:
        return False
    if not matches(token, key):
        raise UnauthorizedError("invalid bearer token", headers=CHALLENGE)
    return True


async def require_api_key(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_openapi_bearer)]
) -> None:
    """The API's dependency: a valid bearer token whenever a key is configured."""
    key = configured_key(request)
    if key is not None and not check_bearer(request, key):
        raise UnauthorizedError("missing bearer token", headers=CHALLENGE)
