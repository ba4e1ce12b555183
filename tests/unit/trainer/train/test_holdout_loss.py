"""The holdout loss on the tiny model: logged at every validation step and at the end, the same
number for two runs with the same seed, and no effect on what training learns."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from train_helpers import copy_into_run_dir, tiny_config
from zthumb_contract.spec import ValidationSpec
from zthumb_trainer.dataset.prepare import prepare_dataset
from zthumb_trainer.export.adapter import DIFFUSERS_WEIGHTS
from zthumb_trainer.train.loop import run_training
from zthumb_trainer.train.tensorboard_log import HOLDOUT_LOSS


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    """The synthetic dataset at 64 px with 2 of its 8 images held out."""
    root = tmp_path_factory.mktemp("prepared-holdout")
    prepare_dataset(synthetic_dataset, root, resolution=64, trigger_word="zt", holdout=2)
    return root / "dataset"


def _holdout_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    return {record["step"]: record["holdout_loss"] for record in records if "holdout_loss" in record}


def _train(prepared, tiny_model, root, every_n_steps):
    run_dir = copy_into_run_dir(prepared, root)
    config = tiny_config(
        run_dir, tiny_model, max_train_steps=4, validation=ValidationSpec(every_n_steps=every_n_steps)
    )
    return run_dir, config, run_training(config)


def test_the_holdout_loss_is_logged_repeatable_and_leaves_training_alone(prepared, tiny_model, tmp_path):
    run_a, config_a, summary_a = _train(prepared, tiny_model, tmp_path / "a", every_n_steps=2)
    run_b, config_b, _ = _train(prepared, tiny_model, tmp_path / "b", every_n_steps=None)

    # Every validation step and the end; with no validation steps, the end only.
    losses_a, losses_b = _holdout_records(run_a), _holdout_records(run_b)
    assert sorted(losses_a) == [2, 4] and sorted(losses_b) == [4]
    assert all(value > 0 for value in losses_a.values())
    # Fixed noise and timesteps: the same weights give the same number, run after run.
    assert losses_a[4] == losses_b[4]
    # The pass at step 2 drew nothing from the training RNG: both runs trained the same weights.
    weights_a = load_file(config_a.export_dir / DIFFUSERS_WEIGHTS)
    weights_b = load_file(config_b.export_dir / DIFFUSERS_WEIGHTS)
    assert weights_a.keys() == weights_b.keys()
    assert all(weights_a[key].equal(weights_b[key]) for key in weights_a)

    assert summary_a["images"] == 6  # the training images only
    holdout = summary_a["holdout"]
    assert holdout["images"] == 2 == holdout["measured_images"]
    assert holdout["final_loss"] == losses_a[4] and holdout["losses"] == {"2": losses_a[2], "4": losses_a[4]}
    assert json.loads((run_a / "summary.json").read_text())["holdout"] == holdout
    events = EventAccumulator(str(config_a.logs_dir), size_guidance={"scalars": 0})
    events.Reload()
    points = {event.step: event.value for event in events.Scalars(HOLDOUT_LOSS)}
    assert points == pytest.approx(losses_a)  # TensorBoard stores float32
    # The loss curves read the training loss records only (the holdout records have no "loss").
    assert all("loss" not in record or "holdout_loss" not in record for record in map(
        json.loads, (run_a / "progress.jsonl").read_text().splitlines()))  # fmt: skip


def test_no_holdout_no_pass(synthetic_dataset, tiny_model, tmp_path):
    root = tmp_path / "plain"
    prepare_dataset(synthetic_dataset, root, resolution=64, trigger_word="zt")
    run_dir = copy_into_run_dir(root / "dataset", tmp_path)
    summary = run_training(
        tiny_config(run_dir, tiny_model, max_train_steps=2, validation=ValidationSpec(every_n_steps=1))
    )
    assert summary["holdout"] is None and not _holdout_records(run_dir)
