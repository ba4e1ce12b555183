"""spec.training.lrScheduler / lrWarmupSteps / maxGradNorm on the tiny model: the schedule is
diffusers', logged as the rate each step used, resumed exactly; clipping bounds the update."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from zthumb_trainer.dataset.prepare import load_manifest
from zthumb_trainer.export.adapter import DIFFUSERS_WEIGHTS
from zthumb_trainer.train.loop import TrainingInterrupted, run_training
from zthumb_trainer.train.session import open_session


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


def _logged_rates(run_dir) -> dict[int, float]:
    lines = (run_dir / "progress.jsonl").read_text().splitlines()
    return {record["step"]: record["lr"] for record in map(json.loads, lines) if "lr" in record}


def _reference_rates(name: str, learning_rate: float, warmup: int, steps: int) -> list[float]:
    """The rate of each optimizer step 1..steps under diffusers' schedule."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    scheduler = get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_with_warmup_resumes_with_the_uninterrupted_runs_rates(prepared, tiny_model, tmp_path):
    options = {"lr_scheduler": "cosine", "lr_warmup_steps": 2}
    resumed_dir = copy_into_run_dir(prepared, tmp_path / "resumed")
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config(resumed_dir, tiny_model, stop_after_step=4, **options))
    resumed = tiny_config(resumed_dir, tiny_model, **options)
    assert run_training(resumed)["resumed_from_step"] == 4
    straight = tiny_config(copy_into_run_dir(prepared, tmp_path / "straight"), tiny_model, **options)
    run_training(straight)

    expected = _reference_rates("cosine", 5e-3, warmup=2, steps=6)
    assert expected[0] == 0 and expected[2] == 5e-3 and expected[5] < expected[3]  # not constant
    straight_rates = _logged_rates(straight.run_dir)
    assert [straight_rates[step] for step in range(1, 7)] == pytest.approx(expected, rel=1e-12, abs=0)
    assert _logged_rates(resumed.run_dir) == straight_rates  # steps 5 and 6 came after the resume
    first = load_file(str(resumed.export_dir / DIFFUSERS_WEIGHTS))
    second = load_file(str(straight.export_dir / DIFFUSERS_WEIGHTS))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize(
    "name", ["constant", "constant_with_warmup", "linear", "cosine_with_restarts", "polynomial"]
)
def test_the_session_steps_the_schedule_spec_training_names(name, prepared, tiny_model, tmp_path):
    run_dir = copy_into_run_dir(prepared, tmp_path)
    warmup = 0 if name == "constant" else 3
    config = tiny_config(run_dir, tiny_model, lr_scheduler=name, lr_warmup_steps=warmup, max_train_steps=10)
    scheduler = open_session(config, load_manifest(run_dir)).lr_scheduler
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.step()
    assert rates == pytest.approx(_reference_rates(name, 5e-3, warmup, 10), rel=1e-12, abs=0)


# --- maxGradNorm ----------------------------------------------------------------------------------


def _two_steps(prepared, tiny_model, tmp_path, name, max_grad_norm):
    run_dir = copy_into_run_dir(prepared, tmp_path / name)
    config = tiny_config(
        run_dir, tiny_model, max_train_steps=2, learning_rate=0.5, max_grad_norm=max_grad_norm
    )
    run_training(config)
    return load_file(str(config.export_dir / DIFFUSERS_WEIGHTS))


def test_max_grad_norm_clips_and_null_does_not(prepared, tiny_model, tmp_path):
    unclipped = _two_steps(prepared, tiny_model, tmp_path, "unclipped", None)
    clipped = _two_steps(prepared, tiny_model, tmp_path, "clipped", 1e-6)
    # A bound no gradient reaches changes nothing: null is "no clipping", bit for bit.
    unbounded = _two_steps(prepared, tiny_model, tmp_path, "unbounded", 1e30)
    assert all(torch.equal(unclipped[key], unbounded[key]) for key in unclipped)
    assert any(not torch.equal(unclipped[key], clipped[key]) for key in unclipped)
