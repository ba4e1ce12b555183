"""A tiny SDXL-architecture pipeline with random weights, built offline from config.

Tests and the local demo never download weights. This module builds the same
component classes as SDXL base 1.0 (two CLIP text encoders, the second with a
projection; a UNet with ``addition_embed_type="text_time"``; a VAE; an Euler
scheduler) at a size that runs a 64x64 image in a fraction of a second on a CPU,
and writes it in the three layouts the product has to load:

* a diffusers directory (``model_index.json`` plus one folder per component);
* a single-file ``.safetensors`` checkpoint in the original SGM/LDM key layout,
  like ``sd_xl_base_1.0.safetensors``; the diffusers directory doubles as the
  offline ``config=`` that ``from_single_file`` needs;
* an SDXL-Turbo flavoured copy (same weights, trailing-timestep Euler ancestral).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zthumb_trainer.tiny import ldm_layout

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLPipeline

# What the built files depend on besides the seed: this module (the configs, the scheduler, the
# text encoders, the tokenizer), the single-file conversion, and the packages that build and write
# the components. A change to any of them rebuilds a cached model.
BUILDER_SOURCES = (Path(__file__), Path(ldm_layout.__file__))
BUILDER_PACKAGES = ("torch", "diffusers", "transformers", "safetensors")

# The second encoder is deliberately wider than the first: diffusers' single-file
# loader tells the two CLIP encoders apart by their embedding width.
TEXT_ENCODER_DIM = 32
TEXT_ENCODER_2_DIM = 48
TIME_EMBED_DIM = 8
TOKENIZER_MAX_LENGTH = 77

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": [2, 4],
    "transformer_layers_per_block": [1, 1],
    "use_linear_projection": True,
    "cross_attention_dim": TEXT_ENCODER_DIM + TEXT_ENCODER_2_DIM,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED_DIM,
    # 6 micro-conditioning numbers (original size, crop, target size) + pooled text.
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + TEXT_ENCODER_2_DIM,
    "norm_num_groups": 8,
}

VAE_CONFIG: dict[str, Any] = {
    # Four levels, like SDXL's VAE: images are 8x the latent size (64 px -> 8x8 latents).
    "block_out_channels": [8, 16, 16, 16],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.13025,
    "force_upcast": False,
}

# SDXL base 1.0's own scheduler configuration (hack/gpu/sdxl_configs.py reuses it).
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}

TURBO_SCHEDULER_CONFIG: dict[str, Any] = {
    key: value
    for key, value in SCHEDULER_CONFIG.items()
    if key not in {"interpolation_type", "use_karras_sigmas"}
} | {"timestep_spacing": "trailing"}

SINGLE_FILE_NAME = "tiny_sdxl.safetensors"


def _text_encoder_config(hidden: int, projection: bool) -> dict[str, Any]:
    config = {
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 1,
        "vocab_size": _vocab_size(),
        "max_position_embeddings": TOKENIZER_MAX_LENGTH,
        "hidden_act": "gelu",
    }
    if projection:
        # diffusers' single-file loader splits OpenCLIP's fused qkv by the projection
        # width, so it must equal the hidden size (as it does in SDXL: 1280/1280).
        config["projection_dim"] = hidden
    return config


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP byte-to-unicode alphabet: the 256 symbols byte-level BPE starts from."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def _vocab() -> dict[str, int]:
    """A character-level CLIP vocabulary: every byte symbol, alone and word-final."""
    symbols = _byte_alphabet()
    tokens = ["<|startoftext|>", "<|endoftext|>", "!"] + [s for s in symbols if s != "!"]
    tokens += [s + "</w>" for s in symbols]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def _vocab_size() -> int:
    return len(_vocab())


def write_tokenizer(directory: Path) -> None:
    """Write an offline CLIP tokenizer (no merges: words split into characters)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "!",
            }
        )
    )
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": TOKENIZER_MAX_LENGTH,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "!",
                "do_lower_case": True,
            }
        )
    )


def build_pipeline(seed: int = 0, turbo: bool = False) -> StableDiffusionXLPipeline:
    """Build the tiny pipeline in memory, deterministically for ``seed``."""
    import tempfile

    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_encoder_config(TEXT_ENCODER_DIM, False)))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(**_text_encoder_config(TEXT_ENCODER_2_DIM, True))
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tmp)
    scheduler: Any = (
        EulerAncestralDiscreteScheduler(**TURBO_SCHEDULER_CONFIG)
        if turbo
        else EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


@dataclass(frozen=True)
class TinyModel:
    """Paths of one built tiny model."""

    root: Path

    @property
    def diffusers_dir(self) -> Path:
        return self.root / "diffusers"

    @property
    def single_file(self) -> Path:
        return self.root / SINGLE_FILE_NAME

    @property
    def turbo_dir(self) -> Path:
        return self.root / "turbo"

    @property
    def complete_marker(self) -> Path:
        return self.root / ".complete"


def builder_stamp(seed: int, sources: Sequence[Path], packages: Sequence[str]) -> str:
    """What a complete build records: the seed, the SHA-256 of the builder's source files and the
    versions of the packages it builds with; a cached build is reused only while they all match."""
    return json.dumps(
        {
            "seed": seed,
            "sources": {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sources},
            "packages": {name: metadata.version(name) for name in packages},
        },
        sort_keys=True,
    )


def marker_name(name: str) -> str:
    """The file that marks a complete tiny build of NAME, beside it; it holds the builder's stamp."""
    return f".{name}.complete"


def staged_build(root: Path, name: str, stamp: str) -> Path | None:
    """An empty staging folder for a fresh build of NAME under ROOT, or None while ROOT holds a
    complete one with this stamp (its marker, written last by ``publish_build``)."""
    marker = root / marker_name(name)
    if marker.exists() and marker.read_text() == stamp:
        return None
    staging = root / f".{name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_build(root: Path, name: str, staging: Path, entries: Sequence[str], stamp: str) -> None:
    """Move ENTRIES from STAGING into ROOT over what is there, then record the stamp: a build
    stopped half-way has no stamp and is made again."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = root / entry
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        (staging / entry).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    (root / marker_name(name)).write_text(stamp)


def build_tiny_model(root: Path, seed: int = 0, force: bool = False) -> TinyModel:
    """Write the diffusers dir, the single-file checkpoint and the turbo copy under ``root``.

    Reuses an earlier build of the same ``builder_stamp``; writes to a temporary sibling and renames,
    so concurrent test sessions never see half a model.
    """
    from safetensors.torch import save_file

    model = TinyModel(root)
    stamp = builder_stamp(seed, BUILDER_SOURCES, BUILDER_PACKAGES)
    if not force and model.complete_marker.exists() and model.complete_marker.read_text() == stamp:
        return model

    staging = root.with_name(root.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pipe: Any = build_pipeline(seed)
    pipe.save_pretrained(staging / "diffusers", safe_serialization=True)
    save_file(ldm_layout.to_single_file_state_dict(pipe), str(staging / SINGLE_FILE_NAME))
    turbo: Any = build_pipeline(seed, turbo=True)
    turbo.save_pretrained(staging / "turbo", safe_serialization=True)
    (staging / ".complete").write_text(stamp)

    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(root)
    return model
