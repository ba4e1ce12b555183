"""spec.training.optimizer / useDora / emaDecay on the tiny model, and the measured steps/s + memory."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from typer.testing import CliRunner
from zthumb_trainer.export.adapter import DIFFUSERS_WEIGHTS, KOHYA_SUFFIX
from zthumb_trainer.train.checkpoints import EMA_WEIGHTS, list_checkpoints
from zthumb_trainer.train.loop import TrainingInterrupted, run_training
from zthumb_trainer.train.optim import LoraEma, OptimizerUnavailable, make_optimizer, require_available


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


_run_dir = copy_into_run_dir
_config = tiny_config


def _interrupted_then_resumed_and_straight(prepared, tiny_model, tmp_path, **options):
    """(resumed run's config, uninterrupted run's config): the same 6 steps, once stopped after 4."""
    resumed_dir = _run_dir(prepared, tmp_path / "resumed")
    with pytest.raises(TrainingInterrupted):
        run_training(_config(resumed_dir, tiny_model, stop_after_step=4, **options))
    resumed = _config(resumed_dir, tiny_model, **options)
    summary = run_training(resumed)
    assert summary["resumed_from_step"] == 4 and summary["steps_this_run"] == 2
    straight = _config(_run_dir(prepared, tmp_path / "straight"), tiny_model, **options)
    run_training(straight)
    return resumed, straight


def _assert_identical(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


# --- optimizer ----------------------------------------------------------------------------------


def test_prodigy_resumes_bit_identically(prepared, tiny_model, tmp_path):
    resumed, straight = _interrupted_then_resumed_and_straight(
        prepared, tiny_model, tmp_path, optimizer="prodigy", learning_rate=1.0
    )
    # Prodigy's step-size estimate lives in the param groups: the checkpoint carries it.
    (_, newest), *_ = reversed(list_checkpoints(resumed.checkpoints_dir))
    groups = torch.load(newest / "optimizer.pt", weights_only=False)["param_groups"]
    assert groups[0]["d"] > 0 and "d_numerator" in groups[0]
    _assert_identical(
        load_file(str(resumed.export_dir / DIFFUSERS_WEIGHTS)),
        load_file(str(straight.export_dir / DIFFUSERS_WEIGHTS)),
    )


def test_prodigy_warns_about_an_adamw_sized_learning_rate(caplog):
    params = [torch.nn.Parameter(torch.zeros(2))]
    with caplog.at_level(logging.WARNING, logger="zthumb_trainer.train.optim"):
        make_optimizer("prodigy", params, 1.0, torch.device("cpu"))
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="zthumb_trainer.train.optim"):
        optimizer = make_optimizer("prodigy", params, 1e-4, torch.device("cpu"))
    assert type(optimizer).__name__ == "Prodigy"
    assert "learningRate is 0.0001 with optimizer prodigy" in caplog.text


def test_adamw8bit_trains_and_resumes_bit_identically_on_the_cpu(prepared, tiny_model, tmp_path):
    resumed, straight = _interrupted_then_resumed_and_straight(
        prepared, tiny_model, tmp_path, optimizer="adamw8bit"
    )
    (_, newest), *_ = reversed(list_checkpoints(resumed.checkpoints_dir))
    state = torch.load(newest / "optimizer.pt", weights_only=False)["state"]
    # bitsandbytes' state (the tiny model's LoRA tensors are under its 4096-element 8-bit minimum,
    # so they keep 32-bit moments; the probe below checks the 8-bit path itself).
    assert state and all("state1" in entry["__bnb_optimizer_quant_state__"] for entry in state.values())
    _assert_identical(
        load_file(str(resumed.export_dir / DIFFUSERS_WEIGHTS)),
        load_file(str(straight.export_dir / DIFFUSERS_WEIGHTS)),
    )


def test_the_adamw8bit_probe_keeps_8bit_state_on_the_cpu():
    require_available("adamw8bit", torch.device("cpu"))  # one real 8-bit step: no error


def test_adamw8bit_is_refused_at_the_start_where_its_kernels_fail(
    prepared, tiny_model, tmp_path, monkeypatch
):
    import bitsandbytes as bnb
    import zthumb_trainer.train.session as session_module
    from zthumb_trainer.cli import app

    def no_model_loading(*_args, **_kwargs):
        raise AssertionError("the refusal must come before the model is loaded")

    class Unsupported(bnb.optim.AdamW8bit):
        def step(self, closure=None):
            raise NotImplementedError("no 8-bit kernel for this device")

    monkeypatch.setattr(session_module, "load_components", no_model_loading)
    monkeypatch.setattr(bnb.optim, "AdamW8bit", Unsupported)
    run_dir = _run_dir(prepared, tmp_path)
    refused = r"spec\.training\.optimizer adamw8bit: bitsandbytes .* \(cpu: NotImplementedError"
    with pytest.raises(OptimizerUnavailable, match=refused):
        run_training(_config(run_dir, tiny_model, optimizer="adamw8bit"))

    result = CliRunner().invoke(
        app,
        ["train", "--run-name", "run", "--base-model", str(tiny_model.single_file),
         "--model-config", str(tiny_model.diffusers_dir), "--run-dir", str(run_dir),
         "--optimizer", "adamw8bit", "--gpus", "0", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "spec.training.optimizer adamw8bit" in result.output and "no 8-bit kernel" in result.output


def test_adamw8bit_that_keeps_no_8bit_state_is_refused(monkeypatch):
    import bitsandbytes as bnb

    monkeypatch.setattr(bnb.optim, "AdamW8bit", bnb.optim.AdamW32bit)
    with pytest.raises(OptimizerUnavailable, match="keeps no 8-bit state on cpu"):
        require_available("adamw8bit", torch.device("cpu"))


def test_adamw8bit_without_bitsandbytes_is_refused(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else find_spec(name)
    )
    with pytest.raises(OptimizerUnavailable, match="adamw8bit needs the bitsandbytes package"):
        require_available("adamw8bit", torch.device("cpu"))
    require_available("adamw", torch.device("cpu"))
    require_available("prodigy", torch.device("cpu"))


# --- EMA ----------------------------------------------------------------------------------------


def test_ema_follows_the_formula_and_swaps_losslessly():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = LoraEma([param], decay=0.9)
    expected = param.detach().clone()
    for step in range(1, 30):
        with torch.no_grad():
            param.add_(0.5)
        ema.update(step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * param.detach()
        torch.testing.assert_close(ema.shadow[0], expected)
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(1000) == 0.9
    raw = param.detach().clone()
    with ema.applied():
        assert torch.equal(param.detach(), ema.shadow[0])
    assert torch.equal(param.detach(), raw)


def test_ema_is_exported_instead_of_the_weights_and_resumes_bit_identically(prepared, tiny_model, tmp_path):
    from diffusers.utils import convert_state_dict_to_diffusers
    from zthumb_trainer.export.adapter import split_components

    decay = 0.8
    resumed, straight = _interrupted_then_resumed_and_straight(
        prepared, tiny_model, tmp_path, ema_decay=decay, checkpointing_steps=1, checkpoints_total_limit=10
    )
    checkpoints = dict(list_checkpoints(straight.checkpoints_dir))
    assert sorted(checkpoints) == [1, 2, 3, 4, 5, 6]

    def diffusers_unet(peft_file):
        unet = split_components(load_file(str(peft_file)))["unet"]
        return {f"unet.{key}": value for key, value in convert_state_dict_to_diffusers(unet).items()}

    exported = load_file(str(straight.export_dir / DIFFUSERS_WEIGHTS))
    _assert_identical(exported, diffusers_unet(checkpoints[6] / EMA_WEIGHTS))  # the shadow ...
    raw = diffusers_unet(checkpoints[6] / "adapter.safetensors")
    assert any(not torch.equal(exported[key], raw[key]) for key in raw)  # ... not the last weights
    # The checkpoints' EMA is the moving average of their raw weights, step after step.
    for step in range(2, 7):
        previous = load_file(str(checkpoints[step - 1] / EMA_WEIGHTS))
        current = load_file(str(checkpoints[step] / EMA_WEIGHTS))
        weights = load_file(str(checkpoints[step] / "adapter.safetensors"))
        rate = min(decay, (1 + step) / (10 + step))
        for key in current:
            torch.testing.assert_close(current[key], rate * previous[key] + (1 - rate) * weights[key])

    # Swapping the EMA in to save it, and back, leaves the training itself untouched.
    plain = _config(_run_dir(prepared, tmp_path / "plain"), tiny_model, export_dir=None)
    run_training(plain)
    (_, plain_newest), *_ = reversed(list_checkpoints(plain.checkpoints_dir))
    _assert_identical(
        load_file(str(plain_newest / "adapter.safetensors")),
        load_file(str(checkpoints[6] / "adapter.safetensors")),
    )

    adapter = json.loads((straight.export_dir / "adapter.json").read_text())
    assert adapter["weights"] == "ema" and adapter["ema_decay"] == decay
    _assert_identical(exported, load_file(str(resumed.export_dir / DIFFUSERS_WEIGHTS)))

    # The export subcommand re-exports the same EMA weights from the newest checkpoint.
    from zthumb_trainer.cli import app

    again = tmp_path / "again"
    result = CliRunner().invoke(
        app, ["export", "--run-dir", str(straight.run_dir), "--export-dir", str(again), "--run-name", "run"]
    )
    assert result.exit_code == 0, result.output
    _assert_identical(exported, load_file(str(again / DIFFUSERS_WEIGHTS)))
    assert json.loads((again / "adapter.json").read_text())["ema_decay"] == decay


# --- DoRA + what the train step measured ----------------------------------------------------------


def test_dora_adapter_is_served_by_the_eager_backend(prepared, tiny_model, tmp_path, monkeypatch):
    import numpy as np
    from zthumb.backends import FullBackend, GenerationParams
    from zthumb.lora import AdapterFiles
    from zthumb.settings import Settings

    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(termination_log))
    run_dir = _run_dir(prepared, tmp_path)
    config = _config(run_dir, tiny_model, use_dora=True, max_train_steps=3, learning_rate=2e-2)
    summary = run_training(config)

    # steps/s and peak memory: in the summary, the termination message and summary.json alike.
    training = summary["training"]
    assert training["memoryKind"] == "ProcessMaxRSS" and training["device"] == "cpu"
    assert training["peakMemoryBytes"] > 50 * 2**20  # torch alone is more than that
    assert training["stepsPerSecond"] > 0 and training["finalLoss"] == summary["final_loss"]
    assert json.loads(termination_log.read_text())["training"] == training
    assert json.loads((run_dir / "summary.json").read_text())["training"] == training

    export_dir = config.export_dir
    adapter = json.loads((export_dir / "adapter.json").read_text())
    assert adapter["dora"] is True and adapter["weights"] == "last_step"
    assert "DoRA" in adapter["kohya_skipped"] and not list(export_dir.glob(f"*{KOHYA_SUFFIX}"))
    weights = load_file(str(export_dir / DIFFUSERS_WEIGHTS))
    assert any("lora_magnitude_vector" in key for key in weights)

    settings = Settings(
        backend="full", model_path=tiny_model.diffusers_dir, model_config_dir=tiny_model.diffusers_dir,
        lora_root=export_dir.parent, device="cpu", default_width=64, default_height=64, default_steps=2,
    )  # fmt: skip
    backend = FullBackend(settings, torch.device("cpu"), torch.float32)
    params = GenerationParams(
        prompt="zt, a red circle", negative_prompt=None, width=64, height=64, seed=3, steps=2,
        guidance_scale=5.0, num_images=1,
    )  # fmt: skip

    def image():
        return np.asarray(backend.generate(params)[0].convert("RGB")).astype(int)

    base = image()
    applied = backend.apply_adapter(AdapterFiles(export_dir.parent).ref("run"), 1.0)
    assert applied.active
    unet = backend.pipe.unet
    assert any(any(getattr(module, "use_dora", {}).values()) for module in unet.modules())  # DoRA layers
    assert np.abs(image() - base).mean() > 0.5

    # The compiled server mode (plain LoRA merged or hot-swapped) refuses this very file (a 422).
    from types import SimpleNamespace

    from zthumb.backends.compiled import SlotError
    from zthumb.backends.compiled_fused import FusedUNet
    from zthumb.backends.compiled_slot import SlotUNet

    pipe = SimpleNamespace(unet=None)
    for compiled in (
        SlotUNet(pipe, mode="default", max_rank=64, target_modules=["to_q"]),
        FusedUNet(pipe, mode="default", max_adapters=4),
    ):
        with pytest.raises(SlotError, match="DoRA") as refused:
            compiled.load(weights, None, None, "run")
        assert refused.value.code == "lora_unsupported_compiled"


def test_steps_per_second_leaves_the_first_step_out(monkeypatch):
    from zthumb_trainer.train import measure

    # The pod's first step (compilation, warm-up) ends 10 s in; four more steps end at 12 s.
    times = iter([10.0, 12.0])
    monkeypatch.setattr(measure.time, "monotonic", lambda: next(times))
    clock = measure.StepClock(torch.device("cpu"))
    clock.step_done()
    assert clock.steps_per_second is None  # one step: no steady state yet
    for _ in range(4):
        clock.step_done()
    clock.finish()
    assert clock.steps_per_second == 2.0  # 4 steps in 2 s; with the first step it would be ~0.4


def test_an_oversized_termination_message_keeps_the_training_block(tmp_path, monkeypatch):
    from zthumb_trainer.reporting import write_termination_message

    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(log))
    training = {"stepsPerSecond": 1.5, "peakMemoryBytes": 123, "memoryKind": "ProcessMaxRSS"}
    assert write_termination_message({"steps": 6, "long": ["x" * 100] * 50, "training": training})
    message = json.loads(log.read_text())
    assert message == {"steps": 6, "training": training}
