"""Validation samples during training (``spec.training.validation``): rendered in the train process
with the current adapter, no server.

Every ``everyNSteps`` optimizer steps and at the end, rank 0 builds a ``StableDiffusionXLPipeline``
from the components the loop already holds (the UNet with its PEFT LoRA, the VAE, both text
encoders and tokenizers, an Euler scheduler from the base model's config) and renders each
prompt × seed, one image at a time with its own ``torch.Generator(seed)``, so a prompt/seed is the
same noise at every pass and comparable across steps. It writes a labelled grid
``<run-dir>/samples/step-<n>.png`` and appends the pass to ``<run-dir>/samples/samples.json``
(step, prompts, seeds, seconds); the eval report shows the grids in step order.

Training stays bit-identical with validation on or off: the render runs under ``torch.no_grad``
with the models in eval mode (their modes restored after), it draws only from its own generators,
and the global RNG states (torch, CUDA, ``random``, numpy) are saved before and restored after.
The other ranks skip the render and wait at a barrier (every rank reaches it at the same step, so
it cannot deadlock). A pass already on disk (a resumed run) is not rendered again.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
from zthumb_contract.spec import ValidationSpec

from zthumb_trainer.atomic import staging_path, write_text_atomically
from zthumb_trainer.prompts import expand_prompt
from zthumb_trainer.train.components import Components

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"
INDEX = "samples.json"
# Small images (the tiny model's 64 px) are enlarged, pixel for pixel, so the labels fit.
MIN_TILE_SIDE = 128
HEADER = 18  # the band above the grid: the step
ROW_BAND = 16  # the band above each row: its prompt
GAP = 4  # between the seeds' columns


def image_name(step: int) -> str:
    return f"step-{step}.png"


def tile_factor(width: int, height: int) -> int:
    return max(1, -(-MIN_TILE_SIDE // min(width, height)))


def grid_size(prompts: int, seeds: int, width: int, height: int) -> tuple[int, int]:
    """The size of a pass's grid: one row per prompt, one column per seed."""
    factor = tile_factor(width, height)
    return seeds * width * factor + (seeds - 1) * GAP, HEADER + prompts * (ROW_BAND + height * factor)


def make_grid(images: list[list[Any]], step: int, prompts: list[str], seeds: list[int]) -> Any:
    """``images[prompt][seed]`` as a grid labelled with the step, each row's prompt and the seeds."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = images[0][0].size
    factor = tile_factor(width, height)
    canvas = Image.new("RGB", grid_size(len(prompts), len(seeds), width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((3, 3), f"step {step}   seeds {', '.join(map(str, seeds))}", fill="black", font=font)
    y = HEADER
    for prompt, row in zip(prompts, images, strict=True):
        fits = max(8, canvas.width // 6)  # the default font is about 6 px a character
        draw.text(
            (3, y + 2), prompt if len(prompt) <= fits else prompt[: fits - 1] + "…", fill="black", font=font
        )
        y += ROW_BAND
        for column, image in enumerate(row):
            tile = image.resize((width * factor, height * factor), Image.Resampling.NEAREST)
            canvas.paste(tile, (column * (width * factor + GAP), y))
        y += height * factor
    return canvas


def read_index(run_dir: Path) -> list[dict[str, Any]]:
    """The passes recorded under ``<run-dir>/samples/``, in step order (none: [])."""
    path = run_dir / SAMPLES_DIR / INDEX
    if not path.exists():
        return []
    passes: list[dict[str, Any]] = json.loads(path.read_text()).get("passes", [])
    return sorted(passes, key=lambda entry: entry["step"])


def summary_block(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """``validation`` of the train summary: how many passes, and what one costs."""
    seconds = [float(entry["seconds"]) for entry in passes]
    return {
        "passes": len(passes),
        "secondsPerPass": round(sum(seconds) / len(seconds), 3) if seconds else None,
    }


class RngState:
    """The global RNG states a render could touch, restored bit for bit afterwards."""

    def __init__(self) -> None:
        import numpy as np

        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.python = random.getstate()
        self.numpy = np.random.get_state()

    def restore(self) -> None:
        import numpy as np

        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        np.random.set_state(self.numpy)


class Validation:
    """The validation passes of one train process (``render`` only on rank 0)."""

    def __init__(  # noqa: PLR0917 - what a render needs from the loop
        self,
        spec: ValidationSpec,
        run_dir: Path,
        components: Components,
        unet: Any,
        device: torch.device,
        resolution: int,
        trigger_word: str = "",
        render: bool = True,
    ) -> None:
        self.spec = spec
        self.directory = run_dir / SAMPLES_DIR
        self.components, self.unet, self.device = components, unet, device
        self.width = spec.width or resolution
        self.height = spec.height or resolution
        self.prompts = [expand_prompt(prompt, trigger_word) for prompt in spec.prompts]
        self.render = render
        self.seconds = 0.0  # this process's time in passes (left out of the summary's steps/s)
        self.rendered_step: int | None = None  # the last pass this process rendered (not found on disk)
        self._pipe: Any = None

    @property
    def enabled(self) -> bool:
        return bool(self.spec.prompts)

    def due(self, step: int) -> bool:
        """A pass after this step inside the loop (the one at the end: ``run`` after the loop)."""
        every = self.spec.every_n_steps
        return self.enabled and every is not None and step % every == 0

    def done(self, step: int) -> bool:
        return any(
            entry["step"] == step and (self.directory / entry["image"]).exists()
            for entry in read_index(self.directory.parent)
        )

    def run(self, step: int, accelerator: Any) -> float:
        """Render the pass of ``step`` on rank 0 unless it is on disk; every rank waits for it.
        Returns the seconds this process spent (to leave out of steps/s)."""
        if not self.enabled:
            return 0.0
        started = time.monotonic()
        if self.render and not self.done(step):
            self._render(step)
        accelerator.wait_for_everyone()
        elapsed = time.monotonic() - started
        self.seconds += elapsed
        return elapsed

    def summary(self) -> dict[str, Any] | None:
        return summary_block(read_index(self.directory.parent)) if self.enabled else None

    def _pipeline(self) -> Any:
        if self._pipe is None:
            from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

            c = self.components
            self._pipe = StableDiffusionXLPipeline(
                vae=c.vae,
                text_encoder=c.text_encoder,
                text_encoder_2=c.text_encoder_2,
                tokenizer=c.tokenizer,
                tokenizer_2=c.tokenizer_2,
                unet=self.unet,
                scheduler=EulerDiscreteScheduler.from_config(c.noise_scheduler.config),
                add_watermarker=False,
            )
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def _render(self, step: int) -> None:
        started = time.monotonic()
        c = self.components
        modules = [self.unet, c.vae, c.text_encoder, c.text_encoder_2]
        modes = [module.training for module in modules]
        # On a GPU the VAE and text encoders may wait on the CPU (the latent cache made them idle).
        homes = [next(module.parameters()).device for module in modules[1:]]
        rng = RngState()
        try:
            for module in modules:
                module.eval()
            for module in modules[1:]:
                module.to(self.device)
            pipe = self._pipeline()
            images = [
                [self._image(pipe, prompt, seed) for seed in self.spec.seeds] for prompt in self.prompts
            ]
        finally:
            for module, home in zip(modules[1:], homes, strict=True):
                module.to(home)
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
            rng.restore()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.directory.mkdir(parents=True, exist_ok=True)
        name = image_name(step)
        staging = staging_path(self.directory / name, "tmp")
        make_grid(images, step, self.prompts, self.spec.seeds).save(staging, format="PNG")
        os.replace(staging, self.directory / name)
        self.rendered_step = step
        seconds = round(time.monotonic() - started, 3)
        passes = [entry for entry in read_index(self.directory.parent) if entry["step"] != step]
        passes.append(
            {
                "step": step,
                "image": name,
                "prompts": self.prompts,
                "seeds": self.spec.seeds,
                "width": self.width,
                "height": self.height,
                "steps": self.spec.steps,
                "guidance": self.spec.guidance,
                "seconds": seconds,
            }
        )
        passes.sort(key=lambda entry: entry["step"])
        write_text_atomically(self.directory / INDEX, json.dumps({"passes": passes}, indent=2) + "\n")
        log.info("validation samples of step %d: %s (%.1fs)", step, self.directory / name, seconds)

    @torch.no_grad()
    def _image(self, pipe: Any, prompt: str, seed: int) -> Any:
        """One image; the latents decoded by the fp32 VAE here (the UNet may run in bf16)."""
        latents = pipe(
            prompt=prompt,
            width=self.width,
            height=self.height,
            num_inference_steps=self.spec.steps,
            guidance_scale=self.spec.guidance,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type="latent",
        ).images
        vae = self.components.vae
        latents = latents.to(self.device, dtype=next(vae.parameters()).dtype)
        config = vae.config
        if (
            getattr(config, "latents_mean", None) is not None
            and getattr(config, "latents_std", None) is not None
        ):
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        decoded = vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")[0]
