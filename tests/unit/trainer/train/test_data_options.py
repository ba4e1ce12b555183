"""spec.training.captionDropout / randomFlip: per-sample choices drawn from the seed, the empty
caption's and the flipped image's conditioning, SDXL's mirrored crop, and a bit-identical resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from zthumb_trainer.dataset.prepare import ManifestEntry, load_manifest
from zthumb_trainer.export.adapter import DIFFUSERS_WEIGHTS
from zthumb_trainer.train.augment import SampleChoice, sample_choices
from zthumb_trainer.train.batches import load_pixels, rank_rows, time_ids
from zthumb_trainer.train.components import load_components
from zthumb_trainer.train.latent_cache import EMPTY_CAPTION, build_cache, latent_key, text_keys
from zthumb_trainer.train.loop import TrainingInterrupted, run_training
from zthumb_trainer.train.step_inputs import StepInputs


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


def _choices(seed, steps=2000, **options):
    options = {"caption_dropout": 0.0, "random_flip": False, **options}
    return [sample_choices(seed, step, 1, [0], **options)[0] for step in range(steps)]


def test_caption_dropout_drops_its_fraction_the_same_way_for_the_same_seed():
    choices = _choices(42, caption_dropout=0.3)
    fraction = sum(c.drop_caption for c in choices) / len(choices)
    assert 0.26 < fraction < 0.34  # 2000 draws: the standard error is 0.01
    assert _choices(42, caption_dropout=0.3) == choices
    assert _choices(43, caption_dropout=0.3) != choices
    assert not any(c.drop_caption for c in _choices(42, caption_dropout=0.0))
    assert all(c.drop_caption for c in _choices(42, caption_dropout=1.0))
    # The flips draw from a stream of their own: turning them on changes no dropout choice.
    with_flips = _choices(42, caption_dropout=0.3, random_flip=True)
    assert [c.drop_caption for c in with_flips] == [c.drop_caption for c in choices]
    flipped = sum(c.flip for c in with_flips) / len(with_flips)
    assert 0.45 < flipped < 0.55 and not any(c.flip for c in choices)


def test_the_ranks_together_choose_what_one_process_chooses():
    one = sample_choices(7, 3, 8, list(range(8)), caption_dropout=0.5, random_flip=True)
    shared = [
        choice
        for rank in range(3)
        for choice in sample_choices(7, 3, 8, rank_rows(8, 3, rank), caption_dropout=0.5, random_flip=True)
    ]
    assert shared == one


def _entry(original_width: int, width: int, crop_left: int, original_height: int = 64) -> ManifestEntry:
    return ManifestEntry(
        image="images/000000.png", source="a.png", caption="zt", width=width, height=64,
        original_width=original_width, original_height=original_height, crop_top=0, crop_left=crop_left,
    )  # fmt: skip


def test_a_flip_mirrors_the_crop_left_edge():
    # Not resized (the height already fits): crop_left' = original_width - crop_left - width.
    entry = _entry(original_width=101, width=64, crop_left=18)
    assert time_ids(entry) == [64, 101, 0, 18, 64, 64]  # unflipped: as prepared
    assert time_ids(entry, flipped=True) == [64, 101, 0, 101 - 18 - 64, 64, 64]
    # Resized 2x down to 100 px wide: the mirror is in the resized frame crop_left is measured in.
    halved = _entry(original_width=200, width=64, crop_left=10, original_height=128)
    assert time_ids(halved, flipped=True)[3] == 100 - 10 - 64


def _fake_inputs(dataset, **options):
    """StepInputs over a hand-made cache: plain latents of mean +1, flipped of -1; the captions'
    embeddings 1, the empty caption's 0."""
    cache = {}
    for index in range(len(dataset.entries)):
        for flipped, mean in ((False, 1.0), (True, -1.0)):
            cache[latent_key(index, flipped)] = torch.cat(
                [torch.full((4, 8, 8), mean), torch.full((4, 8, 8), -30.0)]
            )
    for index in [*range(len(dataset.entries)), EMPTY_CAPTION]:
        value = 0.0 if index == EMPTY_CAPTION else 1.0
        embeds_key, pooled_key = text_keys(index)
        cache[embeds_key], cache[pooled_key] = torch.full((77, 32), value), torch.full((32,), value)
    components = SimpleNamespace(
        vae=SimpleNamespace(config=SimpleNamespace(scaling_factor=1.0)),
        noise_scheduler=SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000)),
    )
    return StepInputs(
        components, dataset, cache, device=torch.device("cpu"), seed=5, world_size=1,
        cache_latents=True, train_text_encoder=False, noise_offset=0.0, **options,
    )  # fmt: skip


def test_a_chosen_sample_gets_the_flipped_latents_the_empty_caption_and_the_mirrored_crop(prepared, tmp_path):
    run_dir = copy_into_run_dir(prepared, tmp_path)
    dataset = load_manifest(run_dir)
    inputs = _fake_inputs(dataset, caption_dropout=0.5, random_flip=True)
    seen = set()
    for micro_step in range(40):
        (choice,) = inputs.choices(micro_step, [0], 1)
        batch = inputs.micro_batch([1], [0], 1, micro_step)
        assert torch.allclose(
            batch.latents, torch.full_like(batch.latents, -1.0 if choice.flip else 1.0), atol=1e-4
        )
        assert torch.equal(batch.embeds, torch.full_like(batch.embeds, 0.0 if choice.drop_caption else 1.0))
        assert torch.equal(batch.pooled, torch.full_like(batch.pooled, 0.0 if choice.drop_caption else 1.0))
        assert batch.add_time_ids.tolist() == [time_ids(dataset.entries[1], choice.flip)]
        seen.add(choice)
    assert seen == {SampleChoice(d, f) for d in (False, True) for f in (False, True)}
    # Off (the default), nothing is chosen: the plain latents and the caption every time.
    plain = _fake_inputs(dataset).micro_batch([1], [0], 1, 3)
    assert torch.allclose(plain.latents, torch.ones_like(plain.latents), atol=1e-4)
    assert torch.equal(plain.embeds, torch.ones_like(plain.embeds))


def test_the_cache_holds_the_vae_encoding_of_the_flipped_image_and_the_empty_caption(
    prepared, tiny_model, tmp_path
):
    run_dir = copy_into_run_dir(prepared, tmp_path)
    dataset = load_manifest(run_dir)
    components = load_components(tiny_model.single_file, tiny_model.diffusers_dir)
    cache = build_cache(components, dataset, include_text=True, device="cpu", flipped=True)
    pixels = load_pixels(dataset, dataset.entries[0]).unsqueeze(0)
    with torch.no_grad():
        expected = components.vae.encode(pixels.flip(-1)).latent_dist.parameters[0]
    assert torch.allclose(cache[latent_key(0, True)], expected, atol=1e-5)
    assert not torch.allclose(cache[latent_key(0, True)], cache[latent_key(0)], atol=1e-3)
    embeds_key, pooled_key = text_keys(EMPTY_CAPTION)
    assert embeds_key in cache and pooled_key in cache
    assert not torch.equal(cache[embeds_key], cache[text_keys(0)[0]])
    assert latent_key(0, True) not in build_cache(components, dataset, include_text=False, device="cpu")


@pytest.mark.parametrize("cache_latents", [True, False])
def test_dropout_and_flips_resume_bit_identically_and_change_the_training(
    cache_latents, prepared, tiny_model, tmp_path
):
    options = {"caption_dropout": 0.5, "random_flip": True, "cache_latents": cache_latents}
    resumed_dir = copy_into_run_dir(prepared, tmp_path / "resumed")
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config(resumed_dir, tiny_model, stop_after_step=3, **options))
    resumed = tiny_config(resumed_dir, tiny_model, **options)
    run_training(resumed)
    straight = tiny_config(copy_into_run_dir(prepared, tmp_path / "straight"), tiny_model, **options)
    run_training(straight)
    first = load_file(str(resumed.export_dir / DIFFUSERS_WEIGHTS))
    second = load_file(str(straight.export_dir / DIFFUSERS_WEIGHTS))
    assert all(torch.equal(first[key], second[key]) for key in first)
    off = tiny_config(copy_into_run_dir(prepared, tmp_path / "off"), tiny_model, cache_latents=cache_latents)
    run_training(off)
    plain = load_file(str(off.export_dir / DIFFUSERS_WEIGHTS))
    assert any(not torch.equal(first[key], plain[key]) for key in first)
