"""Helpers shared by the server tests (imported by name: this folder is on sys.path)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 64
# Inductor's cache for the compiled-path tests: beside the tiny model, so a second run reuses it.
INDUCTOR_CACHE_DIR = Path.home() / ".cache" / "zthumb" / "test-models" / "torchinductor"
# Compiled against eager images (0-255): merging rounds W0 + ΔW once (fp32 here), compiling reorders
# sums. Both backends' compiled-path tests hold to it.
TOLERANCE_MAX, TOLERANCE_MEAN = 2, 0.05


def write_compiled_path_loras(tiny_model, root: Path, first_seed: int) -> dict[str, Any]:
    """The adapters both compiled strategies are tested with, as diffusers directories: ``a`` and ``b``
    (rank 4), ``c_alpha8`` (rank 4, alpha 8), ``rank32`` and ``feed_forward`` (on ``ff.net.2``,
    outside the attention projections); returns their state dicts by name."""
    from zthumb.testing import adapter_metadata, lora_config, random_lora_state_dicts, write_diffusers_lora

    unet = tiny_model.diffusers_dir / "unet"
    seed = iter(range(first_seed, first_seed + 5))
    a, b = random_lora_state_dicts(unet, [next(seed), next(seed)])
    (c,) = random_lora_state_dicts(unet, [next(seed)], rank=4, alpha=8)
    (big,) = random_lora_state_dicts(unet, [next(seed)], rank=32)
    (ff,) = random_lora_state_dicts(unet, [next(seed)], target_modules=["ff.net.2"])
    loras = {"a": a, "b": b, "c_alpha8": c, "rank32": big, "feed_forward": ff}
    for name, state in loras.items():
        metadata = adapter_metadata(lora_config(4, 8)) if name == "c_alpha8" else None
        write_diffusers_lora(state, root / name, metadata=metadata)
    return loras


def server_settings(tiny_model, lora_root: Path, **overrides: Any):
    from zthumb.settings import Settings

    values: dict[str, Any] = {
        "backend": "full",
        "model_path": tiny_model.diffusers_dir,
        "model_config_dir": tiny_model.diffusers_dir,
        "turbo_model_path": tiny_model.turbo_dir,
        "lora_root": lora_root,
        "device": "cpu",
        "default_width": SIZE,
        "default_height": SIZE,
        "default_steps": 2,
        "min_size": 16,
        "max_size": 256,
        "max_steps": 8,
        "max_num_images": 2,
        "lora_cache_size": 4,
        "request_timeout_s": 120,
    }
    values.update(overrides)
    return Settings(**values)


def wait_ready(client, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        body = response.json()
        if response.status_code == 200 or body.get("status") == "failed":
            return body
        time.sleep(0.05)
    raise AssertionError("server did not become ready")


def wait_loaded(client, timeout: float = 120.0) -> None:
    engine = client.app.state.engine
    assert engine.loading_done.wait(timeout), "loading did not finish"


def decode(body: dict[str, Any], index: int = 0) -> np.ndarray:
    import base64

    from PIL import Image

    data = base64.b64decode(body["images"][index]["data"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def serve_on_loopback(app, timeout: float = 60.0) -> Iterator[str]:
    """Run ``app`` in a real uvicorn server on 127.0.0.1 (a free port); yields its base URL."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def write_loras_with_text_encoders(tiny_model, root: Path, name: str) -> dict[str, Any]:
    """One random LoRA on the UNet and both text encoders, written as ``<name>/`` (diffusers) and
    ``<name>_kohya.safetensors`` (kohya/A1111); returns its PEFT state dicts per component."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from zthumb.testing import lora_config

    pipe = StableDiffusionXLPipeline.from_pretrained(
        str(tiny_model.diffusers_dir), dtype=torch.float32, local_files_only=True, use_safetensors=True
    )
    pipe.unet.add_adapter(lora_config(4))
    clip = lora_config(4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"])
    inject_adapter_in_model(clip, pipe.text_encoder)
    inject_adapter_in_model(clip, pipe.text_encoder_2)
    layers = {
        component: get_peft_model_state_dict(getattr(pipe, component))
        for component in ("unet", "text_encoder", "text_encoder_2")
    }
    StableDiffusionXLPipeline.save_lora_weights(
        str(root / name),
        unet_lora_layers=convert_state_dict_to_diffusers(layers["unet"]),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(layers["text_encoder"]),
        text_encoder_2_lora_layers=convert_state_dict_to_diffusers(layers["text_encoder_2"]),
    )
    kohya = convert_state_dict_to_kohya(
        {f"{c}.{k}": v for c, state in layers.items() for k, v in state.items()}
    )
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(root / f"{name}_kohya.safetensors"))
    return layers


# A random AutoencoderTiny for the tiny SDXL model: four levels (8x upsampling, like its VAE and
# like TAESD-XL), 4 latent channels, a few hundred weights.
TINY_DECODER_CONFIG: dict[str, Any] = {
    "encoder_block_out_channels": [8, 8, 8, 8],
    "decoder_block_out_channels": [8, 8, 8, 8],
    "num_encoder_blocks": [1, 1, 1, 1],
    "num_decoder_blocks": [1, 1, 1, 1],
    "latent_channels": 4,
}


def write_tiny_decoder(directory: Path, seed: int = 0, *, config: bool = True) -> str:
    """Save a random ``AutoencoderTiny`` as a diffusers directory; returns its weights' sha256.

    Without ``config`` only the weights file is written (what the chart's init container fetches).
    """
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(**TINY_DECODER_CONFIG).save_pretrained(str(directory), safe_serialization=True)
    if not config:
        (directory / "config.json").unlink()
    return sha256_of(directory / "diffusion_pytorch_model.safetensors")
