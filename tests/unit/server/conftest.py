"""Fixtures for the inference server: LoRA adapters on the tiny UNet and running apps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import server_settings


@pytest.fixture(scope="session")
def lora_states(tiny_model) -> dict[str, Any]:
    from zthumb.testing import random_lora_state_dict

    unet = tiny_model.diffusers_dir / "unet"
    return {"a": random_lora_state_dict(unet, seed=1), "b": random_lora_state_dict(unet, seed=2)}


@pytest.fixture(scope="session")
def lora_root(tmp_path_factory, lora_states) -> Path:
    """A LoRA root with every accepted layout plus things that must be refused.

    style_a/                 diffusers directory (what the trainer exports)
    b.safetensors            diffusers/PEFT single file
    kohya_a.safetensors      adapter A in the kohya/A1111 layout
    evil.bin                 pickle: refused
    pickle_only/             a directory with only a .bin: refused
    not_a_lora.safetensors   valid safetensors, not a LoRA: 422
    escape.safetensors       symlink to a file outside the root: refused
    """
    import torch
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file
    from zthumb.testing import write_diffusers_lora, write_kohya_lora

    root = tmp_path_factory.mktemp("lora-root")
    write_diffusers_lora(lora_states["a"], root / "style_a")
    StableDiffusionXLPipeline.save_lora_weights(
        str(root), unet_lora_layers=lora_states["b"], weight_name="b.safetensors"
    )
    write_kohya_lora(lora_states["a"], root / "kohya_a.safetensors")
    (root / "evil.bin").write_bytes(b"\x80\x04not really a pickle")
    (root / "pickle_only").mkdir()
    (root / "pickle_only" / "pytorch_lora_weights.bin").write_bytes(b"\x80\x04")
    save_file({"weight": torch.zeros(2, 2)}, str(root / "not_a_lora.safetensors"))
    outside = tmp_path_factory.mktemp("outside") / "secret.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(outside))
    (root / "escape.safetensors").symlink_to(outside)
    (root / "inner_link.safetensors").symlink_to(root / "b.safetensors")
    return root


@pytest.fixture
def make_client(tiny_model, lora_root) -> Iterator[Any]:
    """Build an app with overridden settings and run it (lifespan) in a TestClient."""
    from fastapi.testclient import TestClient
    from zthumb.app import build_app

    clients: list[TestClient] = []

    def factory(engine_factory=None, **overrides: Any) -> TestClient:
        settings = server_settings(tiny_model, overrides.pop("lora_root", lora_root), **overrides)
        engine = engine_factory(settings) if engine_factory else None
        client = TestClient(build_app(settings, engine=engine))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)
