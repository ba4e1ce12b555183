"""A tiny random-weight BLIP captioner built from config, as the tiny CLIP is (``tiny_clip``): the
same files as a published BLIP captioning model (weights in one safetensors file; config.json,
preprocessor_config.json and a tokenizer.json in a directory) so that the prepare step fetches,
verifies and loads it the same way. Its captions are gibberish; the code paths are the real ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zthumb_trainer.tiny.tiny_model import builder_stamp, marker_name, publish_build, staged_build

WEIGHTS_NAME = "tiny_blip.safetensors"
CONFIG_DIR_NAME = "tiny_blip-config"
# Written last, with the builder's stamp: a build is reused only while this module and the
# packages that build it are unchanged.
NAME = "tiny_blip"  # its staging folder is .tiny_blip.building (tiny_model.staged_build)
COMPLETE_NAME = marker_name(NAME)
BUILDER_SOURCES = (Path(__file__),)
BUILDER_PACKAGES = ("torch", "transformers", "safetensors", "tokenizers")
IMAGE_SIDE = 32
SEED = 0
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
# Mostly whole words, so that a random decoder mostly picks words rather than special tokens.
WORDS = (
    *("a", "photo", "of", "the", "cat", "dog", "red", "blue", "green", "small", "large", "house"),
    *("tree", "sky", "river", "man", "woman", "car", "street", "with", "on", "in", "and", "near"),
    *("old", "new", "bright", "dark", "sitting", "standing", "flower", "mountain", "boat", "window"),
)


@dataclass(frozen=True)
class TinyBlip:
    weights: Path
    config_dir: Path


def _vocab() -> dict[str, int]:
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)]
    tokens = [*SPECIAL_TOKENS, *WORDS, *letters, *(f"##{letter}" for letter in letters)]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def build_tiny_blip(root: Path) -> TinyBlip:
    """``root/tiny_blip.safetensors`` and ``root/tiny_blip-config/`` (reused while the stamp matches)."""
    import torch
    from safetensors.torch import save_model
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    blip = TinyBlip(root / WEIGHTS_NAME, root / CONFIG_DIR_NAME)
    stamp = builder_stamp(SEED, BUILDER_SOURCES, BUILDER_PACKAGES)
    staging = staged_build(root, NAME, stamp)
    if staging is None:
        return blip
    config_dir = staging / CONFIG_DIR_NAME
    config_dir.mkdir()
    vocab = _vocab()
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    # BLIP's decoder starts from [DEC] and stops at [SEP], as the published checkpoints do.
    text = {"vocab_size": len(vocab), "max_position_embeddings": 64, "bos_token_id": vocab["[DEC]"],
            "pad_token_id": vocab["[PAD]"], "sep_token_id": vocab["[SEP]"],
            "eos_token_id": vocab["[SEP]"]}  # fmt: skip
    config = BlipConfig(
        text_config={**common, **text},
        vision_config={**common, "image_size": IMAGE_SIDE, "patch_size": 8},
        projection_dim=32,
    )
    torch.manual_seed(SEED)
    model = BlipForConditionalGeneration(config).eval()
    config.save_pretrained(config_dir)
    BlipImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}).save_pretrained(config_dir)
    BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64).save_pretrained(config_dir)
    # save_model drops the tied copies (the decoder's output embedding), as save_pretrained does.
    save_model(model, str(staging / WEIGHTS_NAME))
    publish_build(root, NAME, staging, (CONFIG_DIR_NAME, WEIGHTS_NAME), stamp)
    return blip
