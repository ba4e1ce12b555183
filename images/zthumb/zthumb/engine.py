"""The serving core, independent of HTTP: loads backends, validates requests, generates.

``prepare`` runs in a thread pool (cheap checks, adapter path resolution and fingerprinting:
errors come back before the request ever queues); ``execute`` runs on the device worker.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zthumb.adapter_requests import requested_adapters
from zthumb.backends import BACKENDS, AdapterApplied, AdapterUse, Backend, GenerationParams
from zthumb.backends.compiled import take_new_graphs
from zthumb.errors import BadRequestError, InvalidRequestError, NotReadyError, ZThumbError
from zthumb.lora import AdapterFiles, AdapterRef
from zthumb.metrics import Metrics, PromptCacheCounts
from zthumb.protocol import (
    BackendInfo,
    CachedAdapter,
    GenerateRequest,
    ModelsResponse,
    ReadyResponse,
)

if TYPE_CHECKING:
    from PIL.Image import Image

    from zthumb.settings import Settings

log = logging.getLogger("zthumb.engine")


class BackendUnavailableError(ZThumbError):
    status = 503
    code = "backend_unavailable"


@dataclass(frozen=True)
class Plan:
    backend: str
    params: GenerationParams
    adapters: tuple[AdapterUse, ...]  # in request order, scale-0 entries included (reported)
    adapter_source: str | None
    output_format: str
    response_format: str

    @property
    def adapter(self) -> AdapterRef | None:
        """The first adapter (the single-adapter API: ``lora_path``)."""
        return self.adapters[0].ref if self.adapters else None

    @property
    def scale(self) -> float:
        return self.adapters[0].scale if self.adapters else 0.0


@dataclass(frozen=True)
class AdapterOutcome:
    """One adapter of a finished generation: the file as loaded, its scale and its rank."""

    ref: AdapterRef
    scale: float
    rank: int | None


@dataclass(frozen=True)
class Result:
    plan: Plan
    images: list[Image]
    applied: AdapterApplied
    adapter_seconds: float
    generate_seconds: float
    adapters: tuple[AdapterOutcome, ...] = ()


class Engine:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        backends: dict[str, type[Backend]] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.metrics.prompt_caches.source = self.prompt_cache_counts
        self.registry = backends or BACKENDS
        self.files = AdapterFiles(settings.lora_root)
        self.backends: dict[str, Backend] = {}
        self.backend_errors: dict[str, str] = {}
        self.default_adapter: AdapterRef | None = None
        self.default_adapter_error: str | None = None
        self.ready = False
        self.loading_done = threading.Event()

    # --- startup ---------------------------------------------------------------------------
    def load_all(self, _cancel: threading.Event | None = None) -> None:
        """Load the default backend, its env-default adapter, then the other backends."""
        from zthumb.backends.base import resolve_device, resolve_dtype

        try:
            device = resolve_device(self.settings.device)
            dtype = resolve_dtype(self.settings.dtype, device)
            for name in self.settings.backends:
                self._load_backend(name, device, dtype)
                if name == self.settings.backend:
                    self._load_default_adapter()
                    self._update_ready()
        finally:
            self.loading_done.set()

    def _load_backend(self, name: str, device: Any, dtype: Any) -> None:
        try:
            backend = self.backends[name] = self.registry[name](self.settings, device, dtype)
            self.metrics.backend_loaded.labels(backend=name).set(1)
            if backend.compiled is not None:
                self.metrics.compile_seconds.labels(backend=name).set(backend.compiled.compile_seconds)
        except Exception as exc:
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self.backend_errors[name] = message
            log.exception("BACKEND %s FAILED TO LOAD: %s", name, message)

    def _load_default_adapter(self) -> None:
        path = self.settings.lora_path
        backend = self.backends.get(self.settings.backend)
        if not path or backend is None:
            return
        try:
            ref = self.files.ref(path)
            applied = backend.apply_adapter(ref, self.settings.lora_scale or 1.0, pin=True)
            backend.apply_adapter(None, 0.0)
            self.default_adapter = applied.adapter or ref
            self.metrics.adapter_loads.labels(backend=backend.name).inc()
            log.info(
                "env-default adapter loaded",
                extra={"lora_path": path, "lora_scale": self.settings.lora_scale, "sha256": ref.sha256},
            )
        except Exception as exc:
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self.default_adapter_error = message
            log.error(
                "ENV-DEFAULT ADAPTER Z_LORA_PATH=%s FAILED TO LOAD; THE SERVER STAYS NOT READY: %s",
                path,
                message,
            )

    def _update_ready(self) -> None:
        backend_ok = self.settings.backend in self.backends
        adapter_ok = not self.settings.lora_path or self.default_adapter is not None
        self.ready = backend_ok and adapter_ok
        self.metrics.ready.set(1 if self.ready else 0)
        if self.ready:
            log.info("ready", extra={"backend": self.settings.backend, "lora_path": self.settings.lora_path})

    def readiness(self) -> ReadyResponse:
        backend_ok = self.settings.backend in self.backends
        error = self.backend_errors.get(self.settings.backend) or self.default_adapter_error
        if self.ready:
            status = "ready"
        elif error:
            status = "failed"
        else:
            status = "loading"
        return ReadyResponse(
            ready=self.ready,
            status=status,
            default_backend=self.settings.backend,
            backend_loaded=backend_ok,
            lora_path=self.settings.lora_path,
            lora_loaded=self.default_adapter is not None,
            error=error,
        )

    # --- requests --------------------------------------------------------------------------
    def backend_for(self, requested: str | None) -> Backend:
        name = requested or self.settings.backend
        if name not in self.settings.backends:
            known = name in self.registry
            raise BadRequestError(
                f"backend {name!r} is {'not enabled' if known else 'unknown'}; "
                f"enabled: {', '.join(self.settings.backends)}",
                field="backend",
                code="backend_not_enabled" if known else "unknown_backend",
            )
        backend = self.backends.get(name)
        if backend is None:
            if name in self.backend_errors:
                raise BackendUnavailableError(f"backend {name!r} failed to load: {self.backend_errors[name]}")
            raise BackendUnavailableError(
                f"backend {name!r} is still loading", code="backend_loading", headers={"Retry-After": "10"}
            )
        return backend

    def prepare(self, request: GenerateRequest) -> Plan:
        """Validate a request against limits and backend rules; resolve its adapter."""
        s = self.settings
        if not self.ready:
            raise NotReadyError(
                self.readiness().error or "the model is still loading", headers={"Retry-After": "10"}
            )
        backend = self.backend_for(request.backend)
        defaults = backend.defaults()

        for name in ("prompt", "negative_prompt"):
            text = getattr(request, name)
            if text is not None and len(text) > s.max_prompt_chars:
                raise InvalidRequestError(
                    f"{name} has {len(text)} characters; the limit is {s.max_prompt_chars}", field=name
                )
        width = request.width or int(defaults["width"])
        height = request.height or int(defaults["height"])
        for name, value in (("width", width), ("height", height)):
            if not s.min_size <= value <= s.max_size or value % 8:
                raise InvalidRequestError(
                    f"{name} must be a multiple of 8 between {s.min_size} and {s.max_size}, got {value}",
                    field=name,
                )
        steps = request.steps or int(defaults["steps"])
        max_steps = min(s.max_steps, backend.max_steps or s.max_steps)
        if steps > max_steps:
            raise InvalidRequestError(
                f"steps must be at most {max_steps} for backend {backend.name!r}, got {steps}", field="steps"
            )
        guidance = request.guidance_scale
        if backend.fixed_guidance_scale is not None:
            if guidance is not None and guidance != backend.fixed_guidance_scale:
                raise InvalidRequestError(
                    f"backend {backend.name!r} runs without classifier-free guidance; "
                    f"guidance_scale must be {backend.fixed_guidance_scale:g} or omitted",
                    field="guidance_scale",
                )
            guidance = backend.fixed_guidance_scale
        if guidance is None:
            guidance = float(defaults["guidance_scale"])
        if request.num_images > s.max_num_images:
            raise InvalidRequestError(
                f"num_images must be at most {s.max_num_images}, got {request.num_images}", field="num_images"
            )
        if request.response_format == "bytes" and request.num_images != 1:
            raise InvalidRequestError(
                "response_format 'bytes' returns one image; use num_images 1 or response_format 'json'",
                field="response_format",
            )
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        decoder = request.decoder or s.decoder
        if decoder == "tiny" and backend.tiny_decoder is None:
            raise BadRequestError(
                "decoder 'tiny' is not available: this server has no tiny decoder weights "
                "(ZTHUMB_TINY_DECODER_PATH); use decoder 'full'",
                field="decoder",
                code="decoder_unavailable",
            )

        uses, source = requested_adapters(request, backend, self.files, s, self.default_adapter)
        return Plan(
            backend=backend.name,
            params=GenerationParams(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                width=width,
                height=height,
                steps=steps,
                guidance_scale=guidance,
                seed=seed,
                num_images=request.num_images,
                decoder=decoder,
            ),
            adapters=uses,
            adapter_source=source,
            output_format=request.output_format,
            response_format=request.response_format,
        )

    def activate(self, plan: Plan) -> tuple[AdapterApplied, float]:
        """Make the plan's adapters the active set (the one injection point); count it."""
        backend = self.backends[plan.backend]
        started = time.perf_counter()
        applied = backend.apply_adapters(plan.adapters)
        adapter_seconds = time.perf_counter() - started
        if applied.hits:
            self.metrics.adapter_hits.labels(backend=backend.name).inc(applied.hits)
        if applied.misses:
            self.metrics.adapter_misses.labels(backend=backend.name).inc(applied.misses)
            self.metrics.adapter_loads.labels(backend=backend.name).inc(applied.misses)
            self.metrics.adapter_load_seconds.labels(backend=backend.name).observe(applied.load_seconds)
        if applied.evicted:
            self.metrics.adapter_evictions.labels(backend=backend.name).inc(applied.evicted)
        if plan.adapter_source == "default" and applied.adapter is not None:
            self.default_adapter = applied.adapter
        return applied, adapter_seconds

    def adapter_outcomes(self, plan: Plan, applied: AdapterApplied) -> tuple[AdapterOutcome, ...]:
        """The sha256 reported is that of the bytes loaded (a file replaced since prepare)."""
        backend = self.backends[plan.backend]
        loaded = {ref.file: ref for ref in applied.adapters}
        return tuple(
            AdapterOutcome(
                loaded.get(use.ref.file, use.ref),
                use.scale,
                backend.adapter_rank(loaded.get(use.ref.file, use.ref)),
            )
            for use in plan.adapters
        )

    def execute(self, plan: Plan, cancel: threading.Event | None = None) -> Result:
        """On the device worker: activate the adapters, then generate (one request alone)."""
        backend = self.backends[plan.backend]
        applied, adapter_seconds = self.activate(plan)
        outcomes = self.adapter_outcomes(plan, applied)
        started = time.perf_counter()
        try:
            images = backend.generate(plan.params, cancel)
        finally:
            if backend.compiled is not None:
                self.metrics.compiled_requests.labels(backend=backend.name).inc()
                self.metrics.compile_recompiles.labels(backend=backend.name).inc(take_new_graphs())
        generate_seconds = time.perf_counter() - started
        self.metrics.generation_seconds.labels(backend=backend.name, decoder=plan.params.decoder).observe(
            generate_seconds
        )
        return Result(plan, images, applied, adapter_seconds, generate_seconds, outcomes)

    def prompt_cache_counts(self) -> dict[str, PromptCacheCounts]:
        """Each loaded backend's prompt-cache counts (``/metrics`` reads them when scraped)."""
        return {
            name: backend.prompt_cache.counts()
            for name, backend in list(self.backends.items())
            if isinstance(backend, Backend)
        }

    def models(self) -> ModelsResponse:
        infos = []
        for name in self.settings.backends:
            backend = self.backends.get(name)
            cls = self.registry[name]
            info = BackendInfo(
                name=name,
                model=None,
                loaded=backend is not None,
                default=name == self.settings.backend,
                device=None,
                dtype=None,
                error=self.backend_errors.get(name),
                supports_lora=cls.supports_lora,
            )
            if backend is not None:
                weights = backend.unet_weight_bytes
                info.model = backend.model_description
                info.device = str(backend.device)
                info.dtype = str(backend.dtype).removeprefix("torch.")
                info.unet_weight_bytes = weights["unet"]
                info.quantized_weight_bytes = weights["quantized"] or None
                info.quantized_weight_fp32_bytes = weights["quantized_fp32"] or None
                info.defaults = backend.defaults()
                info.decoders = ["full", "tiny"] if backend.tiny_decoder is not None else ["full"]
            infos.append(info)
        cached = [CachedAdapter(**entry) for b in self.backends.values() for entry in b.cached_adapters()]
        return ModelsResponse(
            backends=infos,
            default_backend=self.settings.backend,
            lora_loaded=self.default_adapter is not None,
            lora_path=self.settings.lora_path,
            lora_scale=self.settings.lora_scale,
            lora_sha256=self.default_adapter.sha256 if self.default_adapter else None,
            lora_error=self.default_adapter_error,
            lora_root=str(self.settings.lora_root),
            lora_cache_size=self.settings.lora_cache_size,
            cached_adapters=cached,
        )
