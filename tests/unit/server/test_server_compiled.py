"""The compiled path with a LoRA slot (ZTHUMB_COMPILE, ZTHUMB_COMPILE_LORA=slot): torch.compile with
inductor on the CPU, tiny SDXL, real adapters (the default strategy, fuse: test_server_compiled_fused).

One compiled server per module (compiling is the slow part; inductor's cache lives beside the
tiny model, so a second run of the suite reuses it). Adapters: rank 4 (three of them, one with
alpha ≠ rank), rank 32 (above the slot rank 16) and one on the feed-forward
layers (outside the slot's target modules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_helpers import (
    INDUCTOR_CACHE_DIR,
    SIZE,
    decode,
    server_settings,
    wait_ready,
    write_compiled_path_loras,
)

SLOT_RANK = 16


@pytest.fixture(scope="module")
def compiled_root(tmp_path_factory, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("compiled-lora")
    write_compiled_path_loras(tiny_model, root, first_seed=11)
    return root


def _settings(tiny_model, root: Path, **overrides: Any):
    return server_settings(tiny_model, root, lora_cache_size=2, **overrides)


@pytest.fixture(scope="module")
def compiled(tiny_model, compiled_root) -> Any:
    """A compiled server and the first image it made: no adapter, the slot as warm-up left it."""
    from fastapi.testclient import TestClient
    from zthumb.app import build_app

    settings = _settings(
        tiny_model,
        compiled_root,
        compile="default",
        compile_lora="slot",
        compile_max_rank=SLOT_RANK,
        compile_cache_dir=INDUCTOR_CACHE_DIR,
    )
    with TestClient(build_app(settings)) as client:
        body = wait_ready(client, timeout=900)
        assert body["ready"], body
        fresh = client.post("/generate", json=_request()).json()
        yield client, decode(fresh)


def _request(lora_path: str | None = None, scale: float | None = None, seed: int = 7) -> dict[str, Any]:
    request: dict[str, Any] = {"prompt": "a photo of z", "seed": seed, "width": SIZE, "height": SIZE}
    if lora_path is not None:
        request["lora_path"] = lora_path
    if scale is not None:
        request["lora_scale"] = scale
    return request


def _image(client, lora_path: str | None = None, scale: float | None = None) -> np.ndarray:
    response = client.post("/generate", json=_request(lora_path, scale))
    assert response.status_code == 200, response.text
    return decode(response.json())


def _metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'{name}{{backend="full"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


@pytest.mark.slow  # compiles the tiny UNet once per module (about 2 min with a cold cache)
def test_switching_adapters_and_scales_never_recompiles(compiled, make_client, compiled_root):
    client, _ = compiled
    backend = client.app.state.engine.backends["full"]
    assert backend.compiled is not None and backend.compiled.mode == "default"
    assert _metric(client, "zthumb_compile_seconds") > 0
    assert any(Path(backend.compiled.cache_dir).iterdir()), "inductor wrote nothing to the cache dir"
    before = _metric(client, "zthumb_compiled_requests_total")

    # Three adapters through a cache of two: loads, hits, evictions and reloads, six scales.
    sequence = [
        ("a", 1.0),
        ("b", 0.5),
        ("c_alpha8", 1.0),
        ("a", 0.3),
        ("b", 1.0),
        ("a", 1.0),
        ("c_alpha8", 0.7),
    ]
    images = {(path, scale): _image(client, path, scale) for path, scale in sequence}

    assert _metric(client, "zthumb_compile_recompiles_total") == 0
    assert _metric(client, "zthumb_compiled_requests_total") == before + len(sequence)
    assert len({image.tobytes() for image in images.values()}) == len(images), "some switch changed nothing"
    # Back to an earlier adapter and scale: exactly the same image (the slot holds nothing stale).
    assert np.array_equal(_image(client, "b", 0.5), images[("b", 0.5)])
    assert _metric(client, "zthumb_compile_recompiles_total") == 0

    # The hot-swapped adapters apply as the eager server applies them (alpha/rank included).
    eager = make_client(lora_root=compiled_root, lora_cache_size=2)
    wait_ready(eager)
    for key in [("a", 1.0), ("c_alpha8", 0.7), ("b", 0.5)]:
        reference = _image(eager, *key)
        difference = np.abs(reference.astype(int) - images[key].astype(int))
        assert difference.max() <= 2 and difference.mean() < 0.05, (key, difference.max(), difference.mean())


@pytest.mark.slow  # compiles the tiny UNet once per module (about 2 min with a cold cache)
def test_scale_zero_is_bit_identical_to_the_zero_slot(compiled, make_client):
    client, fresh = compiled
    for path, scale in [("a", 1.0), ("a", 0.0), (None, None), ("b", 0.0), ("c_alpha8", 0.0)]:
        image = _image(client, path, scale)
        if scale != 1.0:
            # Whatever adapter the slot holds: scale 0 and no adapter equal the warm-up's zero slot.
            assert np.array_equal(image, fresh), (path, scale)
    assert _metric(client, "zthumb_compile_recompiles_total") == 0

    # Against the eager pipeline without adapters: compiler rounding only (stated tolerance).
    eager = make_client()
    wait_ready(eager)
    difference = np.abs(_image(eager).astype(int) - fresh.astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())


@pytest.mark.slow  # compiles the tiny UNet once per module (about 2 min with a cold cache)
def test_adapters_the_slot_cannot_hold_are_refused_without_recompiling(compiled):
    client, _ = compiled
    reference = _image(client, "a", 1.0)

    response = client.post("/generate", json=_request("rank32", 1.0))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "lora_rank_exceeds_slot" and body["field"] == "lora_path"
    assert "rank is 32" in body["message"] and "ZTHUMB_COMPILE_MAX_RANK" in body["message"]

    response = client.post("/generate", json=_request("feed_forward", 1.0))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "lora_targets_outside_slot" and body["field"] == "lora_path"
    assert "ZTHUMB_COMPILE_TARGET_MODULES" in body["message"]

    # Nothing was recompiled and the slot still serves the adapters it can hold, unchanged.
    assert np.array_equal(_image(client, "a", 1.0), reference)
    assert _metric(client, "zthumb_compile_recompiles_total") == 0
    cached = {entry["path"] for entry in client.get("/models").json()["cached_adapters"]}
    assert not any(path.startswith(("rank32", "feed_forward")) for path in cached)


def test_compile_settings_from_the_environment(monkeypatch, tmp_path):
    from pydantic import ValidationError
    from zthumb.settings import Settings

    assert Settings().compile == "off" and Settings().compile_lora == "fuse"
    monkeypatch.setenv("ZTHUMB_COMPILE_LORA", "slot")
    assert Settings().compile_lora == "slot"
    monkeypatch.setenv("ZTHUMB_COMPILE", "max-autotune")
    monkeypatch.setenv("ZTHUMB_COMPILE_MAX_RANK", "32")
    monkeypatch.setenv("ZTHUMB_COMPILE_TARGET_MODULES", "to_q, to_k,ff.net.2")
    monkeypatch.setenv("ZTHUMB_COMPILE_CACHE_DIR", str(tmp_path))
    settings = Settings()
    assert settings.compile == "max-autotune" and settings.compile_max_rank == 32
    assert settings.compile_target_modules == ["to_q", "to_k", "ff.net.2"]
    assert settings.compile_cache_dir == tmp_path
    monkeypatch.setenv("ZTHUMB_COMPILE_CACHE_DIR", "")
    assert Settings().compile_cache_dir is None
    monkeypatch.setenv("ZTHUMB_COMPILE", "fast")
    with pytest.raises(ValidationError, match="compile"):
        Settings()


def test_adapter_rank_reads_every_key_layout():
    import torch
    from zthumb.backends.compiled import adapter_rank

    assert (
        adapter_rank(
            {"unet.x.to_q.lora_A.weight": torch.zeros(8, 32), "unet.x.to_q.lora_B.weight": torch.zeros(32, 8)}
        )
        == 8
    )
    assert (
        adapter_rank(
            {
                "unet.x.to_q.lora.down.weight": torch.zeros(4, 32),
                "unet.x.to_q.lora.up.weight": torch.zeros(32, 4),
            }
        )
        == 4
    )
    kohya = {
        "lora_unet_x_to_q.lora_down.weight": torch.zeros(16, 32, 1, 1),
        "lora_unet_x_to_q.lora_up.weight": torch.zeros(32, 16, 1, 1),
        "lora_unet_x_to_q.alpha": torch.tensor(8.0),
    }
    assert adapter_rank(kohya) == 16
    assert adapter_rank({"unet.x.to_q.lora_B.weight": torch.zeros(32, 12)}) == 12


@pytest.mark.slow  # compiles the tiny UNet once per module (about 2 min with a cold cache)
def test_loras_on_the_compiled_path_one_entry_only(compiled):
    """The compiled slot holds one adapter: ``loras`` with one entry is ``lora_path``; more are a
    422 naming ``loras`` (before anything is queued), and nothing recompiles either way."""
    client, _ = compiled
    single = _image(client, "a", 0.6)
    response = client.post("/generate", json={**_request(), "loras": [{"path": "a", "scale": 0.6}]})
    assert response.status_code == 200, response.text
    assert np.array_equal(decode(response.json()), single)
    assert response.json()["adapters"] == [response.json()["adapter"]]

    two = [{"path": "a", "scale": 0.6}, {"path": "b", "scale": 0.4}]
    response = client.post("/generate", json={**_request(), "loras": two})
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["error"], body["field"]) == ("loras_unsupported_compiled", "loras")
    assert "ZTHUMB_COMPILE=default" in body["message"]
    assert np.array_equal(_image(client, "a", 0.6), single)
    assert _metric(client, "zthumb_compile_recompiles_total") == 0


@pytest.mark.slow  # compiles the tiny UNet once per module (about 2 min with a cold cache)
def test_misfit_adapter_is_refused_on_the_compiled_path(compiled, compiled_root):
    import torch
    from safetensors.torch import save_file

    client, _ = compiled
    save_file(
        {
            "transformer.x.to_q.lora_A.weight": torch.ones(4, 8),
            "transformer.x.to_q.lora_B.weight": torch.ones(8, 4),
        },
        str(compiled_root / "sd3_like.safetensors"),
    )
    response = client.post("/generate", json=_request("sd3_like.safetensors", 1.0))
    assert response.status_code == 422, response.text
    assert (response.json()["error"], response.json()["field"]) == ("lora_no_match", "lora_path")
    assert _metric(client, "zthumb_compile_recompiles_total") == 0
