"""DINO (eval/dino.py) on the tiny random DINOv2 with known answers, and the tiny DINOv2 itself."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from zthumb_contract.scale_sweep import DINO
from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.dino import DinoError, DinoScorer, dino_similarities
from zthumb_trainer.eval.scorers import Scorers, score
from zthumb_trainer.tiny.tiny_dino import COMPLETE_NAME, build_tiny_dino


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    dino = build_tiny_dino(tmp_path_factory.mktemp("dino"))
    return DinoScorer(dino.weights, dino.config_dir)


def _noise(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_identical_images_have_similarity_one(scorer):
    images = [_noise(0), _noise(1)]
    assert dino_similarities(scorer, images[:1], images[:1]) == pytest.approx([1.0], abs=1e-5)
    # Each against the same set: the mean over the set, the same for both copies of one image.
    first, again = dino_similarities(scorer, [images[0], images[0]], images)
    assert first == pytest.approx(again, abs=1e-6) and first < 1.0


def test_a_shuffled_set_scores_less_than_the_set_itself(scorer):
    """Each training image against itself scores 1; paired with another (a shuffle), less."""
    training = [_noise(seed) for seed in range(4)]
    same = [dino_similarities(scorer, [image], [image])[0] for image in training]
    shuffled = [
        dino_similarities(scorer, [image], [training[(i + 1) % 4]])[0] for i, image in enumerate(training)
    ]
    assert sum(same) / 4 == pytest.approx(1.0, abs=1e-5)
    assert sum(shuffled) / 4 < sum(same) / 4 - 1e-3


def test_the_per_scale_block_and_the_gain(scorer, tmp_path):
    """Scale 0 renders the training image itself (DINO 1), the served scale another: gain < 0."""
    from zthumb_trainer.dataset.prepare import prepare_dataset

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    _noise(7).save(dataset / "a.png")
    (dataset / "a.txt").write_text("zt")
    run_dir = tmp_path / "run"
    prepare_dataset(dataset, run_dir, resolution=64, trigger_word="zt")
    (run_dir / "summary.json").write_text("{}")
    training = Image.open(next((run_dir / "dataset").rglob("*.png"))).convert("RGB")
    config = EvalConfig(
        server_url="http://x", output=tmp_path / "eval", run_name="r", lora_path="r", scales=[0.0, 0.8],
        served_scale=0.8, dino={"enabled": True}, train_summary=run_dir / "summary.json",
    )  # fmt: skip
    samples = [
        Sample(0, "p", 0, 0.0, training, 0.1, {}),
        Sample(0, "p", 0, 0.8, _noise(8), 0.1, {}),
    ]
    block = score(config, Scorers(dino=scorer), samples, []).dino
    assert block is not None
    assert block.by_scale["0"]["dino"] == pytest.approx(1.0, abs=1e-4)
    assert block.by_scale["0.8"]["dino"] < 1.0
    assert block.dino_gain == pytest.approx(block.by_scale["0.8"]["dino"] - 1.0, abs=2e-4)
    assert block.training_images == 1 and samples[1].scores[DINO] == block.by_scale["0.8"]["dino"]


def test_weights_of_another_model_are_refused_naming_the_field(tmp_path_factory, tmp_path):
    dino = build_tiny_dino(tmp_path_factory.mktemp("dino-other"))
    state = load_file(str(dino.weights))
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith("embeddings.")}, str(partial))
    with pytest.raises(DinoError, match=r"spec\.eval\.dino: .* is not the DINOv2 model"):
        DinoScorer(partial, dino.config_dir)
    with pytest.raises(DinoError, match=r"spec\.eval\.dino: no DINOv2 config"):
        DinoScorer(dino.weights, tmp_path)


def test_the_tiny_dino_is_reused_while_its_stamp_matches(tmp_path):
    first = build_tiny_dino(tmp_path).weights.stat().st_ino
    assert build_tiny_dino(tmp_path).weights.stat().st_ino == first
    (tmp_path / COMPLETE_NAME).write_text("stale")
    assert build_tiny_dino(tmp_path).weights.stat().st_ino != first
