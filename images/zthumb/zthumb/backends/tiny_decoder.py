"""The tiny decoder: a diffusers ``AutoencoderTiny`` (TAESD-XL) that turns SDXL latents into pixels.

SDXL's own VAE decoder is a large share of a one-step turbo thumbnail's time and memory; TAESD-XL
decodes the same latents with about 1% of its weights, at some loss of fine detail. The server
loads it once per backend at startup, when ``ZTHUMB_TINY_DECODER_PATH`` names a directory:

- the weights are ``diffusion_pytorch_model.safetensors`` in that directory, read once (at most
  ``ZTHUMB_TINY_DECODER_MAX_BYTES``) and verified against ``ZTHUMB_TINY_DECODER_SHA256``: the
  sha256 is of exactly the bytes parsed, so a file replaced between hashing and loading cannot
  slip through;
- the architecture is the directory's ``config.json`` when there is one, else diffusers'
  default ``AutoencoderTiny`` (TAESD's architecture, which TAESD-XL shares), so a volume that
  holds only the weights file (what the chart's init container fetches) is enough;
- the weights must fill the model exactly (strict ``load_state_dict``): a file for another
  architecture is refused at startup, not served as noise.

A refusal is a ``TinyDecoderError``: the backend does not load and the server stays not ready,
naming the setting.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from zthumb.errors import ModelConfigError

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from PIL.Image import Image

    from zthumb.settings import DecoderName, Settings

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
CONFIG_MAX_BYTES = 64 * 1024  # a diffusers config is a few hundred bytes


class TinyDecoderError(ModelConfigError):
    """The tiny decoder's files are missing, too large, of another checksum or another model."""


def _read_bounded(path: Path, limit: int, setting: str) -> bytes:
    """The file's bytes, refusing it unread when it is larger than ``limit`` (and reading no more)."""
    if not path.is_file():
        raise TinyDecoderError(f"{setting}: {path} is not a file")
    size = path.stat().st_size
    if size > limit:
        raise TinyDecoderError(f"{setting}: {path} has {size} bytes; the limit is {limit}")
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew since stat
        raise TinyDecoderError(f"{setting}: {path} has more than {limit} bytes")
    return data


def load_tiny_decoder(settings: Settings, device: torch.device, dtype: torch.dtype) -> Any | None:
    """The verified ``AutoencoderTiny`` on ``device``, or None when no tiny decoder is configured."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import load as load_safetensors

    directory = settings.tiny_decoder_path
    if directory is None:
        return None
    if not directory.is_dir():
        raise TinyDecoderError(f"ZTHUMB_TINY_DECODER_PATH={directory} is not a directory")
    data = _read_bounded(
        directory / WEIGHTS_NAME, settings.tiny_decoder_max_bytes, "ZTHUMB_TINY_DECODER_PATH"
    )
    digest = hashlib.sha256(data).hexdigest()
    if digest != settings.tiny_decoder_sha256:
        raise TinyDecoderError(
            f"ZTHUMB_TINY_DECODER_SHA256: {directory / WEIGHTS_NAME} has sha256 {digest}, "
            f"expected {settings.tiny_decoder_sha256}"
        )
    config_file = directory / CONFIG_NAME
    config: dict[str, Any] = {}
    if config_file.exists():
        try:
            config = json.loads(_read_bounded(config_file, CONFIG_MAX_BYTES, "ZTHUMB_TINY_DECODER_PATH"))
        except ValueError as exc:
            raise TinyDecoderError(f"ZTHUMB_TINY_DECODER_PATH: {config_file} is not JSON: {exc}") from exc
        if not isinstance(config, dict) or config.get("_class_name", "AutoencoderTiny") != "AutoencoderTiny":
            raise TinyDecoderError(
                f"ZTHUMB_TINY_DECODER_PATH: {config_file} is not an AutoencoderTiny config"
            )
    try:
        model = AutoencoderTiny.from_config(config)
        model.load_state_dict(load_safetensors(data), strict=True)
    except Exception as exc:
        raise TinyDecoderError(
            f"ZTHUMB_TINY_DECODER_PATH: {directory} is not a loadable AutoencoderTiny: {exc}"
        ) from exc
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def pipeline_output_type(decoder: DecoderName) -> str:
    """What the pipeline is asked for: images from its own VAE, or latents for the tiny decoder."""
    return "latent" if decoder == "tiny" else "pil"


def to_images(pipe: Any, tiny_decoder: Any | None, output: Any, decoder: DecoderName) -> list[Image]:
    """The pipeline's output (``pipeline_output_type(decoder)``) as PIL images."""
    if decoder != "tiny":
        return list(output)
    if tiny_decoder is None:  # engine.prepare refuses such a request before it queues
        raise ModelConfigError("no tiny decoder is loaded (ZTHUMB_TINY_DECODER_PATH)")
    return decode_latents(pipe, tiny_decoder, output)


def decode_latents(pipe: Any, tiny_decoder: Any, latents: torch.Tensor) -> list[Image]:
    """PIL images from the pipeline's latents (``output_type="latent"``), decoded by the tiny AE.

    What the SDXL pipeline does with a swapped-in ``AutoencoderTiny`` as its VAE: its scaling
    factor is 1 (TAESD-XL reads the UNet's latents as they are) and its output, in [-1, 1], goes
    through the pipeline's own image processor.
    """
    import torch

    with torch.inference_mode():
        factor = tiny_decoder.config.scaling_factor
        sample = tiny_decoder.decode(latents.to(tiny_decoder.dtype) / factor).sample
    return list(pipe.image_processor.postprocess(sample, output_type="pil"))
