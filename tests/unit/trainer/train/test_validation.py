"""Validation samples during training (spec.training.validation): grids at the right steps, the
index, bit-identical training with them on or off, a resumed run not redoing passes, the report."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from zthumb_contract.spec import ValidationSpec
from zthumb_trainer.train.config import TrainConfig
from zthumb_trainer.train.loop import TrainingInterrupted, run_training
from zthumb_trainer.train.validation import Validation, grid_size, read_index

VALIDATION = {"prompts": ["a photo of {trigger}", "zt in snow"], "seeds": [0, 3], "every_n_steps": 3,
              "steps": 2, "width": 64, "height": 64}  # fmt: skip


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "progress.jsonl").read_text().splitlines()]


def _train(config: TrainConfig):
    return run_training(config)


def _global_rng() -> tuple:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tolist()


def test_grids_index_and_bit_identical_training(prepared, tmp_path, tiny_model, monkeypatch):
    plain_dir = copy_into_run_dir(prepared, tmp_path / "plain")
    plain = _train(tiny_config(plain_dir, tiny_model))
    plain_rng = _global_rng()
    assert plain["validation"] is None and not (plain_dir / "samples").exists()

    # A render that also draws from the global generators (a scheduler or a library might): the
    # states are restored after each pass, so the run ends in the state of the run without passes.
    original = Validation._image

    def greedy(self, pipe, prompt, seed):
        torch.rand(3), random.random(), np.random.rand()
        return original(self, pipe, prompt, seed)

    monkeypatch.setattr(Validation, "_image", greedy)
    run_dir = copy_into_run_dir(prepared, tmp_path / "valid")
    summary = _train(tiny_config(run_dir, tiny_model, validation=VALIDATION))
    rng = _global_rng()
    assert torch.equal(rng[0], plain_rng[0]) and rng[2] == plain_rng[2]
    # Python's generator: against a second run without passes (the first run of a process imports
    # modules that draw from it after the seed).
    monkeypatch.undo()
    _train(tiny_config(copy_into_run_dir(prepared, tmp_path / "again"), tiny_model, max_train_steps=6))
    assert rng[1] == _global_rng()[1]

    # Training is the same, step for step, and so is the exported adapter.
    assert _losses(run_dir) == _losses(plain_dir)
    export = "pytorch_lora_weights.safetensors"
    plain_weights = load_file(str(tmp_path / "plain" / "models" / "lora" / "run" / export))
    weights = load_file(str(tmp_path / "valid" / "models" / "lora" / "run" / export))
    assert plain_weights.keys() == weights.keys()
    assert all((plain_weights[k] == weights[k]).all() for k in weights)

    # Every 3 steps of 6: 3 and 6 (the end), one grid each, prompts x seeds.
    passes = read_index(run_dir)
    assert [entry["step"] for entry in passes] == [3, 6]
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["step-3.png", "step-6.png"]
    for entry in passes:
        assert entry["prompts"] == ["a photo of zt", "zt in snow"]
        assert entry["seeds"] == [0, 3] and entry["seconds"] > 0
        with Image.open(run_dir / "samples" / entry["image"]) as grid:
            assert grid.size == grid_size(2, 2, 64, 64)
    assert summary["validation"]["passes"] == 2 and summary["validation"]["secondsPerPass"] > 0
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["validation"] == summary["validation"]


def test_a_resumed_run_does_not_redo_passes_on_disk(prepared, tmp_path, tiny_model):
    run_dir = copy_into_run_dir(prepared, tmp_path)
    # Passes every 2 steps; killed after step 4 (a checkpoint): passes 2 and 4 are on disk.
    validation = {**VALIDATION, "prompts": ["zt"], "seeds": [1], "every_n_steps": 2}
    with pytest.raises(TrainingInterrupted):
        _train(tiny_config(run_dir, tiny_model, validation=validation, stop_after_step=4))
    first = {entry["step"]: entry for entry in read_index(run_dir)}
    assert sorted(first) == [2, 4]
    mtimes = {step: (run_dir / "samples" / f"step-{step}.png").stat().st_mtime_ns for step in first}

    summary = _train(tiny_config(run_dir, tiny_model, validation=validation))
    assert summary["resumed_from_step"] == 4
    passes = {entry["step"]: entry for entry in read_index(run_dir)}
    assert sorted(passes) == [2, 4, 6]
    for step in (2, 4):  # not rendered again
        assert passes[step] == first[step]
        assert (run_dir / "samples" / f"step-{step}.png").stat().st_mtime_ns == mtimes[step]
    assert summary["validation"]["passes"] == 3


def test_the_spec_defaults_are_off_and_bounded():
    assert ValidationSpec().prompts == [] and ValidationSpec().steps == 20
    with pytest.raises(ValueError, match="less than or equal"):
        ValidationSpec(prompts=["x"], steps=101)
    with pytest.raises(ValueError, match="multiple"):
        ValidationSpec(prompts=["x"], width=100)


def test_bf16_training_renders_through_the_fp32_vae(prepared, tmp_path, tiny_model):
    """bf16 UNet and text encoders (as on a GPU), the VAE in fp32: the pass decodes in the VAE's dtype."""
    run_dir = copy_into_run_dir(prepared, tmp_path)
    validation = {"prompts": ["zt"], "seeds": [0], "steps": 2}  # only at the end
    summary = _train(
        tiny_config(run_dir, tiny_model, validation=validation, mixed_precision="bf16", max_train_steps=2)
    )
    assert [entry["step"] for entry in read_index(run_dir)] == [2]
    with Image.open(run_dir / "samples" / "step-2.png") as grid:
        assert grid.size == grid_size(1, 1, 64, 64)  # the dataset's resolution
    assert summary["validation"]["passes"] == 1
