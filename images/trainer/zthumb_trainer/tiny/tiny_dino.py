"""A tiny random-weight DINOv2 built from config, as the tiny CLIP is (``tiny_clip``): the same files
as a published one (weights in one safetensors file; config.json and preprocessor_config.json in a
directory) so that the eval fetches, verifies and loads it the same way. Its numbers mean nothing
beyond what any image encoder guarantees (an image is most like itself); the code paths are the real
ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zthumb_trainer.tiny.tiny_model import builder_stamp, marker_name, publish_build, staged_build

WEIGHTS_NAME = "tiny_dino.safetensors"
CONFIG_DIR_NAME = "tiny_dino-config"
# Written last, with the builder's stamp: a build is reused only while this module and the packages
# that build it are unchanged.
NAME = "tiny_dino"  # its staging folder is .tiny_dino.building (tiny_model.staged_build)
COMPLETE_NAME = marker_name(NAME)
BUILDER_SOURCES = (Path(__file__),)
BUILDER_PACKAGES = ("torch", "transformers", "safetensors")
IMAGE_SIDE = 32
SEED = 0


@dataclass(frozen=True)
class TinyDino:
    weights: Path
    config_dir: Path


def build_tiny_dino(root: Path) -> TinyDino:
    """``root/tiny_dino.safetensors`` and ``root/tiny_dino-config/`` (reused while the stamp matches)."""
    import torch
    from safetensors.torch import save_file
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    dino = TinyDino(root / WEIGHTS_NAME, root / CONFIG_DIR_NAME)
    stamp = builder_stamp(SEED, BUILDER_SOURCES, BUILDER_PACKAGES)
    staging = staged_build(root, NAME, stamp)
    if staging is None:
        return dino
    (staging / CONFIG_DIR_NAME).mkdir()
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
        image_size=IMAGE_SIDE, patch_size=8,
    )  # fmt: skip
    torch.manual_seed(SEED)
    model = Dinov2Model(config)
    config.save_pretrained(staging / CONFIG_DIR_NAME)
    # DINOv2's own preprocessing (resize the short side, centre crop, ImageNet mean/std), smaller.
    BitImageProcessor(
        size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
    ).save_pretrained(staging / CONFIG_DIR_NAME)  # fmt: skip
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staging / WEIGHTS_NAME))
    publish_build(root, NAME, staging, (CONFIG_DIR_NAME, WEIGHTS_NAME), stamp)
    return dino
