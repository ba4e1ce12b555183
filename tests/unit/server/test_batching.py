"""Dynamic batching on the tiny model: images as if served alone, failures kept apart, metrics."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from server_helpers import decode, serve_on_loopback, server_settings

# Measured on CPU (float32) with the tiny model: a batched image differs from the same request
# served alone by at most 1/255 on a few pixels (the UNet's matrix products are blocked
# differently for a larger batch); the noise is identical. Allowed: 2/255.
PIXEL_TOLERANCE = 2


@pytest.fixture(scope="module")
def engine(tiny_model, lora_root):
    from zthumb.engine import Engine

    eng = Engine(server_settings(tiny_model, lora_root))
    eng.load_all()
    assert eng.ready
    return eng


def _plans(engine, *requests: dict[str, Any]):
    from zthumb.protocol import GenerateRequest

    return [engine.prepare(GenerateRequest(**body)) for body in requests]


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


class CountingPipe:
    """Wraps the pipeline: records the images per call."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.calls: list[int] = []

    def __call__(self, **kwargs):
        self.calls.append(len(kwargs["generator"]) if isinstance(kwargs["generator"], list) else 1)
        return self.pipe(**kwargs)


def test_batched_images_match_each_request_served_alone(engine, monkeypatch):
    """Own seed, negative prompt and num_images per request; a prompt compel cannot parse gets its
    own 422 and its batch-mates their images."""
    from zthumb.batching import run_batch
    from zthumb.errors import InvalidRequestError

    plans = _plans(
        engine,
        {"prompt": "a red house", "seed": 1},
        {"prompt": "(blue)1.3 sky", "seed": 2, "num_images": 2},
        {"prompt": "a cat", "seed": 3, "negative_prompt": "blurry"},
        {"prompt": '("a", "b").blend(1)', "seed": 4},  # compel: mismatched weights
        {"prompt": "a dog", "seed": 5, "negative_prompt": "(dark)1.2"},
    )
    alone = [engine.execute(plan).images for plan in plans if plan.params.seed != 4]
    counting = CountingPipe(engine.backends["full"].pipe)
    monkeypatch.setattr(engine.backends["full"], "pipe", counting)

    outcomes = run_batch(engine, plans, [threading.Event() for _ in plans])

    bad = outcomes.pop(3)
    assert isinstance(bad, InvalidRequestError) and bad.code == "invalid_prompt" and bad.field == "prompt"
    # One call for the requests without a negative prompt (the pipeline fills in zeros for the
    # whole call), one for those with: 3 images, then 2.
    assert sorted(counting.calls) == [2, 3]
    diffs = []
    for alone_images, outcome in zip(alone, outcomes, strict=True):
        assert len(outcome.images) == len(alone_images)
        diffs += [_max_diff(a, b) for a, b in zip(alone_images, outcome.images, strict=True)]
    assert max(diffs) <= PIXEL_TOLERANCE, diffs
    assert outcomes[1].plan.params.seed == 2 and outcomes[1].generate_seconds > 0


def test_a_failing_shared_call_runs_each_request_alone_with_its_own_answer(engine, monkeypatch):
    """When the shared call fails (here: its first adapter activation), every request of the
    batch is run alone; a request whose adapter cannot load gets its own error, naming its field."""
    from zthumb import batching
    from zthumb.errors import ZThumbError

    good = _plans(engine, {"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2})
    expected = [engine.execute(plan).images[0] for plan in good]
    real_activate = engine.activate
    failures = iter([RuntimeError("device hiccup")])

    def flaky_activate(plan):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_activate(plan)

    monkeypatch.setattr(engine, "activate", flaky_activate)
    outcomes = batching.run_batch(engine, good, [threading.Event(), threading.Event()])
    assert [_max_diff(o.images[0], e) for o, e in zip(outcomes, expected, strict=True)] == [0, 0]

    broken = _plans(
        engine,
        {"prompt": "x", "lora_path": "not_a_lora.safetensors"},
        {"prompt": "y", "loras": [{"path": "not_a_lora.safetensors", "scale": 1.0}]},
    )
    assert batching.batch_key(broken[0], engine.backends["full"]) == batching.batch_key(
        broken[1], engine.backends["full"]
    )
    errors = batching.run_batch(engine, broken, [threading.Event(), threading.Event()])
    assert all(isinstance(error, ZThumbError) and error.status == 422 for error in errors)
    assert errors[0] is not errors[1]
    assert [error.field for error in errors] == ["lora_path", "loras[0].path"]


def test_batch_key_separates_what_changes_the_call(engine):
    from zthumb.batching import batch_key

    backend = engine.backends["full"]
    base = {"prompt": "p", "seed": 1}
    same = _plans(
        engine,
        base,
        {**base, "prompt": "other", "seed": 9, "negative_prompt": "n", "num_images": 2},
        {**base, "output_format": "jpeg", "response_format": "bytes"},
        {**base, "loras": [{"path": "b.safetensors", "scale": 0.0}]},  # scale 0: left out
    )
    keys = {batch_key(plan, backend) for plan in same}
    assert len(keys) == 1
    different = _plans(
        engine,
        {**base, "width": 32},
        {**base, "steps": 1},
        {**base, "guidance_scale": 2.0},
        {**base, "lora_path": "b.safetensors"},
        {**base, "lora_path": "b.safetensors", "lora_scale": 0.5},
    )
    assert len({batch_key(plan, backend) for plan in different} | keys) == 6


def test_concurrent_http_requests_share_a_call_and_keep_their_own_metrics_and_seeds(tiny_model, lora_root):
    """Requests queued behind a busy device run as one batch; each answer carries its own seed and
    the pixels it gets alone; requests, generations and the batch histograms count them."""
    import httpx
    from zthumb.app import build_app

    app = build_app(server_settings(tiny_model, lora_root, max_batch=8, batch_wait_ms=0))
    bodies = [{"prompt": f"thing {i}", "seed": 10 + i} for i in range(3)]
    gate, busy = threading.Event(), threading.Event()
    with serve_on_loopback(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        assert app.state.engine.loading_done.wait(120) and app.state.engine.ready
        alone = [decode(http.post("/generate", json=body).json()) for body in bodies]
        worker = app.state.worker
        worker.enqueue(lambda _c: busy.set() or gate.wait(60))
        assert busy.wait(10)
        registry = app.state.engine.metrics.registry
        before = registry.get_sample_value("zthumb_batch_size_count")
        try:
            with ThreadPoolExecutor(len(bodies)) as pool:
                futures = [pool.submit(http.post, "/generate", json=body) for body in bodies]
                tick = threading.Event()  # never set: its wait is the poll interval
                for _ in range(3000):  # bounded poll until all three wait
                    if worker.waiting == len(bodies):
                        break
                    tick.wait(0.01)
                assert worker.waiting == len(bodies)
                gate.set()
                responses = [future.result(120) for future in futures]
        finally:
            gate.set()
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r.json()["seed"] for r in responses] == [10, 11, 12]
    diffs = [_max_diff(decode(r.json()), a) for r, a in zip(responses, alone, strict=True)]
    assert max(diffs) <= PIXEL_TOLERANCE, diffs
    value = registry.get_sample_value
    assert value("zthumb_batch_size_count") == before + 1
    assert (
        value("zthumb_batch_size_bucket", {"le": "3.0"}) - value("zthumb_batch_size_bucket", {"le": "2.0"})
        == 1
    )
    assert value("zthumb_requests_total", {"backend": "full", "status": "200"}) == 6
    assert value("zthumb_generation_seconds_count", {"backend": "full", "decoder": "full"}) == 6
