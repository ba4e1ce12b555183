"""The API key (zthumb.auth, middleware.ApiKeyMiddleware): checked before any route and before the
body is read, on every route but the few that must answer without it."""

from __future__ import annotations

import re

import pytest
from asgi_helpers import KEY, call, endless
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Route

# What may answer without the key, by default: the probes, the report login form and its
# stylesheet, and /metrics for Prometheus.
OPEN_BY_DEFAULT = {"/healthz", "/readyz", "/metrics", "/reports/login", "/reports/static/report.css"}
DOCS = {"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"}


def app_with_key(tmp_path, **settings):
    from zthumb.app import build_app
    from zthumb.settings import Settings

    return build_app(Settings(api_key=KEY, reports_dir=tmp_path, lora_root=tmp_path, **settings))


def http_routes(app) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route the app serves, included routers unfolded."""
    routes = []
    for context in iter_route_contexts(app.routes):
        # The key check covers HTTP; a WebSocket route or a mounted app would need its own.
        route = context.original_route
        assert isinstance(route, APIRoute | Route) and context.methods, f"{route!r} is not an HTTP route"
        routes.append((context.path, context.methods))
    return routes


def concrete(path: str) -> str:
    """A route's path with a value for each parameter (``{run}``, ``{path:path}``)."""
    return re.sub(r"\{[^}]+\}", "x", path)


def answered_without_key(app) -> set[str]:
    """Every method of every route, called without the key: the paths not refused with a 401.
    The app has no lifespan here, so an open route that needs the engine answers 500: still an
    answer without the key."""
    client = TestClient(app, raise_server_exceptions=False)
    answered = set()
    for path, methods in http_routes(app):
        for method in sorted(methods):
            if client.request(method, concrete(path), json={"prompt": "x"}).status_code != 401:
                answered.add(path)
    return answered


def test_with_a_key_every_route_but_the_open_ones_refuses_a_request_without_it(tmp_path):
    app = app_with_key(tmp_path)
    paths = {path for path, _ in http_routes(app)}
    # The lists here name real routes.
    assert paths >= OPEN_BY_DEFAULT | DOCS | {
        "/models",
        "/generate",
        "/v1/images/generations",
        "/reports/{run}/",
    }
    assert answered_without_key(app) <= OPEN_BY_DEFAULT


def test_metrics_and_docs_need_the_key_as_the_settings_say(tmp_path):
    assert answered_without_key(app_with_key(tmp_path, public_metrics=False, public_docs=True)) <= (
        OPEN_BY_DEFAULT - {"/metrics"} | DOCS
    )
    public_docs = TestClient(app_with_key(tmp_path, public_docs=True))
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert public_docs.get(path).status_code == 200, path

    client = TestClient(app_with_key(tmp_path, public_metrics=False))
    assert client.get("/metrics").status_code == 401
    assert client.get("/docs").status_code == 401
    assert client.get("/openapi.json").status_code == 401
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert client.get("/metrics", headers=bearer).text.startswith("# HELP")
    assert "/generate" in client.get("/openapi.json", headers=bearer).json()["paths"]
    assert TestClient(app_with_key(tmp_path)).get("/metrics").status_code == 200  # the default


def test_without_a_key_everything_answers(tmp_path):
    from zthumb.app import build_app
    from zthumb.settings import Settings

    client = TestClient(build_app(Settings(public_metrics=False, reports_dir=tmp_path)))
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/reports/").status_code == 200


@pytest.mark.parametrize("path", ["/generate", "/v1/images/generations", "/reports/login-typo"])
def test_a_request_without_the_key_is_refused_before_its_body_is_read(tmp_path, path):
    app = app_with_key(tmp_path)
    # A client that announces a huge body and would send it for ever: nothing of it is read.
    answer = call(
        app, "POST", path, headers={"Content-Type": "application/json", "Content-Length": str(2**40)},
        chunks=endless(b"[" * 65536, 10_000),
    )  # fmt: skip
    assert answer.status == 401, answer.body
    assert answer.receive_calls == 0 and answer.bytes_read == 0
    # Chunked (no length announced): the same.
    answer = call(app, "POST", path, chunks=endless(b"[" * 65536, 10_000))
    assert (answer.status, answer.receive_calls) == (401, 0)


def test_a_wrong_key_or_another_scheme_is_refused_before_the_body_too(tmp_path):
    app = app_with_key(tmp_path)
    for header in (f"Bearer {KEY}x", f"Basic {KEY}", "Bearer"):
        answer = call(app, "POST", "/generate", headers={"Authorization": header}, chunks=[b"{}"])
        assert (answer.status, answer.receive_calls) == (401, 0), header
        assert answer.headers["www-authenticate"] == "Bearer"


def test_the_refusal_has_each_api_s_error_shape(tmp_path):
    client = TestClient(app_with_key(tmp_path))
    ours = client.post("/generate", json={"prompt": "x"})
    assert ours.status_code == 401
    assert ours.json() == {"error": "unauthorized", "message": "missing bearer token", "field": None}
    openai = client.post("/v1/images/generations", json={"prompt": "x"}).json()
    assert openai["error"]["type"] == "authentication_error" and openai["error"]["code"] == "unauthorized"
    page = client.get("/reports/some-run/")
    assert page.status_code == 401 and 'action="/reports/login"' in page.text


def test_the_key_lets_the_request_through_to_its_route(tmp_path):
    app = app_with_key(tmp_path)
    app.state.serving = None  # the body is refused before the route would use it
    answer = call(app, "POST", "/generate", headers={"Authorization": f"Bearer {KEY}"}, chunks=[b"{nope"])
    assert answer.status == 422 and answer.receive_calls >= 1  # the route read and parsed it
    assert answer.json()["error"] == "invalid_request"
