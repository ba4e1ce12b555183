"""CLIP-T / CLIP-I (clip_metrics) on the tiny random CLIP, and the tiny CLIP itself."""

from __future__ import annotations

import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from zthumb_trainer.eval.clip_metrics import ClipError, ClipScorer, clip_scores, spread
from zthumb_trainer.tiny.tiny_clip import build_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_an_image_is_most_like_itself(tiny_clip):
    scorer = ClipScorer(tiny_clip.weights, tiny_clip.config_dir)
    red, green = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 220, 20))
    clip_t, clip_i = clip_scores(scorer, [red, green], ["a red square", "a green square"], [red])
    assert clip_i[0] == pytest.approx(1.0, abs=1e-5)  # CLIP-I against itself: cosine 1
    assert clip_i[1] < clip_i[0]
    assert all(-1.0 <= value <= 1.0 for value in clip_t)
    again_t, _ = clip_scores(scorer, [red], ["a red square"], [red])
    assert again_t[0] == pytest.approx(clip_t[0], abs=1e-6)  # deterministic


def test_training_images_are_spread_evenly():
    assert spread(list(range(10)), 4) == [0, 2, 5, 7]
    assert spread([1, 2], 8) == [1, 2]


def test_weights_of_another_model_are_refused_naming_the_field(tiny_clip, tmp_path):
    state = load_file(str(tiny_clip.weights))
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith("text_model.")}, str(partial))
    with pytest.raises(ClipError, match=r"spec\.eval\.clip: .* is not the CLIP model"):
        ClipScorer(partial, tiny_clip.config_dir)
    with pytest.raises(ClipError, match=r"spec\.eval\.clip: no CLIP config"):
        ClipScorer(tiny_clip.weights, tmp_path)
