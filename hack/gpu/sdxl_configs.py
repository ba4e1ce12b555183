"""SDXL base 1.0 component configurations, written out from the published model's configs.

They let the GPU benchmark build full-size SDXL (UNet ~2.57 B parameters, CLIP ViT-L
and OpenCLIP ViT-bigG text encoders, the 4-level VAE) with random weights, so that it
needs no download. Values are those of stabilityai/stable-diffusion-xl-base-1.0.
"""

from __future__ import annotations

from typing import Any

from zthumb_trainer.tiny.tiny_model import SCHEDULER_CONFIG

UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": False,
}

TEXT_ENCODER: dict[str, Any] = {  # CLIP ViT-L/14
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

TEXT_ENCODER_2: dict[str, Any] = {  # OpenCLIP ViT-bigG/14
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# The tiny fixture already uses SDXL base's scheduler configuration verbatim.
SCHEDULER: dict[str, Any] = dict(SCHEDULER_CONFIG)
