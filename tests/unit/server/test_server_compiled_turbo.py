"""The compiled path on the turbo backend (ZTHUMB_COMPILE with ZTHUMB_BACKEND=turbo): the same
machinery as the full backend's (``Backend._compile``, the fuse and slot strategies), warmed up at
turbo's fixed size with its one step and no CFG. torch.compile with inductor on the CPU, tiny SDXL
(its turbo copy: the same weights behind turbo's scheduler), real adapters.

One compiled server per strategy (compiling is the slow part; inductor's cache lives beside the
tiny model, so a second run of the suite reuses it) and one eager turbo server as the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_helpers import (
    INDUCTOR_CACHE_DIR,
    SIZE,
    TOLERANCE_MAX,
    TOLERANCE_MEAN,
    decode,
    server_settings,
    wait_ready,
    write_compiled_path_loras,
)

SLOT_RANK = 16
# Turbo's own defaults for steps and guidance (1 and 0); the size stays the tests' small one.
TURBO = {"backend": "turbo", "default_steps": None, "lora_cache_size": 3}


@pytest.fixture(scope="module")
def turbo_root(tmp_path_factory, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("turbo-compiled-lora")
    write_compiled_path_loras(tiny_model, root, first_seed=31)
    return root


@pytest.fixture(scope="module", params=["fuse", "slot"])
def compiled(request, tiny_model, turbo_root) -> Any:
    """A compiled turbo server (``request.param``: the adapter strategy) and its first image."""
    from fastapi.testclient import TestClient
    from zthumb.app import build_app

    settings = server_settings(
        tiny_model,
        turbo_root,
        **TURBO,
        compile="default",
        compile_lora=request.param,
        compile_max_rank=SLOT_RANK,
        compile_cache_dir=INDUCTOR_CACHE_DIR,
    )
    with TestClient(build_app(settings)) as client:
        body = wait_ready(client, timeout=900)
        assert body["ready"], body
        fresh = client.post("/generate", json=_request()).json()
        yield client, decode(fresh)


@pytest.fixture(scope="module")
def eager(tiny_model, turbo_root) -> Any:
    from fastapi.testclient import TestClient
    from zthumb.app import build_app

    with TestClient(build_app(server_settings(tiny_model, turbo_root, **TURBO))) as client:
        assert wait_ready(client)["ready"]
        yield client


def _request(lora: tuple[str, float] | None = None, steps: int | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"prompt": "a photo of z", "seed": 7, "width": SIZE, "height": SIZE}
    if lora is not None:
        request["loras"] = [{"path": lora[0], "scale": lora[1]}]
    if steps is not None:
        request["steps"] = steps
    return request


def _image(client, lora: tuple[str, float] | None = None, steps: int | None = None) -> np.ndarray:
    response = client.post("/generate", json=_request(lora, steps))
    assert response.status_code == 200, response.text
    assert response.json()["backend"] == "turbo"
    return decode(response.json())


def _sample(client, name: str) -> float | None:
    """A sample of the app's own registry, labelled with the turbo backend."""
    return client.app.state.engine.metrics.registry.get_sample_value(name, {"backend": "turbo"})


def _close(reference: np.ndarray, image: np.ndarray, what: Any) -> None:
    """The full backend's tolerance against eager: compiler rounding (and one merge rounding)."""
    difference = np.abs(reference.astype(int) - image.astype(int))
    assert difference.max() <= TOLERANCE_MAX and difference.mean() < TOLERANCE_MEAN, (
        what,
        difference.max(),
        difference.mean(),
    )


@pytest.mark.slow  # compiles the tiny UNet once per strategy (minutes with a cold cache)
def test_warm_up_covers_every_step_count_at_the_fixed_size(compiled, eager):
    """Warm-up ran turbo's default request (one step, no CFG, its size); 1 to 4 steps at that size
    reuse its graph: nothing compiles again, and each image is eager turbo's within tolerance."""
    from zthumb.backends.compiled import compiled_graphs

    client, fresh = compiled
    backend = client.app.state.engine.backends["turbo"]
    assert backend.compiled is not None and backend.compiled.strategy in ("fuse", "slot")
    assert backend.defaults()["steps"] == 1 and backend.defaults()["guidance_scale"] == 0.0
    assert (_sample(client, "zthumb_compile_seconds") or 0.0) > 0
    graphs = compiled_graphs()
    requests_before = _sample(client, "zthumb_compiled_requests_total")
    assert requests_before is not None

    _close(_image(eager), fresh, "compiled turbo against eager, default request")
    for steps in (1, 2, 3, 4):
        image = _image(client, steps=steps)
        if steps == 1:
            assert np.array_equal(image, fresh)  # the default request is one step
        _close(_image(eager, steps=steps), image, f"{steps} steps")

    assert compiled_graphs() == graphs, "torch._dynamo compiled a graph after warm-up"
    assert _sample(client, "zthumb_compile_recompiles_total") == 0
    assert _sample(client, "zthumb_compiled_requests_total") == requests_before + 4


@pytest.mark.slow  # compiles the tiny UNet once per strategy (minutes with a cold cache)
def test_switching_adapters_on_compiled_turbo_never_recompiles(compiled, eager):
    """Adapters and scales switch per request on the compiled turbo UNet as on full: applied as
    eager turbo applies them, back to an earlier one gives the same image, scale 0 the base's."""
    from zthumb.backends.compiled import compiled_graphs

    client, fresh = compiled
    graphs = compiled_graphs()
    # Three adapters through a cache of three, each at two scales, then back.
    sequence = [("a", 1.0), ("b", 0.5), ("c_alpha8", 1.0), ("a", 0.3), ("b", 1.0), ("c_alpha8", 0.7)]
    images = {use: _image(client, use) for use in sequence}
    assert len({image.tobytes() for image in images.values()}) == len(images), "some switch changed nothing"
    assert np.array_equal(_image(client, ("b", 0.5)), images[("b", 0.5)])
    for use in [("a", 1.0), ("c_alpha8", 0.7), ("b", 0.5)]:  # alpha/rank applied as eager does
        _close(_image(eager, use), images[use], use)
    for silent in [("a", 0.0), None]:
        assert np.array_equal(_image(client, silent), fresh), silent

    assert compiled_graphs() == graphs, "torch._dynamo compiled a graph after warm-up"
    assert _sample(client, "zthumb_compile_recompiles_total") == 0
