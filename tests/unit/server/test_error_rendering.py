"""How one exception becomes one HTTP answer (``error_responses``), function by function: the
status, code, message, field and headers of each, OpenAI's error type per status, the field name
of a validation error's location, what is logged, and the report pages' HTML. The whole app's
answers (the catch-all 500, Starlette's 404 and 405) are ``test_error_responses.py``'s."""

from __future__ import annotations

import json
import logging

import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from zthumb.error_responses import (
    _field_of,
    error_body,
    http_error_response,
    openai_error_type,
    respond,
    zthumb_error_response,
)
from zthumb.errors import (
    AdapterNotFoundError,
    BodyTooLargeError,
    InvalidRequestError,
    ModelConfigError,
    ZThumbError,
)


def _request(path: str, method: str = "POST") -> Request:
    return Request({"type": "http", "method": method, "path": path, "headers": [], "query_string": b""})


def _json(response) -> dict:
    return json.loads(response.body)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "invalid_request_error"),
        (413, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (499, "invalid_request_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_openai_error_type_per_status(status: int, kind: str) -> None:
    assert openai_error_type(status) == kind


@pytest.mark.parametrize(
    ("loc", "field"),
    [
        (("body", "loras", 1, "path"), "loras[1].path"),
        (("body", "prompt"), "prompt"),
        (("query", "limit"), "limit"),
        (("path", "name"), "name"),
        (("header", "x-api-key"), "x-api-key"),
        (("body",), None),
        ((), None),
        (["body", "size", 0], "size[0]"),
        (("loras", 0, "path"), "loras[0].path"),  # no request part first: nothing dropped
    ],
)
def test_a_validation_errors_location_is_the_request_field(loc, field) -> None:
    assert _field_of({"loc": loc, "type": "string_type"}) == field


def test_a_body_that_is_not_json_has_no_field() -> None:
    # pydantic puts the offset of the bad character where a field would be.
    assert _field_of({"loc": ("body", 1), "type": "json_invalid"}) is None
    assert _field_of({"type": "missing"}) is None


def test_an_error_carries_its_class_code_unless_given_one() -> None:
    error = AdapterNotFoundError("no such adapter", field="loras[0].path")
    assert (error.status, error.code, error.message, error.field, error.headers) == (
        404, "lora_not_found", "no such adapter", "loras[0].path", {},
    )  # fmt: skip
    assert str(error) == "no such adapter"
    renamed = InvalidRequestError("bad", code="invalid_prompt", headers={"retry-after": "1"})
    assert (renamed.code, renamed.headers, type(renamed).code) == (
        "invalid_prompt",
        {"retry-after": "1"},
        "invalid_request",
    )
    assert ZThumbError("x").code == "internal_error" and ZThumbError("x").status == 500


def test_our_error_is_our_shape_with_its_status_and_headers() -> None:
    error = ModelConfigError("loading", code="backend_loading", headers={"retry-after": "5"})
    response = zthumb_error_response(_request("/generate"), error)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert _json(response) == {"error": "backend_loading", "message": "loading", "field": None}
    field = zthumb_error_response(_request("/generate"), InvalidRequestError("too long", field="prompt"))
    assert _json(field) == {"error": "invalid_request", "message": "too long", "field": "prompt"}


def test_our_error_under_v1_is_openais_shape() -> None:
    response = zthumb_error_response(_request("/v1/images/generations"), InvalidRequestError("no", field="n"))
    assert response.status_code == 422
    assert _json(response) == {
        "error": {"message": "no", "type": "invalid_request_error", "param": "n", "code": "invalid_request"}
    }


@pytest.mark.parametrize(
    ("status", "logged"), [(500, True), (502, True), (503, False), (504, False), (422, False), (499, False)]
)
def test_only_a_server_fault_is_logged_as_an_error(caplog, status: int, logged: bool) -> None:
    class Failure(ZThumbError):  # noqa: N818 - a stand-in with the status under test
        pass

    Failure.status = status
    with caplog.at_level(logging.ERROR, logger="zthumb.errors"):
        zthumb_error_response(_request("/generate"), Failure("the engine stopped"))
    messages = [r.getMessage() for r in caplog.records if r.name == "zthumb.errors"]
    assert messages == (["request failed: the engine stopped"] if logged else [])


def test_starlettes_errors_get_a_stable_code() -> None:
    not_found = http_error_response(_request("/nope", "GET"), HTTPException(404, "Not Found"))
    assert _json(not_found) == {"error": "not_found", "message": "Not Found", "field": None}
    teapot = http_error_response(
        _request("/tea", "GET"), HTTPException(418, "short and stout", {"x-pot": "1"})
    )
    assert teapot.status_code == 418 and teapot.headers["x-pot"] == "1"
    assert _json(teapot)["error"] == "http_418"
    too_large = http_error_response(_request("/generate"), BodyTooLargeError(1024))
    assert too_large.status_code == 413
    assert _json(too_large) == {
        "error": "body_too_large", "message": "request body larger than 1024 bytes", "field": None,
    }  # fmt: skip


def test_a_report_page_error_is_html_with_the_status_and_headers() -> None:
    body = error_body("lora_not_found", "no report for this run")
    page = respond(_request("/reports/style/", "GET"), 404, body, {"x-request-id": "r1"})
    assert page.status_code == 404 and page.headers["x-request-id"] == "r1"
    assert page.media_type == "text/html"
    assert b"no report for this run" in page.body
    login = respond(_request("/reports/style/", "GET"), 401, error_body("unauthorized", "log in"))
    assert login.status_code == 401 and b"<form" in login.body
    # Not a report page: JSON.
    assert _json(respond(_request("/reportsx", "GET"), 404, body)) == body
