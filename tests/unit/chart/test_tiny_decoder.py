"""The tiny decoder in the chart: its fetch init container, the server's settings, the refusals.

The tests that render run the real `helm` (chart_render.py): without it they skip locally and fail in CI.
"""

from __future__ import annotations

import json

from chart_render import CHART, needs_helm, render, render_fails

SHA = "ab" * 32
ENABLED = {"tinyDecoder.enabled": "true", "tinyDecoder.sha256": SHA}


def test_the_schema_offers_the_servers_decoders() -> None:
    from zthumb.settings import DECODER_NAMES, TINY_DECODER_MAX_BYTES, Settings

    schema = json.loads((CHART / "values.schema.json").read_text())
    tiny = schema["properties"]["tinyDecoder"]["properties"]
    assert tiny["default"]["enum"] == list(DECODER_NAMES)
    assert tiny["maxBytes"]["maximum"] == TINY_DECODER_MAX_BYTES
    assert Settings().decoder == "full"


@needs_helm
def test_disabled_by_default_the_server_decodes_with_the_vae(helm_bin, helm_env) -> None:
    r = render(helm_env)
    assert r.env["ZTHUMB_DECODER"] == "full"
    assert not any(name.startswith("ZTHUMB_TINY_DECODER") for name in r.env)
    assert [c["name"] for c in r.pod["initContainers"]] == ["fetch-model"]


@needs_helm
def test_enabled_it_is_fetched_verified_and_handed_to_the_server(helm_bin, helm_env) -> None:
    from zthumb.settings import Settings

    r = render(
        helm_env,
        {**ENABLED, "tinyDecoder.default": "tiny", "server.backend": "turbo", "model.turboPath": "t"},
    )
    fetch_model, fetch_tiny = r.pod["initContainers"]
    assert fetch_model["name"] == "fetch-model"
    assert fetch_tiny["name"] == "fetch-tiny-decoder"
    assert fetch_tiny["image"] == fetch_model["image"]  # the trainer image, as for the base model
    assert fetch_tiny["volumeMounts"] == fetch_model["volumeMounts"]
    args = fetch_tiny["args"]
    assert args[0] == "fetch-model"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags == {
        "--url": "https://huggingface.co/madebyollin/taesdxl/resolve/main/diffusion_pytorch_model.safetensors",
        "--sha256": SHA,
        "--output": "/data/models/taesdxl/diffusion_pytorch_model.safetensors",
        "--max-bytes": "67108864",
    }
    env = r.env
    assert env["ZTHUMB_DECODER"] == "tiny"
    assert env["ZTHUMB_TINY_DECODER_PATH"] == "/data/models/taesdxl"
    assert env["ZTHUMB_TINY_DECODER_SHA256"] == SHA
    assert int(env["ZTHUMB_TINY_DECODER_MAX_BYTES"]) == Settings().tiny_decoder_max_bytes
    # What the chart renders is a configuration the server accepts.
    settings = Settings(
        decoder=env["ZTHUMB_DECODER"],
        tiny_decoder_path=env["ZTHUMB_TINY_DECODER_PATH"],
        tiny_decoder_sha256=env["ZTHUMB_TINY_DECODER_SHA256"],
        tiny_decoder_max_bytes=env["ZTHUMB_TINY_DECODER_MAX_BYTES"],
    )
    assert str(settings.tiny_decoder_path) + "/diffusion_pytorch_model.safetensors" == flags["--output"]


@needs_helm
def test_without_the_base_model_fetch_only_the_tiny_decoder_is_fetched(helm_bin, helm_env) -> None:
    r = render(helm_env, {**ENABLED, "model.fetch.enabled": "false", "tinyDecoder.path": "/data/taesd"})
    (only,) = r.pod["initContainers"]
    assert only["name"] == "fetch-tiny-decoder"
    assert r.env["ZTHUMB_TINY_DECODER_PATH"] == "/data/taesd"


@needs_helm
def test_refusals_name_the_value(helm_bin, helm_env) -> None:
    assert "tinyDecoder.enabled=true needs tinyDecoder.sha256" in render_fails(
        helm_env, {"tinyDecoder.enabled": "true"}
    )
    assert "tinyDecoder.default=tiny needs tinyDecoder.enabled=true" in render_fails(
        helm_env, {"tinyDecoder.default": "tiny"}
    )
    assert "maxBytes" in render_fails(helm_env, {**ENABLED, "tinyDecoder.maxBytes": "0"})
    assert "sha256" in render_fails(helm_env, {"tinyDecoder.sha256": "not-a-sha"})
