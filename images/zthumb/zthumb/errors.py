"""The server's exceptions: a stable code, an HTTP status and the offending request field.

A leaf module (it imports nothing of the server), so every layer can raise them; how they become
HTTP answers is ``error_responses``'s business.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException


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


class ModelConfigError(ZThumbError):
    """A backend's model files are missing or unusable (a deployment problem)."""

    status = 503
    code = "backend_unavailable"


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


class LoginThrottledError(ZThumbError):
    """Too many failed report logins from one client address; ``Retry-After`` says for how long."""

    status = 429
    code = "too_many_logins"


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


class BodyTooLargeError(HTTPException):
    """A request body over its bound, raised from the body limit's ``receive``.

    An ``HTTPException`` (not a ``ZThumbError``) because FastAPI's body parsing lets that one
    through and turns any other exception it meets while reading into a 400.
    """

    code = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")
