"""diffusers -> the original SGM/LDM key layout of ``sd_xl_base_1.0.safetensors``.

The tiny model is written as a single-file checkpoint in this layout, so the product's
``from_single_file`` path (the server's and the trainer's) is exercised as it is on the real model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


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
