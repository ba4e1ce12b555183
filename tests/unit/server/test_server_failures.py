"""Failures on the way through serving → worker/batching → engine → backend: a generation that
raises (alone and inside a batch), backends still loading or failed, a prompt compel refuses.
Fake backends where the model is not what is tested; the tiny model for compel's refusal."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from fake_backend import BOOM, SECRET, FakeBackend, fake_backend_class, fake_client
from server_helpers import wait_ready

INTERNAL = {"error": "internal_error", "message": "internal error; see the server log", "field": None}


def _poll(condition, timeout: float = 10.0) -> bool:
    tick = threading.Event()  # never set: its wait is the poll interval
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        tick.wait(0.01)
    return condition()


def _metric(client, name: str, **labels: str) -> float:
    return client.app.state.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_generation_that_raises_is_a_500_and_the_worker_serves_the_next(tmp_path):
    with fake_client(tmp_path) as client:
        wait_ready(client)
        failed = client.post("/generate", json={"prompt": f"a {BOOM} b", "seed": 1})
        assert failed.status_code == 500 and failed.json() == INTERNAL
        assert SECRET not in failed.text
        after = client.post("/generate", json={"prompt": "fine", "seed": 2})
        assert after.status_code == 200, after.text
        assert after.json()["seed"] == 2
        assert _metric(client, "zthumb_requests_total", backend="full", status="500") == 1
        assert _metric(client, "zthumb_requests_total", backend="full", status="200") == 1
        assert _metric(client, "zthumb_queue_depth") == 0


def test_a_failing_batch_member_gets_its_500_and_its_batch_mates_their_images(tmp_path, monkeypatch):
    """With ZTHUMB_MAX_BATCH > 1, three requests queued behind a busy device run as one batch. The
    shared call fails because of one of them; by design (batching.run_batch) each request then runs
    alone: the failing one gets a 500, the others the images they get alone, and the app goes on."""
    from zthumb import batching

    shared_calls: list[list[str]] = []

    def shared_call(backend, items, _cancels):
        shared_calls.append([params.prompt for params in items])
        if any(BOOM in params.prompt for params in items):
            raise RuntimeError(SECRET)  # the whole call fails, as a device error would
        return [backend.generate(params) for params in items]

    monkeypatch.setattr(batching, "generate_batch", shared_call)
    with fake_client(tmp_path, max_batch=4, batch_wait_ms=0) as client:
        wait_ready(client)
        worker = client.app.state.worker
        gate, busy = threading.Event(), threading.Event()
        worker.enqueue(lambda _c: busy.set() or gate.wait(30), "blocker", force=True)
        assert busy.wait(10)
        bodies = [{"prompt": "first", "seed": 1}, {"prompt": BOOM, "seed": 2}, {"prompt": "third", "seed": 3}]
        try:
            with ThreadPoolExecutor(len(bodies)) as pool:
                futures = [pool.submit(client.post, "/generate", json=body) for body in bodies]
                assert _poll(lambda: worker.waiting == len(bodies))
                gate.set()
                answers = [future.result(30) for future in futures]
        finally:
            gate.set()
        assert [answer.status_code for answer in answers] == [200, 500, 200]
        # They shared one call, in the order their threads reached the queue (not fixed).
        assert len(shared_calls) == 1 and sorted(shared_calls[0]) == sorted(["first", BOOM, "third"])
        assert answers[1].json() == INTERNAL and SECRET not in answers[1].text
        assert [answers[0].json()["seed"], answers[2].json()["seed"]] == [1, 3]
        assert sorted(client.app.state.engine.backends["full"].generated) == ["first", "third"]
        assert _metric(client, "zthumb_batch_size_sum") == 3
        assert client.post("/generate", json={"prompt": "later", "seed": 4}).status_code == 200


def test_not_ready_is_a_503_with_retry_after_in_both_shapes(tmp_path):
    gate = threading.Event()
    slow = fake_backend_class("full", load_gate=gate)
    try:
        with fake_client(tmp_path, backends={"full": slow}) as client:
            ours = client.post("/generate", json={"prompt": "x"})
            assert ours.status_code == 503 and ours.json()["error"] == "not_ready"
            assert ours.headers["retry-after"] == "10"
            openai = client.post("/v1/images/generations", json={"prompt": "x"})
            assert openai.status_code == 503 and openai.headers["retry-after"] == "10"
            assert openai.json()["error"]["code"] == "not_ready"
            assert openai.json()["error"]["type"] == "server_error"
            gate.set()
            assert wait_ready(client)["ready"] is True
            assert client.post("/generate", json={"prompt": "x"}).status_code == 200
    finally:
        gate.set()


def test_a_backend_still_loading_is_a_503_backend_loading_with_retry_after(tmp_path):
    """The default backend serves readiness; a second one that still loads refuses its requests
    before they queue."""
    gate = threading.Event()
    backends = {"full": FakeBackend, "turbo": fake_backend_class("turbo", load_gate=gate)}
    try:
        with fake_client(tmp_path, backends=backends) as client:
            assert wait_ready(client)["ready"] is True
            refused = client.post("/generate", json={"prompt": "x", "backend": "turbo"})
            assert refused.status_code == 503
            assert refused.json() == {
                "error": "backend_loading", "message": "backend 'turbo' is still loading", "field": None,
            }  # fmt: skip
            assert refused.headers["retry-after"] == "10"
            assert client.app.state.worker.waiting == 0  # refused before the queue
            gate.set()
            assert _poll(client.app.state.engine.loading_done.is_set)
            assert client.post("/generate", json={"prompt": "x", "backend": "turbo"}).status_code == 200
    finally:
        gate.set()


def test_a_backend_that_failed_to_load_is_a_503_backend_unavailable_without_retry_after(tmp_path):
    """A failed load is not retried (a restart is): no Retry-After. The default backend serves on."""
    broken = fake_backend_class("turbo", load_error=RuntimeError("turbo weights missing"))
    with fake_client(tmp_path, backends={"full": FakeBackend, "turbo": broken}) as client:
        assert wait_ready(client)["ready"] is True
        assert _poll(client.app.state.engine.loading_done.is_set)
        refused = client.post("/generate", json={"prompt": "x", "backend": "turbo"})
        assert refused.status_code == 503
        body = refused.json()
        assert body["error"] == "backend_unavailable" and "turbo" in body["message"]
        assert "retry-after" not in refused.headers
        openai = client.post("/v1/images/generations", json={"prompt": "x", "model": "turbo"})
        assert openai.status_code == 503 and openai.json()["error"]["code"] == "backend_unavailable"
        assert client.post("/generate", json={"prompt": "x"}).status_code == 200


UNPARSABLE = '("a", "b").blend(1)'  # compel: two prompts, one weight


def test_a_prompt_compel_cannot_parse_is_a_422_invalid_prompt_naming_prompt(make_client):
    client = make_client()
    wait_ready(client)
    ours = client.post("/generate", json={"prompt": UNPARSABLE, "seed": 1})
    assert ours.status_code == 422, ours.text
    assert (ours.json()["error"], ours.json()["field"]) == ("invalid_prompt", "prompt")
    assert "the prompt could not be parsed" in ours.json()["message"]
    openai = client.post("/v1/images/generations", json={"prompt": UNPARSABLE, "seed": 1})
    assert openai.status_code == 422, openai.text
    error = openai.json()["error"]
    assert error["code"] == "invalid_prompt" and error["param"] == "prompt"
    assert error["type"] == "invalid_request_error"
    assert client.post("/generate", json={"prompt": "a fine prompt", "seed": 1}).status_code == 200
