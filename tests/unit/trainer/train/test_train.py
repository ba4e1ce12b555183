"""train on the tiny model: export loads and changes images, resume repeats no step, the cache is reused."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from typer.testing import CliRunner
from zthumb_contract import crd
from zthumb_trainer.dataset.prepare import prepare_dataset
from zthumb_trainer.export.adapter import DIFFUSERS_WEIGHTS
from zthumb_trainer.reporting import StatusReporter
from zthumb_trainer.train.loop import TrainingInterrupted, list_checkpoints, run_training


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    """The synthetic dataset prepared at 64 px once; each test copies it into its own run dir."""
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


@pytest.fixture
def run_dir(prepared, tmp_path):
    return copy_into_run_dir(prepared, tmp_path)


_config = tiny_config


def _steps(run_dir):
    lines = (run_dir / "progress.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_train_exports_an_adapter_that_changes_the_image(run_dir, tiny_model, tmp_path, monkeypatch):
    from diffusers import StableDiffusionXLPipeline

    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    (tmp_path / "termination-log").write_text("")
    config = _config(run_dir, tiny_model, gradient_checkpointing=True, noise_offset=0.05, batch_size=2)
    summary = run_training(config)
    assert summary["steps"] == 6 and summary["final_loss"] > 0
    assert summary["latent_cache"] == "built"
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 6
    assert json.loads((tmp_path / "termination-log").read_text())["final_loss"] == summary["final_loss"]
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert [step for step, _ in list_checkpoints(config.checkpoints_dir)] == [4, 6]

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model.diffusers_dir)

    def image(**kwargs):
        generator = torch.Generator().manual_seed(0)
        return pipe("zt, a red circle", num_inference_steps=2, width=64, height=64, generator=generator,
                    output_type="np", **kwargs).images[0]  # fmt: skip

    without = image()
    pipe.load_lora_weights(str(config.export_dir))
    with_adapter = image(cross_attention_kwargs={"scale": 0.8})
    assert abs(with_adapter - without).mean() > 1e-4
    adapter = json.loads((config.export_dir / "adapter.json").read_text())
    assert adapter["steps"] == 6 and adapter["alpha"] == 8.0 and adapter["rank"] == 4


def test_resume_continues_after_the_checkpoint_and_matches_an_uninterrupted_run(
    run_dir, tiny_model, tmp_path
):
    from safetensors.torch import load_file

    interrupted = _config(run_dir, tiny_model, stop_after_step=4)
    with pytest.raises(TrainingInterrupted):
        run_training(interrupted)
    assert _steps(run_dir) == [1, 2, 3, 4]
    assert [step for step, _ in list_checkpoints(interrupted.checkpoints_dir)] == [2, 4]
    assert not interrupted.export_dir.exists()

    resumed = run_training(_config(run_dir, tiny_model))
    assert resumed["resumed_from_step"] == 4 and resumed["steps_this_run"] == 2
    assert resumed["latent_cache"] == "reused"
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6]  # no step repeated

    straight_dir = tmp_path / "straight" / "run"
    shutil.copytree(run_dir / "dataset", straight_dir / "dataset")
    straight = _config(straight_dir, tiny_model, export_dir=tmp_path / "straight-export")
    run_training(straight)
    a = load_file(str(_config(run_dir, tiny_model).export_dir / DIFFUSERS_WEIGHTS))
    b = load_file(str(straight.export_dir / DIFFUSERS_WEIGHTS))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_sigterm_checkpoints_the_current_step_and_the_next_pod_repeats_none(run_dir, tiny_model, monkeypatch):
    """A deleted pod's trainer (PID 1) gets SIGTERM: it finishes the step, checkpoints it, stops."""
    import os
    import signal

    from zthumb_trainer import reporting

    append = reporting.ProgressLog.append

    def append_then_sigterm_at_step_3(self, record):
        append(self, record)
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(reporting.ProgressLog, "append", append_then_sigterm_at_step_3)
    config = _config(run_dir, tiny_model)
    with pytest.raises(TrainingInterrupted, match="stopped after step 3 on SIGTERM"):
        run_training(config)
    # step 3 is not a checkpointing step (every 2), it was checkpointed because of the signal
    assert [step for step, _ in list_checkpoints(config.checkpoints_dir)] == [2, 3]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    monkeypatch.setattr(reporting.ProgressLog, "append", append)

    resumed = run_training(_config(run_dir, tiny_model))
    assert resumed["resumed_from_step"] == 3 and resumed["steps_this_run"] == 3
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6]


def test_second_run_reuses_the_latent_cache(run_dir, tiny_model, monkeypatch):
    from zthumb_trainer.train import latent_cache

    first = run_training(_config(run_dir, tiny_model, max_train_steps=2, export_dir=None))
    assert first["latent_cache"] == "built"
    shutil.rmtree(run_dir / "checkpoints")
    calls = []
    monkeypatch.setattr(latent_cache, "build_cache", lambda *a, **k: calls.append(1) or {})
    second = run_training(_config(run_dir, tiny_model, max_train_steps=2, export_dir=None))
    assert second["latent_cache"] == "reused" and calls == []
    assert second["final_loss"] == pytest.approx(first["final_loss"])


def test_half_written_checkpoints_never_win(tmp_path):
    directory = tmp_path / "checkpoints"
    (directory / "step-2").mkdir(parents=True)
    (directory / "step-2" / "state.json").write_text("{}")
    (directory / "step-10").mkdir()  # no state.json: died mid-write
    (directory / ".tmp-step-12-99").mkdir()
    (directory / ".tmp-step-12-99" / "state.json").write_text("{}")
    assert [step for step, _ in list_checkpoints(directory)] == [2]


def test_text_encoder_lora_trains_and_exports(run_dir, tiny_model):
    from safetensors import safe_open

    config = _config(run_dir, tiny_model, max_train_steps=2, train_text_encoder=True, snr_gamma=None)
    summary = run_training(config)
    assert summary["steps_this_run"] == 2
    with safe_open(str(config.export_dir / DIFFUSERS_WEIGHTS), "pt") as handle:
        prefixes = {key.split(".")[0] for key in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}


def test_cli_train_accepts_the_step_arguments_and_export_rebuilds_the_adapter(run_dir, tiny_model, tmp_path):
    from safetensors.torch import load_file
    from zthumb_trainer.cli import app

    export_dir = tmp_path / "models" / "lora" / "run"
    result = CliRunner().invoke(
        app,
        ["train", "--run-name", "run", "--base-model", str(tiny_model.single_file),
         "--model-config", str(tiny_model.diffusers_dir), "--run-dir", str(run_dir),
         "--export-dir", str(export_dir), "--base-model-sha256", "ab" * 32, "--trigger-word", "zt",
         "--rank", "4", "--alpha", "4", "--learning-rate", "0.001", "--max-train-steps", "2",
         "--batch-size", "1", "--gradient-accumulation-steps", "2", "--mixed-precision", "bf16",
         "--no-gradient-checkpointing", "--seed", "1", "--checkpointing-steps", "1",
         "--checkpoints-total-limit", "1", "--no-train-text-encoder", "--noise-offset", "0.0",
         "--gpus", "0", "--snr-gamma", "5.0", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary_line = re.search(r'\{"run_name".*\}', result.output)
    assert summary_line, result.output
    assert json.loads(summary_line.group(0))["steps"] == 2

    again = tmp_path / "again"
    exported = CliRunner().invoke(
        app, ["export", "--run-dir", str(run_dir), "--export-dir", str(again), "--run-name", "run"]
    )
    assert exported.exit_code == 0, exported.output
    a, b = load_file(str(export_dir / DIFFUSERS_WEIGHTS)), load_file(str(again / DIFFUSERS_WEIGHTS))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert json.loads((again / "adapter.json").read_text())["steps"] == 2


def test_missing_dataset_manifest_fails_clearly(tmp_path, tiny_model):
    from zthumb_trainer.cli import app

    result = CliRunner().invoke(
        app,
        ["train", "--run-name", "r", "--base-model", str(tiny_model.single_file),
         "--model-config", str(tiny_model.diffusers_dir), "--run-dir", str(tmp_path / "empty")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "prepare-dataset" in result.output


class _FakeStatusApi:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body, **kwargs):  # noqa: PLR0917
        assert kwargs == {"field_manager": "zthumb-trainer"}
        if self.fail:
            raise RuntimeError("forbidden")
        self.calls.append((group, version, namespace, plural, name, body))


def test_status_reporter_patches_progress_at_a_bounded_rate():
    api = _FakeStatusApi()
    reporter = StatusReporter("style", "ml", api=api, min_interval=3600)
    assert reporter.report(1, 10, 0.5, 90.0)
    assert not reporter.report(2, 10, 0.4, 80.0)  # too soon
    assert reporter.report(10, 10, 0.1, 0.0, force=True)
    group, version, namespace, plural, name, body = api.calls[-1]
    assert (group, version, namespace, plural, name) == (
        "zthumb.io",
        "v1alpha1",
        "ml",
        "lorafinetunes",
        "style",
    )
    progress = body["status"]["progress"]
    assert (
        progress["step"] == 10 and progress["totalSteps"] == 10 and progress["estimatedRemainingSeconds"] == 0
    )
    assert crd.parse_time(progress["lastUpdateTime"]) > 0  # RFC 3339, as the operator writes times
    assert progress["lastUpdateTime"] == crd.format_time(crd.parse_time(progress["lastUpdateTime"]))


def test_status_reporter_failures_are_not_fatal(caplog):
    reporter = StatusReporter("style", "ml", api=_FakeStatusApi(fail=True), min_interval=0)
    assert reporter.report(1, 10, 0.5, None) is False
    assert "could not report progress" in caplog.text


def test_status_reporter_only_when_the_operator_sets_the_env(monkeypatch):
    monkeypatch.delenv("ZTHUMB_RUN_NAME", raising=False)
    assert StatusReporter.from_env() is None
    monkeypatch.setenv("ZTHUMB_RUN_NAME", "style")
    monkeypatch.setenv("ZTHUMB_NAMESPACE", "ml")
    assert StatusReporter.from_env() is not None


def test_batch_4_with_aspect_buckets_trains_one_bucket_per_batch(tmp_path, tiny_model):
    from zthumb_trainer.dataset.prepare import load_manifest
    from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset
    from zthumb_trainer.train.batches import epoch_batches

    source = tmp_path / "mixed"
    source.mkdir()
    for name, size, seed in (("wide", (128, 64), 1), ("tall", (64, 128), 2)):
        for image in write_synthetic_dataset(tmp_path / name, count=6, size=size, seed=seed):
            for path in (image, image.with_suffix(".txt")):
                path.rename(source / f"{name}-{path.name}")
    run_dir = tmp_path / "outputs" / "lora" / "run"
    prepare_dataset(source, run_dir, resolution=64, trigger_word="zt")
    dataset = load_manifest(run_dir)
    buckets = {(entry.width, entry.height) for entry in dataset.entries}
    assert len(buckets) == 2
    batches = epoch_batches(dataset, 4, seed=42, epoch=0)
    assert sorted(len(batch) for batch in batches) == [2, 2, 4, 4]
    for batch in batches:
        assert len({(dataset.entries[i].width, dataset.entries[i].height) for i in batch}) == 1

    summary = run_training(_config(run_dir, tiny_model, batch_size=4, max_train_steps=4, export_dir=None))
    assert summary["steps_this_run"] == 4 and summary["final_loss"] > 0
    assert _steps(run_dir) == [1, 2, 3, 4]
