"""The tiny decoder (``decoder: "tiny"``): a random AutoencoderTiny for the tiny SDXL model."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from server_helpers import SIZE, decode, server_settings, wait_ready, write_tiny_decoder

CPU = torch.device("cpu")
PARAMS = {"prompt": "a photo of z", "negative_prompt": None, "width": SIZE, "height": SIZE, "seed": 5}


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("taesdxl")
    return {"tiny_decoder_path": directory, "tiny_decoder_sha256": write_tiny_decoder(directory)}


@pytest.fixture(scope="module")
def backend(tiny_model, lora_root, tiny_decoder):
    from zthumb.backends import FullBackend

    return FullBackend(server_settings(tiny_model, lora_root, **tiny_decoder), CPU, torch.float32)


def _params(**changes):
    from zthumb.backends import GenerationParams

    return replace(GenerationParams(**PARAMS, steps=2, guidance_scale=6.0, num_images=1), **changes)


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB")) for image in images]


def test_tiny_decoder_decodes_the_pipelines_latents_as_autoencoder_tiny_does(backend, tiny_decoder):
    from diffusers import AutoencoderTiny

    full = _pixels(backend.generate(_params()))[0]
    tiny = _pixels(backend.generate(_params(decoder="tiny")))[0]
    assert tiny.shape == full.shape == (SIZE, SIZE, 3)
    assert np.abs(tiny.astype(int) - full.astype(int)).max() > 10  # another decoder, another image

    cond = backend.encode_prompt(_params())
    latents = backend.pipe(
        prompt_embeds=cond.embeds,
        pooled_prompt_embeds=cond.pooled_embeds,
        negative_prompt_embeds=cond.negative_embeds,
        negative_pooled_prompt_embeds=cond.negative_pooled_embeds,
        width=SIZE,
        height=SIZE,
        num_inference_steps=2,
        guidance_scale=6.0,
        generator=torch.Generator("cpu").manual_seed(PARAMS["seed"]),
        output_type="latent",
    ).images
    reference = AutoencoderTiny.from_pretrained(str(tiny_decoder["tiny_decoder_path"]))
    with torch.no_grad():
        sample = reference.decode(latents).sample
    expected = _pixels(backend.pipe.image_processor.postprocess(sample, output_type="pil"))[0]
    np.testing.assert_array_equal(tiny, expected)


def test_a_batch_of_tiny_decoder_requests_matches_each_alone(backend):
    from zthumb.backends.batched import generate_batch

    items = [_params(decoder="tiny", seed=1), _params(decoder="tiny", seed=2, num_images=2)]
    together = generate_batch(backend, items, [threading.Event() for _ in items])
    for params, outcome in zip(items, together, strict=True):
        alone = _pixels(backend.generate(params))
        got = _pixels(outcome)
        assert len(got) == len(alone) == params.num_images
        assert (
            max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(alone, got, strict=True))
            <= 1
        )


def test_the_decoder_is_part_of_the_batch_key(tiny_model, lora_root, tiny_decoder, backend):
    from zthumb.batching import batch_key
    from zthumb.engine import Engine
    from zthumb.protocol import GenerateRequest

    engine = Engine(server_settings(tiny_model, lora_root, **tiny_decoder))
    engine.backends["full"] = backend
    engine.ready = True
    plans = [engine.prepare(GenerateRequest(prompt="p", seed=1, decoder=d)) for d in (None, "full", "tiny")]
    assert [plan.params.decoder for plan in plans] == ["full", "full", "tiny"]
    keys = [batch_key(plan, backend) for plan in plans]
    assert keys[0] == keys[1] != keys[2]


def test_generation_seconds_are_counted_per_decoder(tiny_model, lora_root, tiny_decoder, backend):
    """Alone (``Engine.execute``) and batched (``run_batch``), each generation lands in its own
    decoder's series of ``zthumb_generation_seconds`` (read from a registry made here)."""
    from prometheus_client import CollectorRegistry
    from zthumb.batching import run_batch
    from zthumb.engine import Engine
    from zthumb.metrics import Metrics
    from zthumb.protocol import GenerateRequest

    registry = CollectorRegistry()
    engine = Engine(server_settings(tiny_model, lora_root, **tiny_decoder), Metrics(registry))
    engine.backends["full"] = backend
    engine.ready = True

    def plan(decoder: str, seed: int):
        return engine.prepare(GenerateRequest(prompt="p", seed=seed, decoder=decoder))

    engine.execute(plan("full", 1))
    engine.execute(plan("tiny", 2))
    batched = run_batch(engine, [plan("tiny", 3), plan("tiny", 4)], [threading.Event(), threading.Event()])
    assert not any(isinstance(result, Exception) for result in batched), batched

    def sample(suffix: str, decoder: str) -> float | None:
        labels = {"backend": "full", "decoder": decoder}
        return registry.get_sample_value(f"zthumb_generation_seconds_{suffix}", labels)

    assert (sample("count", "full"), sample("count", "tiny")) == (1, 3)
    assert (sample("sum", "full") or 0.0) > 0 and (sample("sum", "tiny") or 0.0) > 0
    assert registry.get_sample_value("zthumb_generation_seconds_count", {"backend": "full"}) is None


def test_http_decoder_field_default_header_and_models(make_client, tiny_decoder):
    client = make_client(decoder="tiny", **tiny_decoder)
    assert wait_ready(client)["ready"]
    default = client.post("/generate", json={"prompt": "p", "seed": 3})
    full = client.post("/generate", json={"prompt": "p", "seed": 3, "decoder": "full"})
    assert default.status_code == full.status_code == 200, (default.text, full.text)
    assert (default.json()["decoder"], full.json()["decoder"]) == ("tiny", "full")
    assert decode(default.json()).shape == decode(full.json()).shape
    assert not np.array_equal(decode(default.json()), decode(full.json()))

    raw = client.post("/generate", json={"prompt": "p", "seed": 3, "response_format": "bytes"})
    assert raw.headers["X-ZThumb-Decoder"] == "tiny"
    openai = client.post("/v1/images/generations", json={"prompt": "p", "seed": 3, "decoder": "full"})
    assert openai.status_code == 200, openai.text
    backends = client.get("/models").json()["backends"]
    assert backends[0]["decoders"] == ["full", "tiny"]


def test_tiny_without_weights_is_refused_naming_the_field(make_client):
    client = make_client()
    assert wait_ready(client)["ready"]
    refused = client.post("/generate", json={"prompt": "p", "decoder": "tiny"})
    assert refused.status_code == 400
    assert refused.json()["error"] == "decoder_unavailable"
    assert refused.json()["field"] == "decoder"
    unknown = client.post("/generate", json={"prompt": "p", "decoder": "huge"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "decoder"
    assert client.get("/models").json()["backends"][0]["decoders"] == ["full"]
    assert client.post("/generate", json={"prompt": "p"}).json()["decoder"] == "full"


def test_a_wrong_checksum_keeps_the_server_from_becoming_ready(make_client, tiny_decoder):
    client = make_client(**{**tiny_decoder, "tiny_decoder_sha256": "0" * 64})
    body = wait_ready(client)
    assert body["status"] == "failed"
    assert "ZTHUMB_TINY_DECODER_SHA256" in body["error"]
    assert tiny_decoder["tiny_decoder_sha256"] in body["error"]


def _load(tiny_model, lora_root, **settings):
    from zthumb.backends.tiny_decoder import load_tiny_decoder

    return load_tiny_decoder(server_settings(tiny_model, lora_root, **settings), CPU, torch.float32)


def test_weights_only_directory_loads_with_the_default_architecture(tiny_model, lora_root, tmp_path):
    """What the chart fetches is the weights file alone: the architecture is then TAESD's, so a
    file for another one (ours is smaller) is refused, not served as noise."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file
    from zthumb.backends.tiny_decoder import TinyDecoderError

    sha = write_tiny_decoder(tmp_path, config=False)
    with pytest.raises(TinyDecoderError, match="not a loadable AutoencoderTiny"):
        _load(tiny_model, lora_root, tiny_decoder_path=tmp_path, tiny_decoder_sha256=sha)

    default = tmp_path / "default"
    default.mkdir()
    save_file(AutoencoderTiny().state_dict(), str(default / "diffusion_pytorch_model.safetensors"))
    from server_helpers import sha256_of

    model = _load(
        tiny_model,
        lora_root,
        tiny_decoder_path=default,
        tiny_decoder_sha256=sha256_of(default / "diffusion_pytorch_model.safetensors"),
    )
    assert isinstance(model, AutoencoderTiny)


def test_bounds_and_missing_files_are_refused(tiny_model, lora_root, tiny_decoder, tmp_path):
    from zthumb.backends.tiny_decoder import TinyDecoderError

    with pytest.raises(TinyDecoderError, match="the limit is 100"):
        _load(tiny_model, lora_root, **tiny_decoder, tiny_decoder_max_bytes=100)
    with pytest.raises(TinyDecoderError, match="is not a file"):
        _load(tiny_model, lora_root, tiny_decoder_path=tmp_path, tiny_decoder_sha256="0" * 64)
    with pytest.raises(TinyDecoderError, match="is not a directory"):
        _load(tiny_model, lora_root, tiny_decoder_path=tmp_path / "absent", tiny_decoder_sha256="0" * 64)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(TinyDecoderError, match="not an AutoencoderTiny config"):
        _load(
            tiny_model,
            lora_root,
            tiny_decoder_path=tmp_path,
            tiny_decoder_sha256="2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
        )


def test_settings_refuse_tiny_without_weights_and_weights_without_checksum(tmp_path):
    from pydantic import ValidationError
    from zthumb.settings import Settings

    with pytest.raises(ValidationError, match="ZTHUMB_DECODER=tiny needs ZTHUMB_TINY_DECODER_PATH"):
        Settings(decoder="tiny")
    with pytest.raises(ValidationError, match="ZTHUMB_TINY_DECODER_SHA256 is required"):
        Settings(tiny_decoder_path=tmp_path)
    with pytest.raises(ValidationError, match="tiny_decoder_sha256"):
        Settings(tiny_decoder_path=tmp_path, tiny_decoder_sha256="not-hex")
    assert Settings(tiny_decoder_path="", tiny_decoder_sha256="").tiny_decoder_path is None
