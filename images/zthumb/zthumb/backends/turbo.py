"""``turbo``: SDXL-Turbo — Euler ancestral with trailing timesteps, no guidance, 1-4 steps, 512²."""

from __future__ import annotations

from typing import Any

from zthumb.backends.base import Backend, load_sdxl_pipeline


class TurboBackend(Backend):
    name = "turbo"
    default_width = 512
    default_height = 512
    default_steps = 1
    default_guidance_scale = 0.0
    max_steps = 4
    fixed_guidance_scale = 0.0

    def load_pipeline(self) -> Any:
        from diffusers import EulerAncestralDiscreteScheduler

        pipe = load_sdxl_pipeline(
            self.settings.turbo_model_path,
            self.settings.turbo_model_config_dir or self.settings.model_config_dir,
            self.dtype,
            env_name="ZTHUMB_TURBO_MODEL_PATH",
        )
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing"
        )
        return pipe

    @property
    def model_description(self) -> str | None:
        return str(self.settings.turbo_model_path) if self.settings.turbo_model_path else None
