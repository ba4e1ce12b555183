"""The backend base class: loads a pipeline in ``__init__``, generates in ``generate``.

``Backend.apply_adapter`` is the one and only place where LoRA weights enter a pipeline (through
``_load_adapter`` → ``_inject_lora``).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from zthumb.compiled import SlotError
from zthumb.errors import AdapterLoadError, GenerationCancelledError, InvalidRequestError, ZThumbError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from zthumb.compiled import CompiledUNet
    from zthumb.lora import AdapterRef
    from zthumb.settings import Settings

log = logging.getLogger("zthumb.backends")


class ModelConfigError(ZThumbError):
    """The backend's model paths are missing or unusable (a deployment problem)."""

    status = 503
    code = "backend_unavailable"


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


@dataclass(frozen=True)
class AdapterApplied:
    """What ``apply_adapter`` did: ``hit`` is None when no adapter is active."""

    active: bool
    hit: bool | None
    load_seconds: float
    evicted: int = 0
    adapter: AdapterRef | None = None


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


class Backend:
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
        self.compel = CompelForSDXL(self.pipe, device=str(device))
        # key (resolved file, sha256) -> adapter name inside the pipeline; LRU order.
        self._adapters: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._display: dict[tuple[str, str], str] = {}
        self._pinned: set[tuple[str, str]] = set()
        self._active: tuple[str, float] | None = None
        self._lora_enabled = False
        self._counter = 0
        self.adapter_loads = 0
        self._lock = threading.RLock()
        self._layers: list[Any] | None = None
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
        """``ZTHUMB_COMPILE``: the LoRA slot, ``torch.compile`` of the UNet, one warm-up generation."""
        from zthumb.compiled import CompiledUNet, configure_inductor_cache

        s = self.settings
        compiled = CompiledUNet(
            self.pipe, mode=s.compile, max_rank=s.compile_max_rank, target_modules=s.compile_target_modules
        )
        compiled.cache_dir = configure_inductor_cache(s.compile_cache_dir)
        layers = compiled.install_slot()
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
                "slot_rank": s.compile_max_rank,
                "slot_layers": layers,
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

    # --- LoRA: the only injection point ------------------------------------------------------
    def apply_adapter(self, adapter: AdapterRef | None, scale: float, *, pin: bool = False) -> AdapterApplied:
        """Make ``adapter`` at ``scale`` the only active LoRA, or none at all.

        ``None`` or ``scale == 0`` disables LoRA layers entirely, so the output is bit-identical
        to the pipeline without adapters. Adapters stay resident in an LRU of
        ``ZTHUMB_LORA_CACHE_SIZE`` (pinned ones, the env default, do not count and are never
        evicted); switching to a resident adapter only flips PEFT's active adapter and scale.
        """
        with self._lock:
            return self._apply_adapter(adapter, scale, pin=pin)

    def _apply_adapter(self, adapter: AdapterRef | None, scale: float, *, pin: bool) -> AdapterApplied:
        if adapter is None or scale == 0:
            if self.compiled is not None:  # same compiled graph, slot scalings 0
                self.compiled.silence()
                self._active = None
                return AdapterApplied(active=False, hit=None, load_seconds=0.0)
            if self._lora_enabled:
                self.pipe.disable_lora()
                self._lora_enabled = False
            return AdapterApplied(active=False, hit=None, load_seconds=0.0)

        key = adapter.key
        name = self._adapters.get(key)
        hit = name is not None
        load_seconds = 0.0
        evicted = 0
        if name is None:
            started = time.perf_counter()
            name, adapter = self._load_adapter(adapter)
            load_seconds = time.perf_counter() - started
            key = adapter.key
            evicted = self._evict(keep=key)
        self._adapters.move_to_end(key)
        if pin:
            # A replaced default adapter: the old version loses its pin and leaves.
            for stale in [k for k in self._pinned if k[0] == key[0] and k != key]:
                self._pinned.discard(stale)
            self._pinned.add(key)
            evicted += self._evict(keep=key)
        if self._active != (name, scale):
            self._activate(name, scale)
            self._active = (name, scale)
        if not self._lora_enabled and self.compiled is None:
            self.pipe.enable_lora()
            self._lora_enabled = True
        return AdapterApplied(
            active=True, hit=hit, load_seconds=load_seconds, evicted=evicted, adapter=adapter
        )

    def _lora_layers(self) -> list[Any]:
        """The PEFT LoRA layers of every LoRA-capable component (cached until the next load)."""
        if self._layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            layers = []
            for component in ("unet", "text_encoder", "text_encoder_2"):
                model = getattr(self.pipe, component, None)
                if model is not None:
                    layers += [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
            self._layers = layers
        return self._layers

    def _activate(self, name: str, scale: float) -> None:
        """Same effect as ``pipe.set_adapters([name], [scale])`` for one adapter, one scale.

        diffusers' version walks every module of every component and toggles
        ``requires_grad`` (for training) on each LoRA weight; at inference only the active
        adapter and its scaling matter, so this walks a cached list of LoRA layers and sets
        exactly those (about 10x faster; a test checks it matches ``set_adapters``).
        """
        if self.compiled is not None:
            self.compiled.activate(name, scale)
            return
        for layer in self._lora_layers():
            layer._active_adapter = [name]
            layer.set_scale(name, scale)

    def _load_adapter(self, adapter: AdapterRef) -> tuple[str, AdapterRef]:
        weights = adapter.read()
        if weights.sha256 != adapter.sha256:  # replaced between the stat and the read: trust the bytes
            adapter = replace(adapter, sha256=weights.sha256)
        self._counter += 1
        name = f"zthumb_{self._counter}"
        try:
            with warnings.catch_warnings():
                # PEFT warns that a model holding adapters gets another one: that is the cache.
                warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters.*")
                self._inject_lora(weights.state_dict, weights.metadata, name)
        except SlotError as exc:
            self._drop_partial(name)
            raise AdapterLoadError(
                f"{adapter.display_path} cannot be served by the compiled UNet: {exc}",
                field="lora_path",
                code=exc.code,
            ) from exc
        except Exception as exc:
            self._drop_partial(name)
            raise AdapterLoadError(
                f"{adapter.display_path} is not a LoRA this SDXL pipeline can load: {exc}", field="lora_path"
            ) from exc
        self.adapter_loads += 1
        self._layers = None
        self._adapters[adapter.key] = name
        self._display[adapter.key] = adapter.display_path
        self._active = None  # loading activates the new adapter
        # The same path with an older sha256 is stale: drop it now.
        for stale in [k for k in self._adapters if k[0] == adapter.key[0] and k != adapter.key]:
            if stale not in self._pinned:
                self._delete(stale)
        log.info(
            "adapter loaded",
            extra={"backend": self.name, "lora_path": adapter.display_path, "sha256": adapter.sha256},
        )
        return name, adapter

    def _inject_lora(
        self, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None, name: str
    ) -> None:
        """``pipe.load_lora_weights(<the file>, adapter_name=name)`` from weights already read.

        Given a dict, ``load_lora_weights`` has no safetensors header to take diffusers' adapter
        metadata (the PEFT ``LoraConfig``: ``lora_alpha``, ``r``, … per component) from, and
        derives the config from the tensors alone: alpha = rank, so an adapter trained with
        alpha ≠ rank would be applied at the wrong strength. This makes the same public calls as
        ``StableDiffusionXLLoraLoaderMixin.load_lora_weights`` (diffusers 0.42), with the metadata
        parsed from the very bytes that were hashed (``AdapterFiles.read``) in place of the one
        ``lora_state_dict`` would read from a file. ``lora_state_dict`` still does the format
        work (kohya/A1111 conversion with their alphas as ``network_alphas``, DoRA filtering).
        """
        from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA

        pipe = self.pipe
        # A dict is copied, never modified in place (as load_lora_weights does).
        state_dict, network_alphas = pipe.lora_state_dict(dict(state_dict), unet_config=pipe.unet.config)
        if not all("lora" in key for key in state_dict):
            raise ValueError(
                "Invalid LoRA checkpoint. Make sure all LoRA param names contain `'lora'` substring."
            )
        if self.compiled is not None:
            self.compiled.load(state_dict, network_alphas, metadata, name)
            return
        common: dict[str, Any] = {
            "network_alphas": network_alphas,
            "adapter_name": name,
            "metadata": metadata,
            "_pipeline": pipe,
            "low_cpu_mem_usage": _LOW_CPU_MEM_USAGE_DEFAULT_LORA,
            "hotswap": False,
        }
        pipe.load_lora_into_unet(state_dict, unet=pipe.unet, **common)
        for text_encoder, prefix in (
            (pipe.text_encoder, pipe.text_encoder_name),
            (pipe.text_encoder_2, f"{pipe.text_encoder_name}_2"),
        ):
            pipe.load_lora_into_text_encoder(
                state_dict, text_encoder=text_encoder, prefix=prefix, lora_scale=pipe.lora_scale, **common
            )

    def _drop_partial(self, name: str) -> None:
        if self.compiled is not None:
            self.compiled.forget(name)
            self._active = None
            return
        try:
            if any(name in names for names in self.pipe.get_list_adapters().values()):
                self.pipe.delete_adapters([name])
        except Exception:  # pragma: no cover - best effort cleanup
            log.warning("could not clean up a partially loaded adapter", exc_info=True)
        self._active = None

    def _evict(self, keep: tuple[str, str]) -> int:
        evicted = 0
        unpinned = [k for k in self._adapters if k not in self._pinned]
        while len(unpinned) > self.settings.lora_cache_size:
            victim = next(k for k in unpinned if k != keep)
            self._delete(victim)
            unpinned.remove(victim)
            evicted += 1
        return evicted

    def _delete(self, key: tuple[str, str]) -> None:
        name = self._adapters.pop(key)
        self._display.pop(key, None)
        if self.compiled is not None:
            self.compiled.forget(name)
        else:
            self.pipe.delete_adapters([name])
        if self._active is not None and self._active[0] == name:
            self._active = None
        log.info("adapter evicted", extra={"backend": self.name, "sha256": key[1]})

    def cached_adapters(self) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._adapters.items())
        return [
            {
                "backend": self.name,
                "path": self._display.get(key, key[0]),
                "sha256": key[1],
                "adapter_name": name,
                "pinned": key in self._pinned,
            }
            for key, name in items
        ]

    def has_adapter(self, adapter: AdapterRef) -> bool:
        return adapter.key in self._adapters

    # --- generation --------------------------------------------------------------------------
    def generate(self, params: GenerationParams, cancel: threading.Event | None = None) -> list[Image]:
        """Run the pipeline; compel encodes the (weighted) prompt and negative prompt."""
        import torch

        with torch.inference_mode():
            try:
                cond = self.compel(params.prompt, negative_prompt=params.negative_prompt or None)
            except Exception as exc:
                raise InvalidRequestError(
                    f"the prompt could not be parsed: {exc}", field="prompt", code="invalid_prompt"
                ) from exc
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
            output_type="pil",
        )
        return list(result.images)
