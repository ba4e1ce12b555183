"""The error shapes (error_responses): the catch-all 500, Starlette's own 404/405, and that a
server error reads like a client error on both APIs (ours and OpenAI's under /v1/). No model: a
fake backend; a route fails by a fake engine method that raises."""

from __future__ import annotations

import logging

import pytest
from fake_backend import SECRET, fake_client

OURS = {"error", "message", "field"}
OPENAI = {"message", "type", "param", "code"}


@pytest.fixture
def client(tmp_path):
    with fake_client(tmp_path) as started:
        assert started.app.state.engine.loading_done.wait(30)
        yield started


def _break_models(client) -> None:
    def models():
        raise RuntimeError(SECRET)

    client.app.state.engine.models = models


def test_an_unexpected_exception_is_a_500_in_our_shape_with_nothing_internal(client, caplog):
    _break_models(client)
    with caplog.at_level(logging.ERROR, logger="zthumb.errors"):
        answer = client.get("/models", headers={"X-Request-ID": "trace-500"})
    assert answer.status_code == 500
    assert answer.json() == {
        "error": "internal_error", "message": "internal error; see the server log", "field": None,
    }  # fmt: skip
    assert SECRET not in answer.text and "Traceback" not in answer.text and "RuntimeError" not in answer.text
    (record,) = [r for r in caplog.records if r.name == "zthumb.errors"]
    assert record.exc_info is not None and SECRET in str(record.exc_info[1])  # the details: in the log


def test_a_500_carries_the_request_id_its_logged_traceback_names(client, caplog):
    """Every answer carries X-Request-ID; the 500 must too, and its log line must name it, or the
    traceback "in the server log" cannot be found for the request that got the 500."""
    _break_models(client)
    with caplog.at_level(logging.ERROR, logger="zthumb.errors"):
        answer = client.get("/models", headers={"X-Request-ID": "trace-500"})
    assert answer.status_code == 500
    assert answer.headers.get("x-request-id") == "trace-500"
    (record,) = [r for r in caplog.records if r.name == "zthumb.errors"]
    assert getattr(record, "request_id", None) == "trace-500"
    minted = client.get("/models")  # without the client's id: the one the server made up
    assert minted.status_code == 500 and len(minted.headers["x-request-id"]) == 16


def test_a_failing_generation_is_a_500_in_openai_shape_under_v1(client):
    answer = client.post("/v1/images/generations", json={"prompt": "BOOM", "size": "16x16"})
    assert answer.status_code == 500
    assert answer.json() == {
        "error": {
            "message": "internal error; see the server log",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert SECRET not in answer.text


@pytest.mark.parametrize("path", ["/generate", "/v1/images/generations"])
def test_a_wrong_method_is_a_405_naming_the_allowed_one(client, path):
    answer = client.get(path)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    body = answer.json()
    if path.startswith("/v1/"):
        assert body == {
            "error": {
                "message": "Method Not Allowed",
                "type": "invalid_request_error",
                "param": None,
                "code": "method_not_allowed",
            }
        }
    else:
        assert body == {"error": "method_not_allowed", "message": "Method Not Allowed", "field": None}


def test_an_unknown_path_is_a_404_in_the_shape_of_its_api(client):
    assert client.get("/nope").json() == {"error": "not_found", "message": "Not Found", "field": None}
    openai = client.post("/v1/nope", json={}).json()
    assert openai == {
        "error": {"message": "Not Found", "type": "invalid_request_error", "param": None, "code": "not_found"}
    }


@pytest.mark.parametrize(("path", "prefix_shape"), [("/generate", OURS), ("/v1/images/generations", OPENAI)])
def test_server_and_client_errors_have_one_shape_per_api(client, path, prefix_shape):
    """A client error (422), a refusal before the queue (400) and a server error (500) of one API
    carry the same keys: a client parses every error of an API alike."""
    client_error = client.post(path, json={"prompt": "x", "colour": "red"})
    refused = client.post(path, json={"prompt": "x", "loras": [{"path": "../x"}]})
    server_error = client.post(path, json={"prompt": "BOOM"})
    assert [client_error.status_code, refused.status_code, server_error.status_code] == [422, 400, 500]
    for answer in (client_error, refused, server_error):
        body = answer.json()
        error = body["error"] if prefix_shape is OPENAI else body
        assert prefix_shape <= set(error), (path, body)
        assert set(error) - prefix_shape <= {"details"}, (path, body)  # a 422 may list every problem


@pytest.mark.parametrize(
    ("path", "field_of"),
    [("/generate", lambda b: b["field"]), ("/v1/images/generations", lambda b: b["error"]["param"])],
)
def test_an_invalid_adapter_path_names_its_field_in_the_list(client, path, field_of):
    """A body field called ``path`` is a field, not the request's path: ``loras[1].path``."""
    answer = client.post(path, json={"prompt": "x", "loras": [{"path": "a.safetensors"}, {"path": ""}]})
    assert answer.status_code == 422
    assert field_of(answer.json()) == "loras[1].path"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"prompt": "x", "colour": "red"}, "colour", "unknown field 'colour'"),
        ({"prompt": 5}, "prompt", "prompt: Input should be a valid string"),
        ({"seed": 1}, "prompt", "prompt: Field required"),
        (b"{not json", None, "request body is not a valid JSON object: JSON decode error"),
        ([1, 2], None, "request body is not a valid JSON object: Input should be a valid dictionary"),
    ],
    ids=["unknown-field", "wrong-type", "missing", "not-json", "not-an-object"],
)
def test_a_validation_error_says_what_is_wrong_with_which_field(client, body, field, message):
    if isinstance(body, bytes):
        answer = client.post("/generate", content=body, headers={"content-type": "application/json"})
    else:
        answer = client.post("/generate", json=body)
    assert answer.status_code == 422
    error = answer.json()
    assert (error["error"], error["field"]) == ("invalid_request", field)
    assert error["message"].startswith(message), error["message"]
    first = error["details"][0]
    assert first["field"] == field and first["type"] and first["message"]
