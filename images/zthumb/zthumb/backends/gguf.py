"""``gguf``: SDXL whose UNet is loaded quantized from a GGUF file (low-VRAM fallback).

The UNet comes from ``ZTHUMB_GGUF_UNET_PATH`` through diffusers' GGUF support: Linear layers
whose weights are stored quantized (Q8_0, …) become ``GGUFLinear`` modules that keep the
packed bytes in memory and dequantize on the fly. Text encoders and VAE come from the base
model (``ZTHUMB_MODEL_PATH`` + ``ZTHUMB_MODEL_CONFIG``). LoRA works: PEFT wraps the GGUF
Linear layers like any ``nn.Linear`` and adds the low-rank update in the compute dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zthumb.backends.base import Backend, ModelConfigError, load_sdxl_pipeline

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel


class GGUFBackend(Backend):
    name = "gguf"
    default_width = 1024
    default_height = 1024
    default_steps = 30
    default_guidance_scale = 6.0
    supports_compile = False  # GGUF-quantized layers dequantize in Python: the UNet runs eagerly

    def load_unet(self) -> UNet2DConditionModel:
        from diffusers import GGUFQuantizationConfig, UNet2DConditionModel

        path = self.settings.gguf_unet_path
        if path is None:
            raise ModelConfigError("ZTHUMB_GGUF_UNET_PATH is not set")
        if not path.is_file() or path.suffix != ".gguf":
            raise ModelConfigError(f"ZTHUMB_GGUF_UNET_PATH={path} is not a .gguf file")
        config = self.settings.model_config_dir
        if config is None and self.settings.model_path is not None and self.settings.model_path.is_dir():
            config = self.settings.model_path
        if config is None:
            raise ModelConfigError(
                "the gguf backend needs the UNet config: set ZTHUMB_MODEL_CONFIG (a diffusers SDXL directory)"
            )
        return UNet2DConditionModel.from_single_file(
            str(path),
            quantization_config=GGUFQuantizationConfig(compute_dtype=self.dtype),
            config=str(config),
            subfolder="unet",
            dtype=self.dtype,
            local_files_only=True,
        )

    def load_pipeline(self) -> Any:
        unet = self.load_unet()
        return load_sdxl_pipeline(
            self.settings.model_path,
            self.settings.model_config_dir,
            self.dtype,
            env_name="ZTHUMB_MODEL_PATH",
            unet=unet,
        )

    @property
    def model_description(self) -> str | None:
        return str(self.settings.gguf_unet_path) if self.settings.gguf_unet_path else None
