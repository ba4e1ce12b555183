"""The compiled path's default strategy (ZTHUMB_COMPILE_LORA=fuse): adapters merged into the compiled
base UNet's weights per request. torch.compile with inductor on the CPU, tiny SDXL, real adapters:
rank 4 (one with alpha ≠ rank, one in the kohya layout), rank 32 and one on the feed-forward layers
(both refused by a slot; served here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from server_helpers import (
    INDUCTOR_CACHE_DIR,
    SIZE,
    TOLERANCE_MAX,
    TOLERANCE_MEAN,
    decode,
    server_settings,
    wait_ready,
    write_compiled_path_loras,
    write_loras_with_text_encoders,
)


@pytest.fixture(scope="module")
def fused_root(tmp_path_factory, tiny_model) -> Path:
    from zthumb.testing import write_kohya_lora

    root = tmp_path_factory.mktemp("fused-lora")
    loras = write_compiled_path_loras(tiny_model, root, first_seed=21)
    write_kohya_lora(loras["a"], root / "a_kohya.safetensors")
    return root


@pytest.fixture(scope="module")
def fused(tiny_model, fused_root) -> Any:
    """A compiled server (fuse) and the first image it made: the compiled base, no adapter."""
    from fastapi.testclient import TestClient
    from zthumb.app import build_app

    settings = server_settings(
        tiny_model, fused_root, lora_cache_size=3, compile="default", compile_cache_dir=INDUCTOR_CACHE_DIR
    )
    assert settings.compile_lora == "fuse"  # the default
    with TestClient(build_app(settings)) as client:
        body = wait_ready(client, timeout=900)
        assert body["ready"], body
        fresh = client.post("/generate", json=_request()).json()
        yield client, decode(fresh)


@pytest.fixture(scope="module")
def eager(tiny_model, fused_root) -> Any:
    from fastapi.testclient import TestClient
    from zthumb.app import build_app

    with TestClient(build_app(server_settings(tiny_model, fused_root, lora_cache_size=3))) as client:
        assert wait_ready(client)["ready"]
        yield client


def _request(loras: list[tuple[str, float]] | None = None, seed: int = 7) -> dict[str, Any]:
    request: dict[str, Any] = {"prompt": "a photo of z", "seed": seed, "width": SIZE, "height": SIZE}
    if loras is not None:
        request["loras"] = [{"path": path, "scale": scale} for path, scale in loras]
    return request


def _image(client, *loras: tuple[str, float]) -> np.ndarray:
    response = client.post("/generate", json=_request(list(loras) if loras else None))
    assert response.status_code == 200, response.text
    return decode(response.json())


def _recompiles(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('zthumb_compile_recompiles_total{backend="full"}'):
            return float(line.split()[-1])
    raise AssertionError("zthumb_compile_recompiles_total not exported")


def _close(reference: np.ndarray, image: np.ndarray, what: Any) -> None:
    difference = np.abs(reference.astype(int) - image.astype(int))
    assert difference.max() <= TOLERANCE_MAX and difference.mean() < TOLERANCE_MEAN, (
        what,
        difference.max(),
        difference.mean(),
    )


@pytest.mark.slow  # compiles the tiny UNet once per module (about 2 min with a cold cache)
def test_switching_adapters_and_scales_never_recompiles_and_applies_as_eager(fused, eager):
    client, _ = fused
    backend = client.app.state.engine.backends["full"]
    assert backend.compiled is not None and backend.compiled.strategy == "fuse"
    # Four adapters through a cache of three: loads, hits, evictions, reloads; several scales.
    sequence = [("a", 1.0), ("b", 0.5), ("c_alpha8", 1.0), ("a", 0.3), ("a_kohya.safetensors", 1.0),
                ("b", 1.0), ("a", 1.0), ("c_alpha8", 0.7)]  # fmt: skip
    images = {use: _image(client, use) for use in sequence}

    assert _recompiles(client) == 0
    assert len({image.tobytes() for image in images.values()}) == len(images) - 1  # a == its kohya copy
    assert np.array_equal(images[("a", 1.0)], images[("a_kohya.safetensors", 1.0)])
    # Back to an earlier adapter and scale: exactly the same image (nothing drifts across merges).
    assert np.array_equal(_image(client, ("b", 0.5)), images[("b", 0.5)])
    for use in [("a", 1.0), ("c_alpha8", 0.7), ("b", 0.5)]:  # alpha/rank applied as eager does
        _close(_image(eager, use), images[use], use)
    assert _recompiles(client) == 0


@pytest.mark.slow
def test_no_adapter_and_scale_zero_are_the_compiled_base_bit_for_bit(fused, eager):
    client, fresh = fused
    for loras in [[("a", 1.0)], [("a", 0.0)], None, [("b", 0.7), ("c_alpha8", 0.4)], [("b", 0.0)]]:
        image = _image(client, *(loras or []))
        if not loras or all(scale == 0 for _, scale in loras):
            assert np.array_equal(image, fresh), loras
    weights = client.app.state.engine.backends["full"].compiled
    assert not weights._merged  # every touched layer holds its base weight again
    _close(_image(eager), fresh, "compiled base against eager")
    assert _recompiles(client) == 0


@pytest.mark.slow
def test_what_a_slot_refuses_is_served(fused, eager):
    """No slot rank and no slot target modules: a rank-32 adapter and a feed-forward one apply."""
    client, fresh = fused
    for path in ("rank32", "feed_forward"):
        image = _image(client, (path, 1.0))
        assert np.abs(image.astype(int) - fresh.astype(int)).mean() > 0.5, path
        _close(_image(eager, (path, 1.0)), image, path)
    assert _recompiles(client) == 0


@pytest.mark.slow
def test_several_adapters_in_one_request(fused, eager):
    client, _ = fused
    combined = _image(client, ("a", 0.6), ("b", 0.4))
    assert np.array_equal(_image(client, ("b", 0.4), ("a", 0.6)), combined)  # the list order is moot
    _close(_image(eager, ("a", 0.6), ("b", 0.4)), combined, "a+b")
    three = _image(client, ("a", 0.5), ("c_alpha8", 0.5), ("rank32", 0.5))
    assert not np.array_equal(three, combined)
    response = client.post("/generate", json=_request([("a", 0.6), ("b", 0.4)]))
    assert [(a["path"], a["scale"]) for a in response.json()["adapters"]] == [("a", 0.6), ("b", 0.4)]
    assert _recompiles(client) == 0


@pytest.mark.slow
def test_adapters_with_text_encoder_layers_are_merged_too(fused, eager, tiny_model, fused_root):
    """A file with UNet and both text encoders' layers (diffusers and kohya layouts), which a slot
    refuses: every layer is merged, and the image is the eager server's."""
    torch.manual_seed(5)
    write_loras_with_text_encoders(tiny_model, fused_root, "with_te")

    client, fresh = fused
    merged = client.app.state.engine.backends["full"].compiled
    for path in ("with_te", "with_te_kohya.safetensors"):
        image = _image(client, (path, 0.8))
        assert np.abs(image.astype(int) - fresh.astype(int)).mean() > 0.5, path
        _close(_image(eager, (path, 0.8)), image, path)
        touched = {layer.split(".", 1)[0] for layer in merged._merged}
        assert touched == {"unet", "text_encoder", "text_encoder_2"}, (path, touched)
    assert np.array_equal(_image(client), fresh)  # the text encoders are restored too
    assert _recompiles(client) == 0
