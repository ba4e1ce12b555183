"""``POST /v1/images/generations`` through the real ``openai`` client against a real uvicorn server."""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from server_helpers import decode, serve_on_loopback, server_settings

KEY = "s3cret-token"
PROMPT = "a photo of z"


@pytest.fixture(scope="module")
def server(tiny_model, lora_root) -> Any:
    """The app (api key, queue of 1, at most 2 images) served by uvicorn on loopback."""
    import torch
    from safetensors.torch import save_file
    from zthumb.app import build_app

    # LoRA-looking tensors under module names the model does not have.
    foreign = {"model.mlp.lora_A.weight": torch.ones(4, 8), "model.mlp.lora_B.weight": torch.ones(8, 4)}
    save_file(foreign, str(lora_root / "openai_foreign.safetensors"))

    settings = server_settings(tiny_model, lora_root, api_key=KEY, max_queue=1)
    app = build_app(settings)
    with serve_on_loopback(app) as url:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        for _ in range(600):
            if http.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.1)
        else:
            raise AssertionError("server not ready")
        yield app, url, http
        http.close()


def client_for(url: str, key: str = KEY) -> Any:
    # No retries: the 429 must surface, not be retried after Retry-After.
    return openai.OpenAI(api_key=key, base_url=f"{url}/v1", max_retries=0, timeout=120)


def png(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(data))


def test_generates_n_images_at_the_requested_size(server):
    _, url, _ = server
    result = client_for(url).images.generate(
        prompt=PROMPT, n=2, size="64x48", response_format="b64_json", extra_body={"seed": 3, "steps": 2}
    )
    assert isinstance(result.created, int) and result.created > 0
    assert len(result.data) == 2
    images = [png(item.b64_json) for item in result.data]
    assert all(image.size == (64, 48) for image in images)
    assert images[0].tobytes() != images[1].tobytes()


def test_same_engine_as_generate(server):
    """Same seed, size, steps and adapters: the same pixels as /generate (one pipeline, translated)."""
    _, url, http = server
    extensions = {"seed": 11, "steps": 2, "guidance_scale": 4.0, "negative_prompt": "blurry"}
    loras = [{"path": "style_a", "scale": 0.8}, {"path": "b.safetensors", "scale": 0.3}]
    for extra in (extensions, {**extensions, "loras": loras}):
        # `model` naming no enabled backend is ignored (stock clients send e.g. dall-e-3).
        result = client_for(url).images.generate(
            prompt=PROMPT, size="64x64", model="dall-e-3", extra_body=extra
        )
        fields = {key: value for key, value in extra.items() if key != "steps"}
        response = http.post(
            "/generate", json={"prompt": PROMPT, "width": 64, "height": 64, "steps": 2, **fields}
        )
        assert response.status_code == 200, response.text
        ours = np.asarray(png(result.data[0].b64_json).convert("RGB"))
        assert np.array_equal(ours, decode(response.json()))


def test_api_key_is_enforced(server):
    _, url, _ = server
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError) as refused:
            client_for(url, key=key or "x").images.generate(prompt=PROMPT)
        error = refused.value.body
        assert error["type"] == "authentication_error" and error["code"] == "unauthorized"
        assert set(error) == {"message", "type", "param", "code"}
    response = httpx.post(f"{url}/v1/images/generations", json={"prompt": PROMPT})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("kwargs", "exception", "param", "code"),
    [
        ({"response_format": "url"}, "BadRequestError", "response_format", "response_format_unsupported"),
        ({"size": "65x64"}, "UnprocessableEntityError", "size", "invalid_request"),
        ({"size": "1024x1024"}, "UnprocessableEntityError", "size", "invalid_request"),
        ({"size": "big"}, "UnprocessableEntityError", "size", "invalid_request"),
        ({"n": 3}, "UnprocessableEntityError", "n", "invalid_request"),
        ({"extra_body": {"loras": [{"path": "../x.safetensors"}]}}, "BadRequestError", "loras[0].path",
         "lora_path_traversal"),
        ({"extra_body": {"loras": [{"path": "openai_foreign.safetensors"}]}}, "UnprocessableEntityError",
         "loras[0].path", "lora_no_match"),
        ({"extra_body": {"sampler": "euler"}}, "UnprocessableEntityError", "sampler", "invalid_request"),
    ],
)  # fmt: skip
def test_errors_surface_as_typed_exceptions_in_openai_shape(server, kwargs, exception, param, code):
    _, url, _ = server
    with pytest.raises(getattr(openai, exception)) as refused:
        client_for(url).images.generate(prompt=PROMPT, **kwargs)
    error = refused.value.body
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), error
    assert error["message"]


def test_queue_full_is_a_rate_limit_error_with_retry_after(server):
    app, url, http = server
    worker = app.state.worker
    gate, started = threading.Event(), threading.Event()

    def blocker(_cancel: Any) -> None:
        started.set()
        gate.wait(30)

    worker.enqueue(blocker, "blocker", force=True)
    assert started.wait(30)
    try:
        worker.enqueue(lambda _c: None, "filler")
        with pytest.raises(openai.RateLimitError) as refused:
            client_for(url).images.generate(prompt=PROMPT)
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.body["code"] == "queue_full"
        assert refused.value.body["type"] == "rate_limit_error"
    finally:
        gate.set()
    # Counted with /generate's metrics, under the same labels.
    metrics = http.get("/metrics").text
    assert 'zthumb_requests_total{backend="full",status="429"} 1.0' in metrics
    assert 'zthumb_requests_total{backend="full",status="200"}' in metrics
    assert "zthumb_queue_rejected_total 1.0" in metrics


def test_generate_keeps_its_error_shape_and_v1_paths_use_openais(server):
    _, _, http = server
    # /generate keeps its own error shape next to the OpenAI one.
    response = http.post("/generate", json={"prompt": PROMPT, "num_images": 3})
    assert response.status_code == 422
    assert response.json()["field"] == "num_images" and response.json()["error"] == "invalid_request"
    # An unknown /v1 path answers in OpenAI's shape too.
    missing = http.get("/v1/models/none")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_translation_onto_generate_request():
    from zthumb.errors import BadRequestError, InvalidRequestError
    from zthumb.protocol import LoraSpec, OpenAIImageRequest
    from zthumb.serving import generate_request_from_openai

    backends = ["full", "turbo"]
    body = OpenAIImageRequest(
        prompt="p", n=2, size="96x64", model="turbo", seed=5, steps=3, loras=[LoraSpec(path="a", scale=0.5)]
    )
    request = generate_request_from_openai(body, backends)
    assert (request.width, request.height, request.num_images, request.backend) == (96, 64, 2, "turbo")
    assert (request.seed, request.steps, request.output_format, request.response_format) == (
        5,
        3,
        "png",
        "json",
    )
    assert request.loras == [LoraSpec(path="a", scale=0.5)]
    # A model that is no enabled backend (a stock client's default) picks the default backend.
    assert (
        generate_request_from_openai(OpenAIImageRequest(prompt="p", model="gguf"), backends).backend is None
    )
    assert generate_request_from_openai(OpenAIImageRequest(prompt="p"), backends).width is None
    with pytest.raises(BadRequestError) as url:
        generate_request_from_openai(OpenAIImageRequest(prompt="p", response_format="url"), backends)
    assert url.value.field == "response_format"
    with pytest.raises(InvalidRequestError) as odd:
        generate_request_from_openai(OpenAIImageRequest(prompt="p", size="60x64"), backends)
    assert odd.value.field == "size" and "multiple of 8" in odd.value.message
