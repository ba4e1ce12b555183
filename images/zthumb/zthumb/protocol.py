"""Request and response models of the HTTP API (documented in images/zthumb/README.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from zthumb.settings import DecoderName

ImageFormat = Literal["png", "jpeg", "webp"]
MAX_SEED = 2**63 - 1


class LoraSpec(BaseModel):
    """One adapter of ``loras``: confined to the LoRA root like ``lora_path``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="Adapter relative to the LoRA root (or absolute inside it).")
    scale: float = Field(default=1.0, ge=0.0, le=2.0, description="Its weight; 0 leaves it out.")


class GenerateRequest(BaseModel):
    """``POST /generate``. Unknown fields are refused so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str = Field(min_length=1, description="Prompt; compel weighting syntax, e.g. `(red)1.3`.")
    negative_prompt: str | None = None
    width: int | None = Field(default=None, ge=8, multiple_of=8, description="Multiple of 8.")
    height: int | None = Field(default=None, ge=8, multiple_of=8, description="Multiple of 8.")
    steps: int | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("steps", "num_inference_steps")
    )
    guidance_scale: float | None = Field(default=None, ge=0.0, le=30.0)
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Random when omitted; always returned."
    )
    num_images: int = Field(
        default=1, ge=1, validation_alias=AliasChoices("num_images", "num_images_per_prompt")
    )
    backend: str | None = Field(
        default=None, description="One of the enabled backends; default ZTHUMB_BACKEND."
    )
    lora_path: str | None = Field(
        default=None,
        description="Adapter relative to the LoRA root (or absolute inside it); default: env adapter.",
    )
    lora_scale: float | None = Field(
        default=None, ge=0.0, le=2.0, description="0 gives the output without adapter."
    )
    loras: list[LoraSpec] | None = Field(
        default=None,
        description="Several adapters at once, combined with their scales (at most "
        "ZTHUMB_MAX_LORAS_PER_REQUEST, no duplicates); not together with lora_path/lora_scale. "
        "An empty list means no adapter (not even the env default).",
    )
    decoder: DecoderName | None = Field(
        default=None,
        description="full: the model's VAE; tiny: the tiny autoencoder (TAESD-XL), faster and a little "
        "softer, where the server has its weights. Default: ZTHUMB_DECODER.",
    )
    output_format: ImageFormat = Field(
        default="png", validation_alias=AliasChoices("output_format", "format")
    )
    response_format: Literal["json", "bytes"] = Field(
        default="json", description="json: base64 images; bytes: the raw image (num_images must be 1)."
    )


class ImageOut(BaseModel):
    index: int
    mime_type: str
    data: str = Field(description="base64-encoded image")


class AdapterUsed(BaseModel):
    path: str
    scale: float
    sha256: str
    source: Literal["request", "default"]
    rank: int | None = Field(default=None, description="LoRA rank, once the adapter is resident.")


class Timings(BaseModel):
    queue_s: float
    adapter_s: float
    generate_s: float
    encode_s: float
    total_s: float


class GenerateResponse(BaseModel):
    images: list[ImageOut]
    format: ImageFormat
    seed: int
    backend: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    decoder: DecoderName = Field(description="What decoded the latents: full (the VAE) or tiny.")
    adapter: AdapterUsed | None = Field(description="The first of `adapters` (the single-adapter API).")
    adapters: list[AdapterUsed] = Field(
        description="Every adapter applied, with its scale, in request order."
    )
    timings: Timings


class BackendInfo(BaseModel):
    name: str
    model: str | None
    loaded: bool
    default: bool
    device: str | None
    dtype: str | None
    error: str | None = None
    supports_lora: bool = True
    decoders: list[DecoderName] = Field(
        default_factory=list, description="The decoders a request may name on this backend."
    )
    unet_weight_bytes: int | None = None
    quantized_weight_bytes: int | None = Field(
        default=None, description="Bytes of the quantized (GGUF) UNet weights as stored in memory."
    )
    quantized_weight_fp32_bytes: int | None = Field(
        default=None, description="What those quantized weights would take in fp32."
    )
    defaults: dict[str, float | int] = Field(default_factory=dict)


class CachedAdapter(BaseModel):
    backend: str
    path: str
    sha256: str
    rank: int | None
    adapter_name: str
    pinned: bool
    active: bool = Field(description="Applied by the last generation on this backend.")


class ModelsResponse(BaseModel):
    backends: list[BackendInfo]
    default_backend: str
    lora_loaded: bool
    lora_path: str | None
    lora_scale: float
    lora_sha256: str | None
    lora_error: str | None
    lora_root: str
    lora_cache_size: int
    cached_adapters: list[CachedAdapter]


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    status: str
    default_backend: str
    backend_loaded: bool
    lora_path: str | None
    lora_loaded: bool
    error: str | None = None


# --- OpenAI-compatible images API (``POST /v1/images/generations``) ------------------------------


class OpenAIImageRequest(BaseModel):
    """OpenAI's image generation request plus ZThumb's extensions (seed, steps, …, loras).

    ``quality``, ``style`` and ``user`` are accepted and ignored, so stock clients work.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    model: str | None = Field(
        default=None, description="An enabled backend's name selects it; any other value is ignored."
    )
    n: int = Field(default=1, ge=1, description="Number of images (at most ZTHUMB_MAX_NUM_IMAGES).")
    size: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,5}x[0-9]{1,5}$",
        description="`WIDTHxHEIGHT`; backend default if omitted.",
    )
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json", description="Only b64_json: the server keeps no images to link to."
    )
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    # ZThumb extensions.
    negative_prompt: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=30.0)
    loras: list[LoraSpec] | None = None
    decoder: DecoderName | None = None


class OpenAIImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
