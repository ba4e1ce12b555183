"""``full``: SDXL base from a diffusers directory or the original single-file checkpoint."""

from __future__ import annotations

from typing import Any

from zthumb.backends.base import Backend, load_sdxl_pipeline


class FullBackend(Backend):
    name = "full"
    default_width = 1024
    default_height = 1024
    default_steps = 30
    default_guidance_scale = 6.0

    def load_pipeline(self) -> Any:
        return load_sdxl_pipeline(
            self.settings.model_path, self.settings.model_config_dir, self.dtype, env_name="ZTHUMB_MODEL_PATH"
        )

    @property
    def model_description(self) -> str | None:
        return str(self.settings.model_path) if self.settings.model_path else None
