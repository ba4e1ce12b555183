"""Loss masks: ``<image>.mask.png`` is prepared like its image, a masked-out pixel gets no
gradient, and a flipped sample's mask flips with it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from zthumb_trainer.dataset.prepare import DatasetError, load_manifest, prepare_dataset
from zthumb_trainer.train.augment import SampleChoice
from zthumb_trainer.train.objective import diffusion_loss
from zthumb_trainer.train.step_inputs import StepInputs


def _left_half_masked(directory, size=(300, 200)):
    """``a.png`` (with its caption) and ``a.mask.png``: black (ignore) left half, white right half;
    ``b.png`` without a mask."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        Image.new("RGB", size, (200, 10, 10)).save(directory / f"{name}.png")
        (directory / f"{name}.txt").write_text("a thing")
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[:, size[0] // 2 :] = 255
    Image.fromarray(mask).save(directory / "a.mask.png")
    return directory


def test_a_mask_is_prepared_like_its_image_and_is_no_image_itself(tmp_path):
    source = _left_half_masked(tmp_path / "src")
    prepared = prepare_dataset(source, tmp_path / "run", resolution=256, trigger_word="zt")
    assert [entry.source for entry in prepared.entries] == ["a.png", "b.png"]  # not a.mask.png
    masked, plain = prepared.entries
    assert plain.mask is None and masked.mask == "images/000000.mask.png"
    with Image.open(prepared.directory / masked.mask) as mask:
        assert mask.mode == "L" and mask.size == (masked.width, masked.height)
        values = np.asarray(mask)
    assert values[:, :8].max() == 0 and values[:, -8:].min() == 255
    assert load_manifest(tmp_path / "run").entries[0].mask == masked.mask
    # The mask is part of the data an adapter saw.
    (source / "a.mask.png").unlink()
    unmasked = prepare_dataset(source, tmp_path / "other", resolution=256, trigger_word="zt")
    assert unmasked.dataset_hash != prepared.dataset_hash


def test_a_mask_of_another_size_is_refused_naming_it(tmp_path):
    source = _left_half_masked(tmp_path / "src")
    Image.new("L", (30, 20)).save(source / "a.mask.png")
    with pytest.raises(DatasetError, match=r"a\.mask\.png: 30x20, its image is 300x200"):
        prepare_dataset(source, tmp_path / "run", resolution=256)


class _Scheduler:
    config = SimpleNamespace(prediction_type="epsilon")


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_a_masked_out_region_gets_no_gradient(snr_gamma, monkeypatch):
    from zthumb_trainer.train import objective

    monkeypatch.setattr(objective, "min_snr_weights", lambda *_args: torch.tensor([0.5, 2.0]))
    prediction = torch.randn(2, 4, 8, 8, requires_grad=True)
    weights = torch.ones(2, 1, 8, 8)
    weights[:, :, :, :4] = 0  # the left half of every sample ignored
    loss = diffusion_loss(
        _Scheduler(), prediction, latents=torch.zeros(2, 4, 8, 8), noise=torch.randn(2, 4, 8, 8),
        timesteps=torch.tensor([10, 500]), snr_gamma=snr_gamma, weights=weights,
    )  # fmt: skip
    loss.backward()
    assert torch.count_nonzero(prediction.grad[..., :4]) == 0
    assert torch.count_nonzero(prediction.grad[..., 4:]) == prediction.grad[..., 4:].numel()


def test_the_step_inputs_carry_the_mask_flipped_with_its_sample(tmp_path):
    prepared = prepare_dataset(
        _left_half_masked(tmp_path / "src", size=(64, 64)), tmp_path / "run", resolution=64
    )
    inputs = StepInputs(
        SimpleNamespace(), prepared, {}, device=torch.device("cpu"), seed=0, world_size=1,
        cache_latents=True, train_text_encoder=False, noise_offset=0.0,
    )  # fmt: skip
    weights = inputs.loss_weights([0, 1], [SampleChoice(), SampleChoice(flip=True)], (32, 32))
    assert weights.shape == (2, 1, 32, 32)
    assert weights[0, :, :, :15].max() == 0 and weights[0, :, :, 17:].min() == 1  # left half out
    assert torch.equal(weights[1], torch.ones(1, 32, 32))  # no mask: every pixel counts
    flipped = inputs.loss_weights([0], [SampleChoice(flip=True)], (32, 32))
    assert torch.equal(flipped[0], weights[0].flip(-1))
    assert inputs.loss_weights([1], [SampleChoice()], (32, 32)) is None  # no mask in the batch
