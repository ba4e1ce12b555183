"""Resuming a train step that failed part-way: a damaged checkpoint, a changed dataset, a lost export,
emaDecay turned on or off between attempts."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from typer.testing import CliRunner
from zthumb_trainer.cli import app
from zthumb_trainer.export.adapter import DIFFUSERS_WEIGHTS
from zthumb_trainer.train import session as session_module
from zthumb_trainer.train.checkpoints import EMA_WEIGHTS, file_digests, list_checkpoints
from zthumb_trainer.train.loop import TrainingInterrupted, run_training
from zthumb_trainer.train.resume import (
    DatasetChangedError,
    ResumePoint,
    checkpoint_problem,
    resume_point,
    warn_on_ema_change,
)

LOG = "zthumb_trainer.train"
DATASET = "a" * 64


def _fake_checkpoint(directory, step, dataset_hash=DATASET):
    """A checkpoint's files as save_checkpoint lays them out (contents need not load)."""
    path = directory / f"step-{step}"
    path.mkdir(parents=True)
    for name in ("adapter.safetensors", "lora_config.json", "optimizer.pt", "scheduler.pt", "rng.pt"):
        (path / name).write_bytes(f"{name} at {step}".encode() * 50)
    state = {"step": step, "loss": 0.5, "dataset_hash": dataset_hash, "files": file_digests(path)}
    (path / "state.json").write_text(json.dumps(state))
    return path


# --- which checkpoint, without a model ------------------------------------------------------------


def test_an_intact_checkpoint_passes_and_each_kind_of_damage_is_named(tmp_path):
    path = _fake_checkpoint(tmp_path, 4)
    assert checkpoint_problem(path, 4) is None

    optimizer = (path / "optimizer.pt").read_bytes()
    (path / "optimizer.pt").write_bytes(optimizer[:10])  # truncated
    assert "optimizer.pt has 10 bytes" in checkpoint_problem(path, 4)
    (path / "optimizer.pt").write_bytes(b"x" * len(optimizer))  # garbage of the same size
    assert checkpoint_problem(path, 4) == "optimizer.pt does not match its recorded SHA-256"
    (path / "optimizer.pt").write_bytes(optimizer)
    (path / "rng.pt").unlink()
    assert checkpoint_problem(path, 4) == "missing rng.pt"
    (path / "state.json").write_text('{"step": 4, "lo')  # cut short
    assert "state.json unreadable" in checkpoint_problem(path, 4)
    (path / "state.json").write_text('{"step": 2}')
    assert checkpoint_problem(path, 4) == "state.json does not describe step 4"


def test_a_checkpoint_from_before_digests_is_checked_for_its_files(tmp_path):
    path = _fake_checkpoint(tmp_path, 2)
    (path / "state.json").write_text(json.dumps({"step": 2, "dataset_hash": DATASET}))
    assert checkpoint_problem(path, 2) is None
    (path / "adapter.safetensors").unlink()
    assert checkpoint_problem(path, 2) == "missing adapter.safetensors"


def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_intact_one(tmp_path, caplog):
    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 4)
    newest = _fake_checkpoint(tmp_path, 6)
    (newest / "adapter.safetensors").write_bytes(b"")
    (tmp_path / "step-4" / "scheduler.pt").unlink()
    with caplog.at_level(logging.WARNING, LOG):
        point = resume_point(tmp_path, DATASET)
    assert point is not None and point.step == 2 and point.state["loss"] == 0.5
    assert f"skipping checkpoint {newest}: adapter.safetensors has 0 bytes" in caplog.text
    assert f"skipping checkpoint {tmp_path / 'step-4'}: missing scheduler.pt" in caplog.text


def test_no_intact_checkpoint_trains_from_step_0_and_says_so(tmp_path, caplog):
    (_fake_checkpoint(tmp_path, 2) / "state.json").write_bytes(b"\xff\x00garbage")
    with caplog.at_level(logging.WARNING, LOG):
        assert resume_point(tmp_path, DATASET) is None
    assert "no intact checkpoint" in caplog.text and "training from step 0" in caplog.text
    assert resume_point(tmp_path / "none-yet", DATASET) is None  # a first attempt


def test_a_checkpoint_of_another_dataset_is_refused_naming_both_hashes(tmp_path):
    _fake_checkpoint(tmp_path, 2, dataset_hash="b" * 64)
    with pytest.raises(DatasetChangedError) as refused:
        resume_point(tmp_path, DATASET)
    message = str(refused.value)
    assert "b" * 64 in message and DATASET in message and "spec.dataset" in message
    assert str(tmp_path) in message  # what to delete to start over on the new data


def test_emadecay_turned_on_or_off_between_attempts_is_logged(tmp_path, caplog):
    path = _fake_checkpoint(tmp_path, 4)
    point = ResumePoint(4, path, {"step": 4, "ema_decay": None})
    with caplog.at_level(logging.WARNING, LOG):
        warn_on_ema_change(point, None)
        assert caplog.text == ""
        warn_on_ema_change(point, 0.9)
    assert "has no EMA: the EMA starts from its weights at step 4" in caplog.text
    caplog.clear()
    (path / EMA_WEIGHTS).write_bytes(b"ema")
    with_ema = ResumePoint(4, path, {"step": 4, "ema_decay": 0.9})
    with caplog.at_level(logging.WARNING, LOG):
        warn_on_ema_change(with_ema, 0.9)
        assert caplog.text == ""
        warn_on_ema_change(with_ema, None)
        assert "EMA is dropped" in caplog.text
        warn_on_ema_change(with_ema, 0.99)
    assert "emaDecay changed from 0.9 to 0.99" in caplog.text


# --- on the tiny model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


@pytest.fixture
def run_dir(prepared, tmp_path):
    return copy_into_run_dir(prepared, tmp_path)


def _no_step(*_args):
    raise AssertionError("a train step ran (or, before the refusal, the model loaded)")


def _weights(export_dir):
    return load_file(str(export_dir / DIFFUSERS_WEIGHTS))


def _safetensors(file):
    with safe_open(str(file), "pt") as handle:
        metadata = handle.metadata()
    return load_file(str(file)), metadata


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_lost_export_is_rewritten_from_the_final_checkpoint_without_training(
    run_dir, tiny_model, monkeypatch
):
    config = tiny_config(run_dir, tiny_model)
    run_training(config)
    original = json.loads((config.export_dir / "adapter.json").read_text())
    first = {name: _safetensors(config.export_dir / name) for name in original["files"]}
    shutil.rmtree(config.export_dir)

    monkeypatch.setattr(session_module.TrainingSession, "micro_step", _no_step)
    summary = run_training(config)
    assert summary["resumed_from_step"] == 6 and summary["steps_this_run"] == 0
    again = json.loads((config.export_dir / "adapter.json").read_text())
    # The same files with the same tensors and metadata. Not the same bytes: safetensors writes
    # its metadata map in an order that changes from one write to the next.
    assert again["files"].keys() == original["files"].keys()
    for name, (tensors, metadata) in first.items():
        tensors_again, metadata_again = _safetensors(config.export_dir / name)
        _assert_identical(tensors_again, tensors)
        assert metadata_again == metadata, name
    assert again["steps"] == 6 and summary["final_loss"] is not None


def test_damaged_checkpoints_are_skipped_replaced_and_the_result_is_unchanged(run_dir, tiny_model, tmp_path):
    config = tiny_config(run_dir, tiny_model)  # checkpoints every 2 steps, the last 2 kept
    run_training(config)
    original = _weights(config.export_dir)
    shutil.rmtree(config.export_dir)
    checkpoints = dict(list_checkpoints(config.checkpoints_dir))
    assert sorted(checkpoints) == [4, 6]
    (checkpoints[6] / "adapter.safetensors").write_bytes(b"\x00" * 100)  # garbage
    # The export subcommand, too, takes the newest intact checkpoint.
    result = CliRunner().invoke(
        app, ["export", "--run-dir", str(run_dir), "--export-dir", str(tmp_path / "cli"), "--run-name", "run"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "adapter.json").read_text())["steps"] == 4
    (checkpoints[4] / "optimizer.pt").unlink()  # a file lost

    # Nothing intact: from step 0; the fresh step-2 survives beside the two newer damaged ones.
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config(run_dir, tiny_model, stop_after_step=2))
    assert [step for step, _ in list_checkpoints(config.checkpoints_dir)] == [2, 4, 6]
    assert checkpoint_problem(config.checkpoints_dir / "step-2", 2) is None

    summary = run_training(config)
    assert summary["resumed_from_step"] == 2 and summary["steps_this_run"] == 4
    assert [step for step, _ in list_checkpoints(config.checkpoints_dir)] == [4, 6]
    for step, path in list_checkpoints(config.checkpoints_dir):
        assert checkpoint_problem(path, step) is None  # both replaced
    resumed = _weights(config.export_dir)
    for key in original:
        assert torch.allclose(original[key], resumed[key], atol=1e-6), key


def test_a_changed_dataset_is_refused_before_the_model_loads(run_dir, tiny_model, monkeypatch):
    config = tiny_config(run_dir, tiny_model, max_train_steps=2, export_dir=None)
    run_training(config)
    manifest = run_dir / "dataset" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["dataset_hash"] = "c" * 64  # the data was prepared again from other images
    manifest.write_text(json.dumps(data))
    monkeypatch.setattr("zthumb_trainer.train.loop.open_session", _no_step)
    with pytest.raises(DatasetChangedError, match="c" * 64):
        run_training(config)
    assert [step for step, _ in list_checkpoints(config.checkpoints_dir)] == [2]  # left as it was


def test_ema_turned_on_at_resume_starts_from_the_resumed_weights(run_dir, tiny_model, monkeypatch, caplog):
    config = tiny_config(run_dir, tiny_model)
    run_training(config)
    last_weights = _weights(config.export_dir)
    shutil.rmtree(config.export_dir)

    monkeypatch.setattr(session_module.TrainingSession, "micro_step", _no_step)
    with caplog.at_level(logging.WARNING, LOG):
        run_training(tiny_config(run_dir, tiny_model, ema_decay=0.9))
    assert "has no EMA: the EMA starts from its weights at step 6" in caplog.text
    _assert_identical(_weights(config.export_dir), last_weights)
    assert json.loads((config.export_dir / "adapter.json").read_text())["weights"] == "ema"


def test_ema_turned_off_at_resume_exports_the_last_weights(run_dir, tiny_model, monkeypatch, caplog):
    config = tiny_config(run_dir, tiny_model, ema_decay=0.8)
    run_training(config)
    ema_weights = _weights(config.export_dir)
    shutil.rmtree(config.export_dir)

    monkeypatch.setattr(session_module.TrainingSession, "micro_step", _no_step)
    with caplog.at_level(logging.WARNING, LOG):
        run_training(tiny_config(run_dir, tiny_model))
    assert "EMA is dropped, the last weights export" in caplog.text
    last = _weights(config.export_dir)
    assert any(not torch.equal(last[key], ema_weights[key]) for key in last)
    assert json.loads((config.export_dir / "adapter.json").read_text())["weights"] == "last_step"
