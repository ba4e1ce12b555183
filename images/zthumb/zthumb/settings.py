"""Server configuration: every knob is an environment variable (prefix ``ZTHUMB_``).

The env-default adapter is read from ``Z_LORA_PATH`` / ``Z_LORA_SCALE`` (what the operator
patches into the Deployment) with the aliases ``ZTHUMB_LORA_PATH`` / ``ZTHUMB_LORA_SCALE``;
when both spellings are set the ``Z_`` names win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The backends, declared once: the registry (zthumb.backends) and the chart's values.schema.json
# are kept in step with this by a unit test.
BackendName = Literal["full", "turbo", "gguf"]
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)
# What turns latents into pixels: the model's own VAE, or the tiny autoencoder (TAESD-XL,
# zthumb.backends.tiny_decoder). The request field and the chart's schema derive from this.
DecoderName = Literal["full", "tiny"]
DECODER_NAMES: tuple[str, ...] = get_args(DecoderName)
TINY_DECODER_MAX_BYTES = 1024**3  # the most ZTHUMB_TINY_DECODER_MAX_BYTES may allow


class Settings(BaseSettings):
    """All runtime settings of the inference server."""

    model_config = SettingsConfigDict(
        env_prefix="ZTHUMB_",
        populate_by_name=True,
        protected_namespaces=(),
        extra="ignore",
    )

    # --- backends and models -------------------------------------------------------------
    backend: BackendName = Field(default="full", description="Default backend for requests that name none.")
    enabled_backends: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma list of backends to load; empty means just the default backend.",
    )
    model_path: Path | None = Field(
        default=None, description="full/gguf: diffusers directory or single-file .safetensors checkpoint."
    )
    model_config_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ZTHUMB_MODEL_CONFIG", "model_config_dir"),
        description="Diffusers config directory used to load single-file checkpoints offline.",
    )
    turbo_model_path: Path | None = Field(default=None, description="turbo: diffusers dir or single file.")
    turbo_model_config_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("ZTHUMB_TURBO_MODEL_CONFIG", "turbo_model_config_dir"),
        description="Config directory for a single-file turbo checkpoint.",
    )
    gguf_unet_path: Path | None = Field(default=None, description="gguf: the UNet as a .gguf file.")
    decoder: DecoderName = Field(
        default="full", description="Decoder for requests that name none: full (the VAE) or tiny."
    )
    tiny_decoder_path: Path | None = Field(
        default=None,
        description="A diffusers AutoencoderTiny directory (TAESD-XL): diffusion_pytorch_model.safetensors "
        "and optionally config.json; unset: requests for decoder tiny are refused.",
    )
    tiny_decoder_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA256 of the tiny decoder's weights file; required with ZTHUMB_TINY_DECODER_PATH.",
    )
    tiny_decoder_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        le=TINY_DECODER_MAX_BYTES,
        description="Largest tiny-decoder weights file accepted (TAESD-XL's is about 10 MB).",
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"

    # --- LoRA --------------------------------------------------------------------------------
    lora_path: str | None = Field(
        default=None,
        validation_alias=AliasChoices("Z_LORA_PATH", "ZTHUMB_LORA_PATH", "lora_path"),
        description="Env-default adapter (relative to the LoRA root, or absolute inside it).",
    )
    lora_scale: float = Field(
        default=1.0,
        ge=0.0,
        le=2.0,
        validation_alias=AliasChoices("Z_LORA_SCALE", "ZTHUMB_LORA_SCALE", "lora_scale"),
    )
    lora_root: Path = Path("/models/lora")
    lora_cache_size: int = Field(default=8, ge=1, description="Per-request adapters kept loaded (LRU).")
    max_loras_per_request: int = Field(
        default=4, ge=1, le=32, description="Most adapters one request may combine (`loras`)."
    )

    # --- prompt embeddings (zthumb.backends.prompt_cache) ---------------------------------
    prompt_cache_entries: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Most encoded prompts (prompt + negative prompt) kept per backend (LRU).",
    )
    prompt_cache_mb: int = Field(
        default=256,
        ge=0,
        le=65536,
        description="Most MiB of prompt-embedding tensors kept per backend, on its device (LRU); "
        "0 turns the cache off.",
    )

    # --- compiled path (zthumb.backends.compiled) -----------------------------------------
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        default="off",
        description="torch.compile the UNet of the full and turbo backends at startup (a torch.compile "
        "mode; gguf stays eager); adapters then reach it without recompiling, as ZTHUMB_COMPILE_LORA says.",
    )
    compile_lora: Literal["fuse", "slot"] = Field(
        default="fuse",
        description="How adapters reach the compiled UNet: fuse (merged into its weights per request: "
        "the compiled base's speed, any rank, several per request) or slot (hot-swapped into one "
        "fixed-rank LoRA slot compiled into the graph: no copy of the base weights).",
    )
    compile_max_rank: int = Field(
        default=64, ge=1, le=1024, description="Rank of the compiled LoRA slot: larger adapters get a 422."
    )
    compile_target_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        description="Comma list of UNet modules the slot covers (the trainer's targets by default).",
    )
    compile_cache_dir: Path | None = Field(
        default=Path("/models/.cache/torchinductor"),
        description="TORCHINDUCTOR_CACHE_DIR for compiled artifacts, on the volume so restarts reuse "
        "them; empty keeps torch's default.",
    )

    # --- eval reports (zthumb.reports) ---------------------------------------------------------
    reports_dir: Path | None = Field(
        default=None,
        description="The eval reports (<data root>/outputs/lora_eval), served read-only as HTML pages "
        "under /reports behind the API key; unset: no report pages.",
    )

    # --- HTTP ----------------------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key every route needs but the health probes, the report login form and "
        "what ZTHUMB_PUBLIC_METRICS / ZTHUMB_PUBLIC_DOCS open; unset: no key.",
    )
    public_metrics: bool = Field(
        default=True, description="/metrics answers without the API key (for a Prometheus scraper)."
    )
    public_docs: bool = Field(
        default=False,
        description="The API docs (/docs, /redoc, /openapi.json) answer without the API key.",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="Largest request body in bytes; a larger one gets 413 without being buffered.",
    )
    host: str = "0.0.0.0"  # a container listens on all interfaces
    port: int = 8080
    max_queue: int = Field(default=8, ge=0, description="Requests allowed to wait behind the running one.")
    request_timeout_s: float = Field(default=600.0, gt=0)
    max_batch: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Most waiting requests that share one pipeline call (zthumb.batching.batch_key); "
        "1 turns batching off.",
    )
    batch_wait_ms: float = Field(
        default=2.0,
        ge=0.0,
        le=1000.0,
        description="How long the worker waits for batch-mates after taking a request; 0 batches "
        "only what is already queued.",
    )
    log_json: bool = False
    log_level: str = "INFO"
    gc_freeze: bool = Field(
        default=True,
        description="After loading, freeze the loaded objects for Python's cyclic collector "
        "(gc.freeze), so a full collection does not pause a request for the whole model graph.",
    )

    # --- request limits and defaults ----------------------------------------------------------
    min_size: int = Field(default=64, ge=8)
    max_size: int = Field(default=2048, ge=8)
    max_steps: int = Field(default=100, ge=1)
    max_num_images: int = Field(default=4, ge=1)
    max_prompt_chars: int = Field(default=2000, ge=1)
    default_width: int | None = Field(default=None, description="Overrides the backend's default width.")
    default_height: int | None = None
    default_steps: int | None = None
    default_guidance_scale: float | None = None

    @field_validator("enabled_backends", mode="before")
    @classmethod
    def _split_backends(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("compile_target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("compile_cache_dir", mode="before")
    @classmethod
    def _empty_cache_dir_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("reports_dir", "tiny_decoder_path", "tiny_decoder_sha256", mode="before")
    @classmethod
    def _empty_reports_dir_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("lora_path", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_backends(self) -> Settings:
        unknown = [name for name in self.enabled_backends if name not in BACKEND_NAMES]
        if unknown:
            raise ValueError(
                f"ZTHUMB_ENABLED_BACKENDS: unknown backend(s) {unknown}; choose from {list(BACKEND_NAMES)}"
            )
        if self.tiny_decoder_path is not None and self.tiny_decoder_sha256 is None:
            raise ValueError("ZTHUMB_TINY_DECODER_SHA256 is required with ZTHUMB_TINY_DECODER_PATH")
        if self.decoder == "tiny" and self.tiny_decoder_path is None:
            raise ValueError(
                "ZTHUMB_DECODER=tiny needs ZTHUMB_TINY_DECODER_PATH (the tiny decoder's weights)"
            )
        if self.min_size > self.max_size:
            raise ValueError("ZTHUMB_MIN_SIZE must not exceed ZTHUMB_MAX_SIZE")
        return self

    @property
    def backends(self) -> list[str]:
        """Enabled backends, the default first."""
        names = [self.backend, *self.enabled_backends]
        return list(dict.fromkeys(names))
