"""Apps with other settings: API key, readiness, env-default adapter, queue, disconnect, timeout."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
from server_helpers import decode, sha256_of, wait_loaded, wait_ready

BODY = {"prompt": "a photo of z", "seed": 3}


def test_api_key_protects_generate_and_models(make_client, caplog):
    client = make_client(api_key="s3cret-token")
    wait_ready(client)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    missing = client.post("/generate", json=BODY)
    assert missing.status_code == 401
    assert missing.json()["error"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert client.get("/models").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/generate", json=BODY, headers=wrong).status_code == 401
    good = {"Authorization": "Bearer s3cret-token"}
    with caplog.at_level(logging.DEBUG):
        assert client.post("/generate", json=BODY, headers=good).status_code == 200
    assert client.get("/models", headers=good).status_code == 200
    assert "s3cret-token" not in caplog.text
    assert "a photo of z" not in caplog.text  # prompts are logged by length only


def test_readiness_waits_for_the_default_backend(make_client):
    from zthumb.backends import FullBackend
    from zthumb.engine import Engine

    gate = threading.Event()

    class SlowBackend(FullBackend):
        def __init__(self, *args, **kwargs):
            assert gate.wait(60)
            super().__init__(*args, **kwargs)

    client = make_client(engine_factory=lambda s: Engine(s, backends={"full": SlowBackend}))
    assert client.get("/healthz").status_code == 200
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["status"] == "loading"
    refused = client.post("/generate", json=BODY)
    assert refused.status_code == 503
    assert refused.json()["error"] == "not_ready"
    models = client.get("/models").json()
    assert models["backends"][0]["loaded"] is False
    gate.set()
    assert wait_ready(client)["ready"] is True
    assert client.post("/generate", json=BODY).status_code == 200


@pytest.mark.parametrize(
    ("lora_path", "code_in_error"),
    [("missing_adapter", "no adapter"), ("evil.bin", "pickle"), ("not_a_lora.safetensors", "LoRA")],
)
def test_broken_default_adapter_keeps_not_ready(make_client, caplog, lora_path, code_in_error):
    with caplog.at_level(logging.ERROR):
        client = make_client(lora_path=lora_path, lora_scale=0.8)
        wait_loaded(client)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "failed"
    assert code_in_error in ready.json()["error"]
    assert "FAILED TO LOAD" in caplog.text
    response = client.post("/generate", json=BODY)
    assert response.status_code == 503
    models = client.get("/models").json()
    assert models["lora_loaded"] is False
    assert models["lora_error"]


def test_broken_model_path_keeps_not_ready(make_client, tmp_path):
    client = make_client(model_path=tmp_path / "nothing-here")
    wait_loaded(client)
    ready = client.get("/readyz").json()
    assert ready["status"] == "failed"
    assert "ZTHUMB_MODEL_PATH" in ready["error"]


def test_env_default_adapter(make_client, lora_root, monkeypatch):
    # Z_LORA_* beats ZTHUMB_LORA_*, as the operator's patch relies on.
    monkeypatch.setenv("ZTHUMB_LORA_PATH", "b.safetensors")
    monkeypatch.setenv("Z_LORA_PATH", "style_a")
    monkeypatch.setenv("Z_LORA_SCALE", "0.8")
    from zthumb.settings import Settings

    env_settings = Settings()
    assert (env_settings.lora_path, env_settings.lora_scale) == ("style_a", 0.8)
    client = make_client(lora_path="style_a", lora_scale=0.8)
    assert wait_ready(client)["lora_loaded"] is True
    models = client.get("/models").json()
    assert models["lora_loaded"] is True
    assert models["lora_path"] == "style_a"
    assert models["lora_scale"] == 0.8
    sha = sha256_of(lora_root / "style_a" / "pytorch_lora_weights.safetensors")
    assert models["lora_sha256"] == sha
    assert any(c["pinned"] and c["sha256"] == sha for c in models["cached_adapters"])

    default = client.post("/generate", json=BODY).json()
    assert default["adapter"] == {
        "path": "style_a",
        "scale": 0.8,
        "sha256": sha,
        "source": "default",
        "rank": 4,
    }
    off = client.post("/generate", json={**BODY, "lora_scale": 0}).json()
    explicit = client.post("/generate", json={**BODY, "lora_path": "style_a", "lora_scale": 0.8}).json()
    assert np.array_equal(decode(default), decode(explicit))
    assert not np.array_equal(decode(default), decode(off))
    # The eval calls: lora_scale 0 and 0.8 on the same seed.
    assert off["adapter"]["scale"] == 0


def _block_worker(client):
    worker = client.app.state.worker
    gate = threading.Event()
    started = threading.Event()

    def blocker(_cancel):
        started.set()
        gate.wait(30)

    worker.enqueue(blocker, "blocker", force=True)
    assert started.wait(30)
    return worker, gate


def _drain(client) -> None:
    """Wait until the worker has reached everything queued so far (it runs jobs one at a time, in
    order): a job that was to be skipped has been skipped, or has run, by then."""
    client.app.state.worker.enqueue(lambda _c: None, "drain", force=True).future.result(30)


def test_queue_full_answers_429(make_client):
    client = make_client(max_queue=1)
    wait_ready(client)
    worker, gate = _block_worker(client)
    try:
        worker.enqueue(lambda _c: None, "filler")
        response = client.post("/generate", json=BODY)
        assert response.status_code == 429
        assert response.json()["error"] == "queue_full"
        assert int(response.headers["retry-after"]) >= 1
        assert "zthumb_queue_rejected_total 1.0" in client.get("/metrics").text
    finally:
        gate.set()
    assert client.post("/generate", json=BODY).status_code == 200


def test_timeout_answers_504_and_the_job_never_runs(make_client):
    client = make_client(request_timeout_s=0.3)
    wait_ready(client)
    engine = client.app.state.engine
    calls = []
    original = engine.execute
    engine.execute = lambda plan, cancel=None: calls.append(plan) or original(plan, cancel)
    _, gate = _block_worker(client)
    try:
        response = client.post("/generate", json=BODY)
        assert response.status_code == 504
        assert response.json()["error"] == "timeout"
    finally:
        gate.set()
    _drain(client)
    assert calls == []


def test_disconnect_while_queued_costs_no_generation(make_client):
    client = make_client()
    wait_ready(client)
    engine = client.app.state.engine
    calls = []
    original = engine.execute
    engine.execute = lambda plan, cancel=None: calls.append(plan) or original(plan, cancel)
    _, gate = _block_worker(client)
    app = client.app
    sent: list[dict] = []

    async def call_and_disconnect():
        body = json.dumps(BODY).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/generate",
            "raw_path": b"/generate",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
            "client": ("test", 1),
            "server": ("test", 80),
            "state": {},
        }
        await app(scope, receive, send)

    try:
        client.portal.call(call_and_disconnect)
    finally:
        gate.set()
    _drain(client)
    assert sent and sent[0]["status"] == 499
    assert calls == []
    assert 'zthumb_cancelled_total{reason="disconnect"} 1.0' in client.get("/metrics").text
    assert client.post("/generate", json=BODY).status_code == 200


@pytest.mark.parametrize("freeze", [True, False])
def test_loaded_objects_are_frozen_for_the_collector_until_shutdown(tiny_model, lora_root, freeze):
    import gc

    from fastapi.testclient import TestClient
    from server_helpers import server_settings
    from zthumb.app import build_app

    gc.unfreeze()  # whatever an earlier test left
    with TestClient(build_app(server_settings(tiny_model, lora_root, gc_freeze=freeze))) as client:
        client.app.state.load_job.future.result(timeout=120)
        unet = client.app.state.engine.backends["full"].pipe.unet
        collected = {id(obj) for obj in gc.get_objects()}  # the permanent generation is not listed
        assert (id(unet) not in collected) is freeze
        assert (gc.get_freeze_count() > 0) is freeze
        assert client.post("/generate", json=BODY).status_code == 200
    assert gc.get_freeze_count() == 0
