"""The tiny fixture is what every other test stands on: prove its three layouts agree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from zthumb_trainer.tiny.tiny_model import TOKENIZER_MAX_LENGTH, build_pipeline


def _components(pipe):
    return {name: getattr(pipe, name) for name in ("unet", "vae", "text_encoder", "text_encoder_2")}


def test_build_is_deterministic_for_a_seed():
    first, second = build_pipeline(seed=3), build_pipeline(seed=3)
    for name, module in _components(first).items():
        other = _components(second)[name].state_dict()
        assert all(torch.equal(value, other[key]) for key, value in module.state_dict().items()), name


def test_architecture_is_sdxl(tiny_model):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model.diffusers_dir)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.tokenizer.model_max_length == TOKENIZER_MAX_LENGTH
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    size = sum(p.stat().st_size for p in tiny_model.diffusers_dir.rglob("*.safetensors"))
    assert size < 10_000_000


def test_single_file_checkpoint_uses_the_original_key_layout_and_loads_identically(tiny_model):
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    with safe_open(str(tiny_model.single_file), "pt") as checkpoint:
        keys = set(checkpoint.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "conditioner.embedders.1.model.positional_embedding" in keys
    assert "first_stage_model.decoder.conv_out.weight" in keys

    reference = StableDiffusionXLPipeline.from_pretrained(tiny_model.diffusers_dir)
    single = StableDiffusionXLPipeline.from_single_file(
        str(tiny_model.single_file), config=str(tiny_model.diffusers_dir), local_files_only=True
    )
    for name, module in _components(reference).items():
        loaded = _components(single)[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, loaded[key].reshape(value.shape)), f"{name}.{key}"


def test_turbo_copy_uses_trailing_euler_ancestral(tiny_model):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model.turbo_dir)
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing"


def test_synthetic_dataset_has_a_caption_per_image(synthetic_dataset):
    images = sorted(synthetic_dataset.glob("*.png"))
    assert len(images) == 8
    for image in images:
        assert image.with_suffix(".txt").read_text().startswith("a ")


# --- the cached build's stamp ----------------------------------------------------------------


def test_the_stamp_covers_the_builders_sources_and_packages(tmp_path):
    from importlib import metadata

    from zthumb_trainer.tiny import ldm_layout, tiny_clip, tiny_model

    stamp = json.loads(tiny_model.builder_stamp(0, tiny_model.BUILDER_SOURCES, tiny_model.BUILDER_PACKAGES))
    assert set(stamp["sources"]) == {"tiny_model.py", "ldm_layout.py"}
    conversion = Path(ldm_layout.__file__).read_bytes()
    assert stamp["sources"]["ldm_layout.py"] == hashlib.sha256(conversion).hexdigest()
    assert {"torch", "diffusers", "transformers"} <= set(stamp["packages"])
    assert stamp["packages"]["diffusers"] == metadata.version("diffusers")
    assert {path.name for path in tiny_clip.BUILDER_SOURCES} == {"tiny_clip.py", "tiny_model.py"}

    source = tmp_path / "conversion.py"
    source.write_text("KEYS = 1\n")
    before = tiny_model.builder_stamp(0, [source], ["torch"])
    source.write_text("KEYS = 2\n")
    after = tiny_model.builder_stamp(0, [source], ["torch"])
    assert after != before
    assert tiny_model.builder_stamp(1, [source], ["torch"]) != after


def test_a_cached_model_is_reused_only_while_its_stamp_matches(tmp_path, monkeypatch):
    from zthumb_trainer.tiny import tiny_model

    class RebuiltError(Exception):
        pass

    def build_pipeline(seed: int = 0, turbo: bool = False):
        raise RebuiltError

    monkeypatch.setattr(tiny_model, "build_pipeline", build_pipeline)
    root = tmp_path / "tiny-sdxl"
    root.mkdir()
    current = tiny_model.builder_stamp(0, tiny_model.BUILDER_SOURCES, tiny_model.BUILDER_PACKAGES)
    (root / ".complete").write_text(current)
    assert tiny_model.build_tiny_model(root).root == root  # reused: nothing built
    stale = json.loads(current)
    stale["packages"]["transformers"] = "0.0.1"  # built with another transformers
    (root / ".complete").write_text(json.dumps(stale, sort_keys=True))
    with pytest.raises(RebuiltError):
        tiny_model.build_tiny_model(root)


def test_a_cached_tiny_clip_is_rebuilt_when_its_stamp_is_stale(tmp_path):
    from zthumb_trainer.tiny.tiny_clip import COMPLETE_NAME, build_tiny_clip

    clip = build_tiny_clip(tmp_path)
    marker = tmp_path / COMPLETE_NAME
    built = (marker.read_text(), clip.weights.stat().st_ino)
    assert build_tiny_clip(tmp_path).weights.stat().st_ino == built[1]  # reused
    marker.write_text(built[0].replace('"seed": 0', '"seed": 99'))
    assert build_tiny_clip(tmp_path).weights.stat().st_ino != built[1]  # rebuilt
    assert marker.read_text() == built[0]


def test_the_tiny_blip_is_a_loadable_blip_rebuilt_when_its_stamp_is_stale(tmp_path):
    """The tiny captioner has the files of a published BLIP (one safetensors file without the tied
    copies; config.json, preprocessor_config.json and tokenizer.json) and is reused while its stamp
    matches."""
    from safetensors import safe_open
    from transformers import BlipProcessor
    from zthumb_trainer.tiny.tiny_blip import BUILDER_SOURCES, COMPLETE_NAME, build_tiny_blip

    assert {path.name for path in BUILDER_SOURCES} == {"tiny_blip.py"}
    blip = build_tiny_blip(tmp_path)
    assert {"config.json", "preprocessor_config.json", "tokenizer.json"} <= {
        p.name for p in blip.config_dir.iterdir()
    }
    with safe_open(str(blip.weights), framework="pt") as weights:
        assert "text_decoder.bert.embeddings.word_embeddings.weight" in set(weights.keys())
    processor = BlipProcessor.from_pretrained(blip.config_dir)
    assert processor.tokenizer("a photo of").input_ids[1:4] != [processor.tokenizer.unk_token_id] * 3
    marker = tmp_path / COMPLETE_NAME
    built = (marker.read_text(), blip.weights.stat().st_ino)
    assert build_tiny_blip(tmp_path).weights.stat().st_ino == built[1]  # reused
    marker.write_text(built[0].replace('"seed": 0', '"seed": 99'))
    assert build_tiny_blip(tmp_path).weights.stat().st_ino != built[1]  # rebuilt
    assert marker.read_text() == built[0]
