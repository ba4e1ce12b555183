"""End to end through HTTP on the tiny pipeline: endpoints, adapters, cache, errors."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from server_helpers import SIZE, decode, sha256_of, wait_ready

PROMPT = "a photo of z"


@pytest.fixture(scope="module")
def client(tiny_model, lora_root, tmp_path_factory):
    """full (default) + gguf backends, no env-default adapter."""
    from fastapi.testclient import TestClient
    from server_helpers import server_settings
    from zthumb.app import build_app
    from zthumb.gguf_convert import convert

    gguf_file = tmp_path_factory.mktemp("gguf") / "unet.gguf"
    convert(tiny_model.diffusers_dir, gguf_file)
    settings = server_settings(
        tiny_model, lora_root, enabled_backends=["full", "gguf"], gguf_unet_path=gguf_file
    )
    with TestClient(build_app(settings)) as test_client:
        assert wait_ready(test_client)["ready"]
        assert test_client.app.state.engine.loading_done.wait(60)
        yield test_client


def metric_samples(client) -> dict[tuple[str, frozenset], float]:
    """Every sample /metrics exposes, by name and labels (HELP and TYPE lines are not samples)."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(client.get("/metrics").text)
    return {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}


def grew(before, after, name: str, **labels: str) -> float:
    """How much a sample rose between two ``metric_samples`` (absent counts as 0)."""
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def generate(client, expect: int = 200, **fields):
    body = {"prompt": PROMPT, "seed": 7, **fields}
    response = client.post("/generate", json=body)
    assert response.status_code == expect, response.text
    return response.json()


# --- health, models, metrics -----------------------------------------------------------------


def test_health_ready_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    models = client.get("/models").json()
    assert models["default_backend"] == "full"
    assert models["lora_loaded"] is False
    assert models["lora_path"] is None
    names = {b["name"]: b for b in models["backends"]}
    assert names["full"]["loaded"] and names["full"]["device"] == "cpu"
    assert names["full"]["dtype"] == "float32"
    assert names["gguf"]["loaded"]


def test_gguf_backend_shows_smaller_weights_and_generates(client):
    backends = {b["name"]: b for b in client.get("/models").json()["backends"]}
    full, gguf = backends["full"], backends["gguf"]
    assert gguf["unet_weight_bytes"] < full["unet_weight_bytes"]
    assert gguf["quantized_weight_bytes"] <= 0.30 * gguf["quantized_weight_fp32_bytes"]
    body = generate(client, backend="gguf")
    assert body["backend"] == "gguf"
    assert decode(body).shape == (SIZE, SIZE, 3)


def test_generate_defaults_and_determinism(client):
    first = generate(client)
    assert first["backend"] == "full"
    assert first["seed"] == 7
    assert (first["width"], first["height"], first["steps"]) == (SIZE, SIZE, 2)
    assert first["adapter"] is None
    assert set(first["timings"]) == {"queue_s", "adapter_s", "generate_s", "encode_s", "total_s"}
    assert first["images"][0]["mime_type"] == "image/png"
    again = generate(client)
    assert np.array_equal(decode(first), decode(again))
    other = generate(client, seed=8)
    assert not np.array_equal(decode(first), decode(other))


def test_random_seed_is_returned(client):
    body = generate(client, seed=None)
    assert isinstance(body["seed"], int)
    replay = generate(client, seed=body["seed"])
    assert np.array_equal(decode(body), decode(replay))


def test_prompt_weighting_and_negative_prompt(client):
    plain = decode(generate(client))
    weighted = decode(generate(client, prompt="a (photo)1.6 of z"))
    negative = decode(generate(client, negative_prompt="blurry"))
    assert not np.array_equal(plain, weighted)
    assert not np.array_equal(plain, negative)


def test_formats_and_raw_bytes(client):
    for fmt, mime in (("jpeg", "image/jpeg"), ("webp", "image/webp")):
        body = generate(client, output_format=fmt)
        assert body["images"][0]["mime_type"] == mime
        assert decode(body).shape == (SIZE, SIZE, 3)
    response = client.post("/generate", json={"prompt": PROMPT, "seed": 7, "response_format": "bytes"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-zthumb-seed"] == "7"
    assert Image.open(io.BytesIO(response.content)).size == (SIZE, SIZE)
    batch = generate(client, num_images=2)
    assert len(batch["images"]) == 2


# --- adapters --------------------------------------------------------------------------------


def test_scale_zero_is_bit_identical_and_scale_changes_output(client, lora_root):
    base = decode(generate(client))
    zero = generate(client, lora_path="style_a", lora_scale=0)
    assert np.array_equal(decode(zero), base)
    styled = generate(client, lora_path="style_a", lora_scale=0.8)
    assert not np.array_equal(decode(styled), base)
    adapter = styled["adapter"]
    assert adapter["path"] == "style_a"
    assert adapter["scale"] == 0.8
    assert adapter["source"] == "request"
    assert adapter["sha256"] == sha256_of(lora_root / "style_a" / "pytorch_lora_weights.safetensors")
    # Absolute paths inside the root are accepted too.
    absolute = generate(client, lora_path=str(lora_root / "style_a"), lora_scale=0.8)
    assert np.array_equal(decode(absolute), decode(styled))


def test_kohya_and_file_layouts(client):
    diffusers_dir = decode(generate(client, lora_path="style_a", lora_scale=0.8))
    kohya = decode(generate(client, lora_path="kohya_a.safetensors", lora_scale=0.8))
    assert np.abs(kohya.astype(int) - diffusers_dir.astype(int)).max() <= 1
    single = generate(client, lora_path="b.safetensors", lora_scale=0.8)
    assert single["adapter"]["path"] == "b.safetensors"
    # A symlink that stays inside the root is fine.
    linked = generate(client, lora_path="inner_link.safetensors", lora_scale=0.8)
    assert np.array_equal(decode(linked), decode(single))


def test_switching_adapters_matches_loading_each_alone(client, tiny_model, lora_root):
    from server_helpers import server_settings
    from zthumb.backends import FullBackend
    from zthumb.backends.base import GenerationParams
    from zthumb.lora import AdapterFiles

    sequence = ["style_a", "b.safetensors", "style_a", "b.safetensors"]
    outputs = [decode(generate(client, lora_path=p, lora_scale=0.8)) for p in sequence]
    assert np.array_equal(outputs[0], outputs[2])
    assert np.array_equal(outputs[1], outputs[3])
    assert not np.array_equal(outputs[0], outputs[1])

    # A fresh pipeline that only ever saw adapter B gives the same image.
    import torch

    settings = server_settings(tiny_model, lora_root)
    alone = FullBackend(settings, torch.device("cpu"), torch.float32)
    alone.apply_adapter(AdapterFiles(lora_root).ref("b.safetensors"), 0.8)
    params = GenerationParams(PROMPT, None, SIZE, SIZE, 2, 6.0, 7, 1)
    image = np.asarray(alone.generate(params)[0].convert("RGB"))
    assert np.array_equal(image, outputs[1])


def test_cached_switch_never_reads_the_disk(client):
    engine = client.app.state.engine
    backend = engine.backends["full"]
    generate(client, lora_path="style_a", lora_scale=0.8)
    generate(client, lora_path="b.safetensors", lora_scale=0.8)
    reads, loads = engine.files.hash_reads, backend.adapter_loads
    before = metric_samples(client)
    for path in ["style_a", "b.safetensors"] * 2:
        generate(client, lora_path=path, lora_scale=0.5)
    assert (engine.files.hash_reads, backend.adapter_loads) == (reads, loads)
    after = metric_samples(client)
    assert grew(before, after, "zthumb_adapter_cache_hits_total", backend="full") == 4
    assert grew(before, after, "zthumb_adapter_loads_total", backend="full") == 0


def test_replaced_file_is_reloaded(client, lora_root, tmp_path):
    swap = lora_root / "swap.safetensors"
    shutil.copy(lora_root / "b.safetensors", swap)
    first = generate(client, lora_path="swap.safetensors", lora_scale=0.8)
    assert first["adapter"]["sha256"] == sha256_of(lora_root / "b.safetensors")
    # Atomic replacement with adapter A's weights (kohya file of A).
    staged = lora_root / ".swap.tmp"
    shutil.copy(lora_root / "kohya_a.safetensors", staged)
    os.replace(staged, swap)
    second = generate(client, lora_path="swap.safetensors", lora_scale=0.8)
    assert second["adapter"]["sha256"] == sha256_of(lora_root / "kohya_a.safetensors")
    kohya = decode(generate(client, lora_path="kohya_a.safetensors", lora_scale=0.8))
    assert np.array_equal(decode(second), kohya)
    assert not np.array_equal(decode(first), decode(second))
    # The stale version left the cache.
    cached = client.get("/models").json()["cached_adapters"]
    swaps = [c for c in cached if c["path"] == "swap.safetensors" and c["backend"] == "full"]
    assert [c["sha256"] for c in swaps] == [second["adapter"]["sha256"]]


def test_lru_cache_is_bounded(client, lora_root):
    def cached_on_full() -> list:
        return [c for c in client.get("/models").json()["cached_adapters"] if c["backend"] == "full"]

    already, before = len(cached_on_full()), metric_samples(client)
    for index in range(6):
        target = lora_root / f"copy_{index}.safetensors"
        shutil.copy(lora_root / "b.safetensors", target)
        generate(client, lora_path=target.name, lora_scale=0.8)
    cached = cached_on_full()
    assert len(cached) == client.get("/models").json()["lora_cache_size"] == 4
    # Six new adapters through a cache of four: what it held before, and two of the six, left it.
    evicted = grew(before, metric_samples(client), "zthumb_adapter_evictions_total", backend="full")
    assert evicted == already + 2
    # An evicted adapter loads again on demand.
    body = generate(client, lora_path="copy_0.safetensors", lora_scale=0.8)
    assert body["adapter"]["path"] == "copy_0.safetensors"


def test_lora_on_gguf_backend(client):
    base = decode(generate(client, backend="gguf"))
    zero = decode(generate(client, backend="gguf", lora_path="style_a", lora_scale=0))
    styled = decode(generate(client, backend="gguf", lora_path="style_a", lora_scale=0.8))
    assert np.array_equal(base, zero)
    assert not np.array_equal(base, styled)


@pytest.mark.parametrize(
    ("lora_path", "status", "code"),
    [
        ("../outside/secret.safetensors", 400, "lora_path_traversal"),
        ("style_a/../b.safetensors", 400, "lora_path_traversal"),
        ("/etc/passwd", 400, "lora_path_outside_root"),
        ("escape.safetensors", 400, "lora_path_symlink_escape"),
        ("evil.bin", 400, "lora_format_refused"),
        ("pickle_only", 400, "lora_format_refused"),
        ("missing.safetensors", 404, "lora_not_found"),
        ("not_a_lora.safetensors", 422, "lora_invalid"),
    ],
)
def test_adapter_refusals(client, lora_path, status, code):
    body = generate(client, expect=status, lora_path=lora_path, lora_scale=0.8)
    assert body["error"] == code
    assert body["field"] == "lora_path"
    assert body["message"]


def test_server_survives_refusals(client):
    generate(client, expect=422, lora_path="not_a_lora.safetensors", lora_scale=1)
    assert decode(generate(client)).shape == (SIZE, SIZE, 3)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"width": 60}, 422, "width"),
        ({"width": 512}, 422, "width"),
        ({"height": 8}, 422, "height"),
        ({"steps": 9}, 422, "steps"),
        ({"steps": 0}, 422, "steps"),
        ({"num_images": 3}, 422, "num_images"),
        ({"lora_scale": 2.5, "lora_path": "style_a"}, 422, "lora_scale"),
        ({"lora_scale": 0.5}, 400, "lora_scale"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "x" * 2001}, 422, "prompt"),
        ({"guidance_scale": -1}, 422, "guidance_scale"),
        ({"seed": -1}, 422, "seed"),
        ({"output_format": "gif"}, 422, "output_format"),
        ({"response_format": "bytes", "num_images": 2}, 422, "response_format"),
        ({"backend": "turbo"}, 400, "backend"),
        ({"backend": "nope"}, 400, "backend"),
        ({"colour": "red"}, 422, "colour"),
    ],
)
def test_bad_input_names_the_field(client, fields, status, field):
    body = generate(client, expect=status, **fields)
    assert body["field"] == field, body
    assert field in body["message"] or body["error"] in (
        "no_adapter",
        "backend_not_enabled",
        "unknown_backend",
    )


def test_missing_prompt_and_bad_json(client):
    response = client.post("/generate", json={"seed": 1})
    assert response.status_code == 422
    assert response.json()["field"] == "prompt"
    response = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert client.get("/nope").json()["error"] == "not_found"


def test_metrics(client, lora_root):
    """Each kind of request moves its own samples, by the amount it should."""
    fresh = lora_root / "metrics_fresh.safetensors"  # never requested before: a cache miss, a load
    shutil.copy(lora_root / "b.safetensors", fresh)
    before = metric_samples(client)
    generate(client)
    generate(client, lora_path=fresh.name, lora_scale=0.8)
    generate(client, expect=400, lora_scale=0.5)  # a scale without an adapter
    after = metric_samples(client)
    ok, refused = {"backend": "full", "status": "200"}, {"backend": "full", "status": "400"}
    assert grew(before, after, "zthumb_requests_total", **ok) == 2
    assert grew(before, after, "zthumb_request_seconds_count", **ok) == 2
    assert grew(before, after, "zthumb_requests_total", **refused) == 1
    assert grew(before, after, "zthumb_generation_seconds_count", backend="full", decoder="full") == 2
    assert grew(before, after, "zthumb_adapter_cache_misses_total", backend="full") == 1
    assert grew(before, after, "zthumb_adapter_loads_total", backend="full") == 1
    assert grew(before, after, "zthumb_adapter_load_seconds_count", backend="full") == 1
    assert after[("zthumb_queue_depth", frozenset())] == 0
    assert after[("zthumb_ready", frozenset())] == 1
