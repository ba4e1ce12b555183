"""``spec.dataset``: where the training images come from and how they are prepared (the
prepare-dataset step; images/trainer/DATASETS.md); ``zthumb_contract.spec`` nests ``DatasetSpec``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from zthumb_contract.spec_base import MAX_DOWNLOAD_BYTES, SecretKeyRef, SpecModel
from zthumb_contract.volume_areas import on_volume

# A dataset archive may hold what ``dataset_sources.Limits`` lets it unpack (50 GiB).
DATASET_ARCHIVE_MAX_BYTES = 50 * 2**30
# The most images ``holdout`` may name as a count; the holdout loss looks at a bounded few of them.
HOLDOUT_MAX = 10_000

S3_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"

# Where the captioning model (``spec.dataset.captioning``) lives on the volume by default.
CAPTIONER_PATH = "models/captioner.safetensors"
CAPTIONER_CONFIG_PATH = "models/captioner-config"
# The default leaves room for BLIP large's weights (at most 1 TiB may be set, as for every download).
CAPTIONER_MAX_BYTES = 4 * 2**30
# Bounds of one caption and of one batch: the prepare step runs on a CPU with 4 GiB.
CAPTION_MAX_NEW_TOKENS = 128
CAPTION_BATCH_MAX = 64
CAPTION_PROMPT_MAX_LENGTH = 200


class HttpDatasetSource(SpecModel):
    """A zip or tar archive (gzip, bzip2 or xz compressed, or not) over HTTP(S), verified before it
    is unpacked."""

    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Sent as ``Authorization: Bearer`` to the URL's origin only (env ZTHUMB_DATASET_TOKEN).
    token_secret_ref: SecretKeyRef | None = None
    max_bytes: int = Field(DATASET_ARCHIVE_MAX_BYTES, ge=1, le=MAX_DOWNLOAD_BYTES)
    allow_insecure_http: bool = False


class S3Credentials(SpecModel):
    name: str
    access_key_id_key: str = "accessKeyId"
    secret_access_key_key: str = "secretAccessKey"


class S3DatasetSource(SpecModel):
    """Every object under ``prefix`` of an S3 (or S3-compatible) bucket."""

    bucket: str = Field(pattern=S3_BUCKET)
    prefix: str = ""
    # Unset: AWS. An S3-compatible server: its URL (MinIO, Ceph, versitygw, ...).
    endpoint: str | None = None
    region: str = "us-east-1"
    # Unset: anonymous requests (a public bucket).
    credentials_secret_ref: S3Credentials | None = None


class DatasetSourceSpec(SpecModel):
    """Where the dataset comes from: the volume (``spec.dataset.path``, nothing set), an HTTP(S)
    archive, or an S3 bucket prefix. A remote one is fetched by the prepare step into
    ``datasets/cache/<content hash>/`` on the volume (``RunPaths.dataset_cache``) and reused while
    its content is the same."""

    http: HttpDatasetSource | None = None
    s3: S3DatasetSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSourceSpec:
        if self.http is not None and self.s3 is not None:
            raise ValueError("dataset.source: set http or s3, not both")
        return self

    @property
    def remote(self) -> bool:
        return self.http is not None or self.s3 is not None


class CaptioningSpec(SpecModel):
    """Captions written by an image-captioning model in the prepare step (a transformers
    ``BlipForConditionalGeneration``: weights in one safetensors file, fetched and SHA256-verified
    like the base model and cached on the volume). Off by default: nothing is captioned."""

    enabled: bool = False
    # ``missing``: only images without a caption; ``all``: every image (its own caption replaced).
    mode: Literal["missing", "all"] = "missing"
    # No default model: its URL, SHA256 and config URL are required when enabled (the spec's and the
    # CRD's rule), so that what captions the data is always a file someone pinned.
    url: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    path: Annotated[str, on_volume("dataset.captioning.path")] = CAPTIONER_PATH
    config_url: str | None = None
    config_path: Annotated[str, on_volume("dataset.captioning.configPath")] = CAPTIONER_CONFIG_PATH
    token_secret_ref: SecretKeyRef | None = None
    max_bytes: int = Field(CAPTIONER_MAX_BYTES, ge=1, le=MAX_DOWNLOAD_BYTES)
    allow_insecure_http: bool = False
    # Generation is greedy (the same weights caption the same image the same way) and bounded.
    max_new_tokens: int = Field(40, ge=1, le=CAPTION_MAX_NEW_TOKENS)
    batch_size: int = Field(8, ge=1, le=CAPTION_BATCH_MAX)
    # BLIP's conditional captioning: the caption continues this text (e.g. "a photography of").
    prompt: str = Field("", max_length=CAPTION_PROMPT_MAX_LENGTH)

    @model_validator(mode="after")
    def _a_pinned_model_when_enabled(self) -> CaptioningSpec:
        # The CRD's CEL rules on spec.dataset.captioning say the same.
        if self.enabled:
            for name, alias in (("url", "url"), ("sha256", "sha256"), ("config_url", "configUrl")):
                if getattr(self, name) is None:
                    raise ValueError(
                        f"dataset.captioning.{alias} is required when dataset.captioning.enabled: the "
                        "captioning model is downloaded from url, verified by sha256, configured from "
                        "configUrl"
                    )
        return self


class DatasetSpec(SpecModel):
    # The dataset on the volume (a source of its own unless ``source`` names a remote one).
    path: Annotated[str, on_volume("dataset.path")] = "datasets/default"
    caption_format: Literal["txt", "jsonl"] = "txt"
    missing_caption: Literal["fail", "trigger"] = "fail"
    trigger_word: str = "zthumb"
    resolution: int = Field(1024, ge=256, le=2048, multiple_of=64)
    bucketing: bool = True
    # Images kept out of training to measure the denoising loss on (an overfitting signal): a
    # count (a whole number >= 1) or a fraction (below 1) of the usable images; 0: none.
    holdout: float = Field(0, ge=0, le=HOLDOUT_MAX)
    # One CLI option holding JSON (``--source '{"http": {...}}'``), as training.validation.
    source: DatasetSourceSpec = Field(default_factory=DatasetSourceSpec)
    # One CLI option holding JSON too (``--captioning '{"enabled": true, ...}'``).
    captioning: CaptioningSpec = Field(default_factory=CaptioningSpec)

    @field_validator("holdout")
    @classmethod
    def _a_count_or_a_fraction(cls, holdout: float) -> float:
        if holdout >= 1 and not holdout.is_integer():
            raise ValueError(
                f"dataset.holdout: {holdout} is neither a fraction (below 1) nor a count of images "
                "(a whole number)"
            )
        return holdout
