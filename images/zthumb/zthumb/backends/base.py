"""The backend base class: loads a pipeline in ``__init__``, generates in ``generate``.

LoRA adapters: ``AdapterCache`` (``backends/adapters.py``), whose ``apply_adapters`` is the one
and only place where LoRA weights enter a pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from zthumb.backends.adapters import AdapterCache
from zthumb.backends.compiled import CompiledUNet, configure_inductor_cache
from zthumb.backends.compiled_fused import FusedUNet
from zthumb.backends.compiled_slot import SlotUNet
from zthumb.backends.prompt_cache import MIB, PromptCache
from zthumb.backends.tiny_decoder import load_tiny_decoder, pipeline_output_type, to_images
from zthumb.errors import GenerationCancelledError, InvalidRequestError, ModelConfigError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from zthumb.settings import DecoderName, Settings

log = logging.getLogger("zthumb.backends")


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    decoder: DecoderName = "full"


def resolve_device(setting: str) -> torch.device:
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_sdxl_pipeline(
    path: Path | None,
    config_dir: Path | None,
    dtype: torch.dtype,
    *,
    env_name: str,
    **components: Any,
) -> Any:
    """SDXL from a diffusers directory or an original single-file checkpoint, offline."""
    from diffusers import StableDiffusionXLPipeline

    if path is None:
        raise ModelConfigError(f"{env_name} is not set")
    if not path.exists():
        raise ModelConfigError(f"{env_name}={path} does not exist")
    if path.is_dir():
        return StableDiffusionXLPipeline.from_pretrained(
            str(path), dtype=dtype, local_files_only=True, use_safetensors=True, **components
        )
    if path.suffix != ".safetensors":
        raise ModelConfigError(f"{env_name}={path}: only diffusers directories and .safetensors are loaded")
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, **components}
    if config_dir is not None:
        kwargs["config"] = str(config_dir)
    return StableDiffusionXLPipeline.from_single_file(str(path), **kwargs)


class Backend(AdapterCache):
    """One loaded SDXL pipeline plus its resident LoRA adapters."""

    name: ClassVar[str] = ""
    default_width: ClassVar[int] = 1024
    default_height: ClassVar[int] = 1024
    default_steps: ClassVar[int] = 30
    default_guidance_scale: ClassVar[float] = 6.0
    max_steps: ClassVar[int | None] = None
    fixed_guidance_scale: ClassVar[float | None] = None
    supports_lora: ClassVar[bool] = True
    supports_compile: ClassVar[bool] = True

    def __init__(self, settings: Settings, device: torch.device, dtype: torch.dtype) -> None:
        from compel import CompelForSDXL

        self.settings = settings
        self.device = device
        self.dtype = dtype
        started = time.perf_counter()
        pipe = self.load_pipeline()
        pipe.set_progress_bar_config(disable=True)
        self.pipe: Any = pipe.to(device)
        self.tiny_decoder: Any | None = load_tiny_decoder(settings, device, dtype)
        self.compel = CompelForSDXL(self.pipe, device=str(device))
        self.prompt_cache = PromptCache(settings.prompt_cache_entries, settings.prompt_cache_mb * MIB)
        self._init_adapters()
        self.unet_weight_bytes = self.weight_bytes()
        self.compiled: CompiledUNet | None = None
        if settings.compile != "off":
            if self.supports_compile:
                self.compiled = self._compile()
            else:
                log.warning("ZTHUMB_COMPILE is ignored for backend %s: it runs eagerly", self.name)
        self.load_seconds = time.perf_counter() - started
        log.info(
            "backend loaded",
            extra={
                "backend": self.name,
                "device": str(device),
                "dtype": str(dtype),
                "seconds": self.load_seconds,
            },
        )

    # --- loading --------------------------------------------------------------------------
    def load_pipeline(self) -> Any:
        raise NotImplementedError

    def _compile(self) -> CompiledUNet:
        """``ZTHUMB_COMPILE``: the adapter strategy (``ZTHUMB_COMPILE_LORA``), ``torch.compile`` of
        the UNet, warm-up with the backend's default request (every backend that supports compile:
        full, turbo). That request fixes the compiled shapes: the default size, one image, and
        CFG as the backend's guidance says (full: on, a UNet batch of 2; turbo: off, a batch of 1).
        The step count changes no UNet input, so at most 2 warm-up steps cover any count."""
        s = self.settings
        compiled: CompiledUNet
        if s.compile_lora == "fuse":
            compiled = FusedUNet(self.pipe, mode=s.compile, max_adapters=s.max_loras_per_request)
        else:
            compiled = SlotUNet(
                self.pipe,
                mode=s.compile,
                max_rank=s.compile_max_rank,
                target_modules=s.compile_target_modules,
            )
        compiled.cache_dir = configure_inductor_cache(s.compile_cache_dir)
        prepared = compiled.prepare()
        compiled.compile()
        defaults = self.defaults()
        warm = GenerationParams(
            "warm-up",
            None,
            int(defaults["width"]),
            int(defaults["height"]),
            min(2, int(defaults["steps"])),
            float(defaults["guidance_scale"]),
            seed=0,
            num_images=1,
        )
        compiled.warm_up(lambda: self.generate(warm))
        log.info(
            "UNet compiled and warmed up",
            extra={
                "backend": self.name,
                "mode": s.compile,
                "lora": compiled.strategy,
                **prepared,
                "fullgraph": compiled.fullgraph,
                "compile_seconds": round(compiled.compile_seconds, 1),
                "cache_dir": compiled.cache_dir,
            },
        )
        return compiled

    @property
    def model_description(self) -> str | None:
        return None

    def defaults(self) -> dict[str, float | int]:
        s = self.settings
        return {
            "width": s.default_width or self.default_width,
            "height": s.default_height or self.default_height,
            "steps": s.default_steps or self.default_steps,
            "guidance_scale": (
                self.fixed_guidance_scale
                if self.fixed_guidance_scale is not None
                else (
                    s.default_guidance_scale
                    if s.default_guidance_scale is not None
                    else self.default_guidance_scale
                )
            ),
        }

    def weight_bytes(self) -> dict[str, int]:
        """UNet weight memory, and for quantized layers their bytes and their fp32 bytes."""
        from diffusers.quantizers.gguf.utils import GGUFParameter

        total = quantized = quantized_fp32 = 0
        for param in self.pipe.unet.parameters():
            nbytes = param.numel() * param.element_size()
            total += nbytes
            if isinstance(param, GGUFParameter):
                quantized += nbytes
                shape = getattr(param, "quant_shape", param.shape)
                count = 1
                for dim in shape:
                    count *= int(dim)
                quantized_fp32 += count * 4
        return {"unet": total, "quantized": quantized, "quantized_fp32": quantized_fp32}

    # --- generation --------------------------------------------------------------------------
    def encode_prompt(self, params: GenerationParams) -> Any:
        """compel's conditioning for the prompt and negative prompt, from the prompt cache if it is there.

        The key is everything the text encoders' output depends on: this backend's model, the
        prompt and negative prompt as written (compel parses them the same way every time), and
        the active adapters that have text-encoder layers with their scales. The encoders' options
        (penultimate hidden states, no truncation: ``CompelForSDXL``'s) and the device and dtype
        are fixed for the backend's life; the server has no clip-skip or other per-request option.
        """
        key = (
            self.name,
            self.model_description,
            params.prompt,
            params.negative_prompt or None,
            self.text_encoder_adapters(),
        )
        return self.prompt_cache.get_or_encode(key, lambda: self.encode_uncached(params))

    def encode_uncached(self, params: GenerationParams) -> Any:
        """compel's conditioning for the (weighted) prompt and negative prompt; 422 when unparsable."""
        import torch

        with torch.inference_mode():
            try:
                return self.compel(params.prompt, negative_prompt=params.negative_prompt or None)
            except Exception as exc:
                raise InvalidRequestError(
                    f"the prompt could not be parsed: {exc}", field="prompt", code="invalid_prompt"
                ) from exc

    def generate(self, params: GenerationParams, cancel: threading.Event | None = None) -> list[Image]:
        """Run the pipeline; compel encodes the (weighted) prompt and negative prompt."""
        import torch

        cond = self.encode_prompt(params)
        generator = torch.Generator("cpu").manual_seed(params.seed)

        def on_step_end(
            _pipe: Any, _step: int, _timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelledError("generation cancelled")
            return callback_kwargs

        result = self.pipe(
            prompt_embeds=cond.embeds,
            pooled_prompt_embeds=cond.pooled_embeds,
            negative_prompt_embeds=cond.negative_embeds,
            negative_pooled_prompt_embeds=cond.negative_pooled_embeds,
            width=params.width,
            height=params.height,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance_scale,
            num_images_per_prompt=params.num_images,
            generator=generator,
            callback_on_step_end=on_step_end,
            output_type=pipeline_output_type(params.decoder),
        )
        return to_images(self.pipe, self.tiny_decoder, result.images, params.decoder)
