"""The TensorBoard log of a run: one point per step read back by TensorBoard's own reader, no
duplicated steps after a resume, nothing from ranks other than 0, and no failure from the writer."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from zthumb_trainer.train import tensorboard_log
from zthumb_trainer.train.loop import TrainingInterrupted, run_training
from zthumb_trainer.train.tensorboard_log import TensorBoardLog


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


@pytest.fixture
def run_dir(prepared, tmp_path):
    return copy_into_run_dir(prepared, tmp_path)


def _scalars(logs_dir):
    events = EventAccumulator(str(logs_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _steps(events, tag):
    return [event.step for event in events.Scalars(tag)]


def test_a_run_writes_every_tag_with_one_point_per_step(run_dir, tiny_model):
    validation = {
        "prompts": ["a photo of {trigger}"],
        "everyNSteps": 3,
        "steps": 2,
        "width": 64,
        "height": 64,
    }
    config = tiny_config(run_dir, tiny_model, validation=validation)
    run_training(config)

    events = _scalars(run_dir / "logs")
    assert config.logs_dir == run_dir / "logs"
    for tag in ("train/loss", "train/loss_smoothed", "train/learning_rate", "train/grad_norm"):
        assert _steps(events, tag) == [1, 2, 3, 4, 5, 6], tag
    # steps/s from the interval that starts at the end of the two warm-up steps (a logging point per
    # step on a CPU); memory at every point.
    assert _steps(events, "perf/steps_per_second") == [3, 4, 5, 6]
    assert _steps(events, "perf/peak_memory_gib") == [1, 2, 3, 4, 5, 6]
    assert all(point.value > 0 for point in events.Scalars("perf/peak_memory_gib"))
    losses = [point.value for point in events.Scalars("train/loss")]
    smoothed = [point.value for point in events.Scalars("train/loss_smoothed")]
    assert smoothed[0] == pytest.approx(losses[0])  # debiased: the first point is the first loss
    assert smoothed[1:] != pytest.approx(losses[1:])
    assert [image.step for image in events.Images("validation/samples")] == [3, 6]
    assert events.Images("validation/samples")[0].width > 0


def test_a_resumed_run_keeps_one_point_per_step(run_dir, tiny_model):
    # Killed after step 5 (the test hook writes no checkpoint): the last checkpoint is step 4, so
    # the resumed pod trains step 5 again.
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config(run_dir, tiny_model, stop_after_step=5, checkpointing_steps=4))
    assert _steps(_scalars(run_dir / "logs"), "train/loss") == [1, 2, 3, 4, 5]
    run_training(tiny_config(run_dir, tiny_model, checkpointing_steps=4))
    assert len(list((run_dir / "logs").glob("events.out.tfevents.*"))) == 2
    assert _steps(_scalars(run_dir / "logs"), "train/loss") == [1, 2, 3, 4, 5, 6]


class _RecordingWriter:
    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def __getattr__(self, name):
        def call(*args, **kwargs):
            if name == self.fail_on:
                raise OSError("volume full")
            self.calls.append(name)

        return call


def test_only_rank_0_opens_a_writer(tmp_path):
    opened = []

    def open_writer(directory, purge_step):
        opened.append((directory, purge_step))
        return _RecordingWriter()

    other_rank = TensorBoardLog(None, resumed_from=0, device=torch.device("cpu"), open_writer=open_writer)
    other_rank.steps([1], [0.5], [1e-4], [1.0])
    other_rank.close()
    assert opened == [] and not other_rank.active
    rank_0 = TensorBoardLog(tmp_path, resumed_from=4, device=torch.device("cpu"), open_writer=open_writer)
    assert opened == [(tmp_path, 5)]  # purge what an interrupted pod wrote after the checkpoint
    rank_0.steps([5], [0.5], [1e-4], [None])
    ((_, writer),) = rank_0._writers
    assert writer.calls == ["add_scalar"] * 3  # no grad norm point where none was measured


def test_a_writer_error_is_logged_once_and_training_goes_on(run_dir, tiny_model, monkeypatch, caplog):
    writers = []

    def failing(directory, purge_step):
        writers.append(_RecordingWriter(fail_on="add_scalar"))
        return writers[-1]

    monkeypatch.setattr(tensorboard_log, "open_summary_writer", failing)
    summary = run_training(tiny_config(run_dir, tiny_model))
    assert summary["steps_this_run"] == 6 and summary["final_loss"] > 0
    assert len(writers) == 1 and "close" in writers[0].calls
    assert caplog.text.count("TensorBoard log in") == 1


def test_a_writer_that_cannot_open_leaves_training_alone(tmp_path, caplog):
    def unopenable(directory, purge_step):
        raise PermissionError("read-only volume")

    log = TensorBoardLog(tmp_path, resumed_from=0, device=torch.device("cpu"), open_writer=unopenable)
    log.steps([1], [0.5], [1e-4], [1.0])
    log.flush()
    log.close()
    assert not log.active and "no TensorBoard log" in caplog.text
