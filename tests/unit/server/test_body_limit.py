"""The request body bound (ZTHUMB_MAX_BODY_BYTES, middleware.BodyLimitMiddleware): a 413 without
buffering, for a declared Content-Length and for a chunked body alike."""

from __future__ import annotations

import pytest
from asgi_helpers import KEY, call, endless

LIMIT = 1000
BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def app(tmp_path):
    from zthumb.app import build_app
    from zthumb.settings import Settings

    app = build_app(Settings(api_key=KEY, reports_dir=tmp_path, lora_root=tmp_path, max_body_bytes=LIMIT))
    app.state.serving = None  # a body that gets through is refused before the route would use it
    return app


def test_the_default_bound_is_a_few_mebibytes():
    from zthumb.settings import Settings

    assert Settings().max_body_bytes == 4 * 1024 * 1024


def test_a_declared_length_over_the_bound_is_refused_before_a_byte_is_read(app):
    headers = {**BEARER, "Content-Type": "application/json", "Content-Length": str(LIMIT + 1)}
    answer = call(app, "POST", "/generate", headers=headers, chunks=[b" " * (LIMIT + 1)])
    assert answer.status == 413 and answer.receive_calls == 0
    assert answer.json() == {
        "error": "body_too_large", "message": f"request body larger than {LIMIT} bytes", "field": None,
    }  # fmt: skip
    openai = call(app, "POST", "/v1/images/generations", headers=headers, chunks=[b" " * (LIMIT + 1)])
    assert openai.status == 413 and openai.receive_calls == 0
    assert openai.json()["error"]["code"] == "body_too_large"


def test_a_chunked_body_is_counted_as_it_streams_and_cut_at_the_bound(app):
    chunk = b" " * 100
    answer = call(app, "POST", "/generate", headers=BEARER, chunks=endless(chunk, 10_000))
    assert answer.status == 413, answer.body
    assert answer.json()["error"] == "body_too_large"
    # Read up to the bound plus the chunk that crossed it, never the rest.
    assert answer.bytes_read == LIMIT + len(chunk)


def test_a_body_within_the_bound_reaches_the_route(app):
    body = b'{"prompt": "x", "nope": ' + b" " * 800 + b"1}"
    headers = {**BEARER, "Content-Type": "application/json", "Content-Length": str(len(body))}
    answer = call(app, "POST", "/generate", headers=headers, chunks=[body])
    assert answer.status == 422 and answer.json()["message"] == "unknown field 'nope'"


def test_the_login_form_has_its_own_small_bound(app):
    from zthumb.reports import LOGIN_BODY_BYTES

    form = b"api_key=" + b"k" * LOGIN_BODY_BYTES
    declared = call(app, "POST", "/reports/login", headers={"Content-Length": str(len(form))}, chunks=[form])
    assert declared.status == 413 and declared.receive_calls == 0
    assert "text/html" in declared.headers["content-type"]  # a page, as everywhere under /reports/
    chunked = call(app, "POST", "/reports/login", chunks=endless(b"k" * 512, 10_000))
    assert chunked.status == 413 and chunked.bytes_read == LOGIN_BODY_BYTES + 512
