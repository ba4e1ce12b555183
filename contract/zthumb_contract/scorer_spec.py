"""The eval's scoring models besides CLIP (``spec.eval.dino``, ``spec.eval.aesthetic``): where their
weights come from, how they are verified and where they live on the volume. A module of its own so
that ``spec.py`` stays one screenful per section.

* DINO (the DreamBooth paper's subject-fidelity metric): a transformers ``Dinov2Model``, its
  config and image processor from a directory, its weights from one safetensors file; by default
  facebook/dinov2-small at a pinned revision.
* The aesthetic score: the LAION aesthetic predictor, an MLP head on the CLIP image embeddings the
  eval already computes. Its published weights are a pickle, which the eval never loads: the user
  converts them to safetensors once and pins that file's SHA256 (images/trainer/README.md), so
  there is no default to ship and turning it on needs ``url`` and ``sha256``.

Neither takes a token: both are public weights (a gated mirror is not supported, so the eval's
``HF_TOKEN`` for spec.eval.clip never goes to another host).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from zthumb_contract.spec_base import MAX_DOWNLOAD_BYTES, SpecModel
from zthumb_contract.volume_areas import on_volume

# facebook/dinov2-small (ViT-S/14, 22 M parameters, 88 MB in fp32), Apache-2.0, pinned to one revision.
DINO_REVISION = "ed25f3a31f01632728cabb09d1542f84ab7b0056"
DINO_URL = f"https://huggingface.co/facebook/dinov2-small/resolve/{DINO_REVISION}/model.safetensors"
DINO_SHA256 = "ae1e99fcefd534ed978cdeb8326f08030c96e28b7a81ffcbc98a857c84d14be1"
DINO_PATH = "models/dinov2-small.safetensors"
DINO_CONFIG_URL = f"https://huggingface.co/facebook/dinov2-small/resolve/{DINO_REVISION}/"
DINO_CONFIG_PATH = "models/dinov2-small-config"
# Room above dinov2-small and -base (346 MB); dinov2-large (1.2 GB) needs a larger maxBytes.
DINO_MAX_BYTES = 2**30
AESTHETIC_PATH = "models/laion-aesthetic-vit-l-14.safetensors"
# The LAION head for ViT-L/14 is 3.7 MB in fp32: anything near this limit is not that head.
AESTHETIC_MAX_BYTES = 64 * 2**20
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class DinoSpec(SpecModel):
    """DINO similarity of the generated images to the training images (DreamBooth's DINO metric),
    per scale. Off by default: it downloads a second model."""

    enabled: bool = False
    url: str = DINO_URL
    sha256: str = Field(DINO_SHA256, pattern=SHA256_PATTERN)
    path: Annotated[str, on_volume("eval.dino.path")] = DINO_PATH
    config_url: str = DINO_CONFIG_URL
    config_path: Annotated[str, on_volume("eval.dino.configPath")] = DINO_CONFIG_PATH
    max_bytes: int = Field(DINO_MAX_BYTES, ge=1, le=MAX_DOWNLOAD_BYTES)
    allow_insecure_http: bool = False
    # Training images DINO compares with (evenly spread over the prepared dataset).
    max_training_images: int = Field(64, ge=1, le=1024)


class AestheticSpec(SpecModel):
    """The LAION aesthetic predictor's score (about 1-10, higher is better) of each generated image,
    per scale; a head on spec.eval.clip's image embeddings, so it needs the ViT-L/14 CLIP."""

    enabled: bool = False
    url: str | None = Field(None, max_length=2048)
    sha256: str | None = Field(None, pattern=SHA256_PATTERN)
    path: Annotated[str, on_volume("eval.aesthetic.path")] = AESTHETIC_PATH
    max_bytes: int = Field(AESTHETIC_MAX_BYTES, ge=1, le=MAX_DOWNLOAD_BYTES)
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _pinned_weights_when_on(self) -> AestheticSpec:
        # The CRD's CEL rule on eval.aesthetic says the same.
        if self.enabled and (self.url is None or self.sha256 is None):
            raise ValueError(
                "eval.aesthetic.enabled needs eval.aesthetic.url and sha256: no default weights are "
                "shipped (convert the LAION head to safetensors and pin its SHA256, see the trainer README)"
            )
        return self
