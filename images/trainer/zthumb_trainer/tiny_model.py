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

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionXLPipeline

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

# SDXL base 1.0's own scheduler configuration (hack/sdxl_configs.py reuses it).
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


# --- diffusers -> original SGM/LDM key layout ------------------------------------------------

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}

_VAE_RESNET_TO_LDM = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_TO_LDM = {
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "group_norm": "norm",
}


def _rename_resnet(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_key_to_ldm(key: str, config: dict[str, Any]) -> str:
    """Map one diffusers UNet key to its name in the original SDXL checkpoint."""
    fixed = _unet_fixed_map()
    if key in fixed:
        return fixed[key]

    layers = config["layers_per_block"]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":
            return f"input_blocks.{(layers + 1) * (block + 1)}.0.op.{rest.removeprefix('conv.')}"
        ldm_block = (layers + 1) * block + index + 1
        if kind == "resnets":
            return f"input_blocks.{ldm_block}.0.{_rename_resnet(rest, _RESNET_TO_LDM)}"
        return f"input_blocks.{ldm_block}.1.{rest}"
    if parts[0] == "up_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        has_attention = "CrossAttn" in config["up_block_types"][block]
        if kind == "upsamplers":
            slot = 2 if has_attention else 1
            return f"output_blocks.{(layers + 1) * block + layers}.{slot}.{rest}"
        ldm_block = (layers + 1) * block + index
        if kind == "resnets":
            return f"output_blocks.{ldm_block}.0.{_rename_resnet(rest, _RESNET_TO_LDM)}"
        return f"output_blocks.{ldm_block}.1.{rest}"
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_rename_resnet(rest, _RESNET_TO_LDM)}"
        return f"middle_block.1.{rest}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def _unet_fixed_map() -> dict[str, str]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    mapping: Any = DIFFUSERS_TO_LDM_MAPPING["unet"]
    return {**mapping["layers"], **mapping["addition_embed_type"]}


def vae_key_to_ldm(key: str, config: dict[str, Any]) -> str:
    """Map one diffusers VAE key to its name in the original checkpoint."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed: Any = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in fixed:
        return fixed[key]
    parts = key.split(".")
    coder = parts[0]
    if parts[1] == "mid_block":
        kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{coder}.mid.block_{index + 1}.{_rename_resnet(rest, _VAE_RESNET_TO_LDM)}"
        return f"{coder}.mid.attn_1.{_rename_resnet(rest, _VAE_ATTENTION_TO_LDM)}"
    if parts[1] == "down_blocks":
        block, kind, index, rest = int(parts[2]), parts[3], int(parts[4]), ".".join(parts[5:])
        if kind == "downsamplers":
            return f"encoder.down.{block}.downsample.{rest}"
        return f"encoder.down.{block}.block.{index}.{_rename_resnet(rest, _VAE_RESNET_TO_LDM)}"
    if parts[1] == "up_blocks":
        # The original decoder numbers its levels from the lowest resolution up.
        level = len(config["up_block_types"]) - 1 - int(parts[2])
        kind, index, rest = parts[3], int(parts[4]), ".".join(parts[5:])
        if kind == "upsamplers":
            return f"decoder.up.{level}.upsample.{rest}"
        return f"decoder.up.{level}.block.{index}.{_rename_resnet(rest, _VAE_RESNET_TO_LDM)}"
    raise KeyError(f"no LDM name for VAE key {key!r}")


def _open_clip_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection weights in OpenCLIP's layout (fused qkv, c_fc/c_proj)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    layers = DIFFUSERS_OPENCLIP_LAYERS
    for key, value in state_dict.items():
        if key in layers:
            out[layers[key]] = value.T.contiguous() if key == "text_projection.weight" else value
            continue
        if not key.startswith("text_model.encoder.layers."):
            continue
        index, rest = key.removeprefix("text_model.encoder.layers.").split(".", 1)
        prefix = f"transformer.resblocks.{index}."
        if rest.startswith("self_attn.") and rest.split(".")[1] in {"q_proj", "k_proj", "v_proj"}:
            if rest.startswith("self_attn.q_proj."):
                kind = rest.rsplit(".", 1)[1]
                fused = torch.cat(
                    [
                        state_dict[f"text_model.encoder.layers.{index}.self_attn.{p}_proj.{kind}"]
                        for p in ("q", "k", "v")
                    ]
                )
                out[f"{prefix}attn.in_proj_{kind}"] = fused
            continue
        rest = (
            rest.replace("self_attn.out_proj", "attn.out_proj")
            .replace("layer_norm1", "ln_1")
            .replace("layer_norm2", "ln_2")
            .replace("mlp.fc1", "mlp.c_fc")
            .replace("mlp.fc2", "mlp.c_proj")
        )
        out[prefix + rest] = value
    return out


DIFFUSERS_OPENCLIP_LAYERS = {
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
}


def to_single_file_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The whole pipeline as one state dict in the original SDXL (SGM) key layout."""
    unet_config = dict(pipe.unet.config)
    vae_config = dict(pipe.vae.config)
    state: dict[str, torch.Tensor] = {}
    for key, value in pipe.unet.state_dict().items():
        state["model.diffusion_model." + unet_key_to_ldm(key, unet_config)] = value
    for key, value in pipe.vae.state_dict().items():
        ldm = vae_key_to_ldm(key, vae_config)
        # The original VAE attention uses 1x1 convolutions where diffusers uses Linear.
        is_attention_linear = ".mid.attn_1." in ldm and value.ndim == 2
        state["first_stage_model." + ldm] = value[:, :, None, None] if is_attention_linear else value
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel; the checkpoint keeps the old nesting.
        nested = key if key.startswith("text_model.") else "text_model." + key
        state["conditioner.embedders.0.transformer." + nested] = value
    for key, value in _open_clip_state_dict(pipe.text_encoder_2.state_dict()).items():
        state["conditioner.embedders.1.model." + key] = value
    return {key: value.contiguous() for key, value in state.items()}


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


def build_tiny_model(root: Path, seed: int = 0, force: bool = False) -> TinyModel:
    """Write the diffusers dir, the single-file checkpoint and the turbo copy under ``root``.

    Reuses an earlier build of the same seed; writes to a temporary sibling and renames,
    so concurrent test sessions never see half a model.
    """
    from safetensors.torch import save_file

    model = TinyModel(root)
    stamp = json.dumps({"seed": seed, "unet": UNET_CONFIG, "vae": VAE_CONFIG}, sort_keys=True)
    if not force and model.complete_marker.exists() and model.complete_marker.read_text() == stamp:
        return model

    staging = root.with_name(root.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pipe: Any = build_pipeline(seed)
    pipe.save_pretrained(staging / "diffusers", safe_serialization=True)
    save_file(to_single_file_state_dict(pipe), str(staging / SINGLE_FILE_NAME))
    turbo: Any = build_pipeline(seed, turbo=True)
    turbo.save_pretrained(staging / "turbo", safe_serialization=True)
    (staging / ".complete").write_text(stamp)

    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(root)
    return model
