"""A tiny random-weight CLIP built from config, as the tiny SDXL is (``tiny_model``): the same
files as a published CLIP (weights in one safetensors file; config.json, preprocessor_config.json
and an offline tokenizer in a directory) so that the eval fetches, verifies and loads it the same
way. Its numbers mean nothing; the code paths are the real ones."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from zthumb_trainer.tiny import tiny_model
from zthumb_trainer.tiny.tiny_model import (
    _vocab,
    builder_stamp,
    marker_name,
    publish_build,
    staged_build,
    write_tokenizer,
)

WEIGHTS_NAME = "tiny_clip.safetensors"
CONFIG_DIR_NAME = "tiny_clip-config"
# Written last, with the builder's stamp: a build is reused only while this module, the tokenizer
# it borrows and the packages that build it are unchanged.
NAME = "tiny_clip"  # its staging folder is .tiny_clip.building (tiny_model.staged_build)
COMPLETE_NAME = marker_name(NAME)
BUILDER_SOURCES = (Path(__file__), Path(tiny_model.__file__))
BUILDER_PACKAGES = ("torch", "transformers", "safetensors")
IMAGE_SIDE = 32
PROJECTION_DIM = 32  # the width of its image embeddings (what the eval's aesthetic head takes)
# The demo's random aesthetic head for those embeddings (written by eval.aesthetic.save_random_head).
HEAD_NAME = "tiny_aesthetic.safetensors"
SEED = 0


@dataclass(frozen=True)
class TinyClip:
    weights: Path
    config_dir: Path


def build_tiny_clip(root: Path) -> TinyClip:
    """``root/tiny_clip.safetensors`` and ``root/tiny_clip-config/`` (reused while the stamp matches)."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    clip = TinyClip(root / WEIGHTS_NAME, root / CONFIG_DIR_NAME)
    stamp = builder_stamp(SEED, BUILDER_SOURCES, BUILDER_PACKAGES)
    staging = staged_build(root, NAME, stamp)
    if staging is None:
        return clip
    (staging / CONFIG_DIR_NAME).mkdir()
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    vocab = _vocab()
    text = {"vocab_size": len(vocab), "max_position_embeddings": 77, "pad_token_id": vocab["!"],
            "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"]}  # fmt: skip
    config = CLIPConfig(
        text_config={**common, **text},
        vision_config={**common, "image_size": IMAGE_SIDE, "patch_size": 8},
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(SEED)
    model = CLIPModel(config)
    config.save_pretrained(staging / CONFIG_DIR_NAME)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    ).save_pretrained(staging / CONFIG_DIR_NAME)
    write_tokenizer(staging / CONFIG_DIR_NAME)
    tokenizer_config = staging / CONFIG_DIR_NAME / "tokenizer_config.json"
    tokenizer_config.write_text(
        json.dumps({**json.loads(tokenizer_config.read_text()), "model_max_length": 77})
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staging / WEIGHTS_NAME))
    publish_build(root, NAME, staging, (CONFIG_DIR_NAME, WEIGHTS_NAME), stamp)
    return clip
