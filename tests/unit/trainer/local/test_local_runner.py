"""The local runner's pieces (the whole run is tests/integration/test_local_run.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from zthumb_contract.stages import STAGE, build_steps
from zthumb_contract.steps import RunPaths
from zthumb_trainer.local.run import (
    EMBEDDED_DEFAULT,
    LocalRunError,
    TinyScorers,
    load_finetune,
    server_env,
    step_env,
    trainer_executable,
    with_tiny_model,
)


def test_embedded_default_is_a_valid_small_spec():
    name, spec = load_finetune(None)
    assert name == "demo"
    assert spec.dataset.resolution == EMBEDDED_DEFAULT["dataset"]["resolution"] == 256
    assert spec.training.max_train_steps <= 50
    assert spec.eval.width == 64
    # Validation samples once midway and at the end, small enough for the demo's time budget.
    validation = spec.training.validation
    assert validation.prompts and validation.seeds == [0]
    assert validation.every_n_steps == spec.training.max_train_steps // 2
    assert (validation.width, validation.height, validation.steps) == (64, 64, 4)


def test_yaml_manifest_and_tiny_overrides(tmp_path):
    manifest = tmp_path / "finetune.yaml"
    manifest.write_text(
        "apiVersion: zthumb.io/v1alpha1\nkind: LoRAFinetune\nmetadata:\n  name: z-style\n"
        "spec:\n  dataset:\n    resolution: 1024\n  training:\n    maxTrainSteps: 20\n"
    )
    name, spec = load_finetune(manifest)
    assert name == "z-style" and spec.dataset.resolution == 1024
    tiny = with_tiny_model(spec, "http://127.0.0.1:1", "ab" * 32)
    assert tiny.base_model.url == "http://127.0.0.1:1/tiny_sdxl.safetensors"
    assert tiny.base_model.sha256 == "ab" * 32
    assert tiny.dataset.resolution == 256 and tiny.training.max_train_steps == 20
    assert tiny.eval.width == 128 and tiny.training.mixed_precision == "no"
    assert tiny.training.validation == spec.training.validation  # off: untouched
    spec.training.validation.prompts = ["x"]
    spec.training.validation.steps = 50
    small = with_tiny_model(spec, "http://127.0.0.1:1", "ab" * 32).training.validation
    assert (small.width, small.height, small.steps) == (128, 128, 8)


def test_the_tiny_scoring_models_replace_those_the_spec_turns_on():
    """The demo turns DINO on itself and the aesthetic head through TinyScorers (it has no weights to
    name); a YAML keeps what it says, with the tiny models in place of those it enables."""
    url, digests = "http://127.0.0.1:1", TinyScorers("c" * 64, "d" * 64, "e" * 64, aesthetic_on=True)
    _, demo = load_finetune(None)
    tiny = with_tiny_model(demo, url, "ab" * 32, digests).eval
    assert (tiny.clip.sha256, tiny.dino.sha256, tiny.aesthetic.sha256) == ("c" * 64, "d" * 64, "e" * 64)
    assert tiny.dino.enabled and tiny.aesthetic.enabled
    assert tiny.dino.url == f"{url}/tiny_dino.safetensors"
    assert tiny.dino.config_path == "models/tiny_dino-config"
    assert tiny.aesthetic.url == f"{url}/tiny_aesthetic.safetensors"
    plain = load_finetune(None)[1].model_copy(deep=True)
    plain.eval.dino.enabled = False
    yaml_like = with_tiny_model(plain, url, "ab" * 32, TinyScorers("c" * 64, "d" * 64, "e" * 64)).eval
    assert not yaml_like.dino.enabled and yaml_like.dino.sha256 != "d" * 64  # off: untouched
    assert not yaml_like.aesthetic.enabled and yaml_like.aesthetic.url is None


def test_not_a_finetune_is_refused(tmp_path):
    other = tmp_path / "x.yaml"
    other.write_text("kind: Deployment\n")
    with pytest.raises(LocalRunError, match="not a LoRAFinetune"):
        load_finetune(other)


def test_steps_resolve_to_the_installed_console_script():
    argv = trainer_executable(("zthumb-train",))
    assert Path(argv[0]).name == "zthumb-train"
    assert Path(argv[0]).parent == Path(sys.executable).parent


def test_server_env_is_the_deploy_env_plus_the_model(tmp_path):
    _, spec = load_finetune(None)
    paths = RunPaths(data_root=str(tmp_path), run_name="demo", spec=spec)
    env = server_env(paths, 1234, "k3y")
    assert env["Z_LORA_PATH"] == paths.adapter_dir and env["Z_LORA_SCALE"] == "0.8"
    assert env["ZTHUMB_API_KEY"] == "k3y"
    assert env["ZTHUMB_LORA_ROOT"] == paths.lora_root and env["ZTHUMB_PORT"] == "1234"
    eval_step = build_steps("demo", spec, str(tmp_path), "http://127.0.0.1:1234")[-1]
    assert "--lora-path" in eval_step.args


def test_a_yaml_with_the_training_options_reaches_the_train_command_line(tmp_path):
    import typer
    from zthumb_trainer.cli import app

    manifest = tmp_path / "finetune.yaml"
    manifest.write_text(
        "apiVersion: zthumb.io/v1alpha1\nkind: LoRAFinetune\nmetadata:\n  name: z-style\n"
        "spec:\n  training:\n    optimizer: prodigy\n    learningRate: 1.0\n    useDora: true\n"
        "    emaDecay: 0.99\n"
    )
    _, spec = load_finetune(manifest)
    tiny = with_tiny_model(spec, "http://127.0.0.1:1", "ab" * 32)
    (train,) = [
        step for step in build_steps("z-style", tiny, str(tmp_path), "http://s") if step.name == "train"
    ]
    params = typer.main.get_command(app).commands["train"].make_context("train", list(train.args[1:])).params  # type: ignore[attr-defined]
    assert (params["optimizer"], params["learning_rate"], params["use_dora"], params["ema_decay"]) == (
        "prodigy", 1.0, True, 0.99)  # fmt: skip
    # The embedded demo keeps today's defaults.
    _, demo = load_finetune(None)
    assert (demo.training.optimizer, demo.training.use_dora, demo.training.ema_decay) == (
        "adamw",
        False,
        None,
    )


def test_a_failed_gate_fails_the_local_run_naming_the_reason_and_the_report(tmp_path, capsys):
    import json

    from zthumb_contract.spec import LoRAFinetuneSpec
    from zthumb_trainer.local.run import check_gate

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"requests": 2, "mean_pixel_difference": 0.4, "min_pixel_difference": 0.4,
                                   "mean_latency_s": 1.0, "seconds": 2.0}))  # fmt: skip
    check_gate(LoRAFinetuneSpec(), summary)  # no gate: nothing to say
    gated = LoRAFinetuneSpec.model_validate({"eval": {"gate": {"minMeanPixelDifference": 1}}})
    failed = r"EvalGateFailed: eval gate failed: meanPixelDifference 0\.4 < min 1"
    with pytest.raises(LocalRunError, match=failed):
        check_gate(gated, summary)
    check_gate(LoRAFinetuneSpec.model_validate({"eval": {"gate": {"minMeanPixelDifference": 0.1}}}), summary)
    assert "eval gate passed: meanPixelDifference 0.4 >= min 0.1" in capsys.readouterr().err


def test_only_the_step_that_calls_the_server_gets_its_key(tmp_path, monkeypatch):
    # The local server runs with a key, as the chart's does; eval gets it as the eval Job gets the
    # server's Secret. A key in this shell reaches neither the server's clients nor the other steps.
    monkeypatch.setenv("ZTHUMB_API_KEY", "from-the-shell")
    _, spec = load_finetune(None)
    steps = {s.name: s for s in build_steps("demo", spec, str(tmp_path), "http://127.0.0.1:1234")}
    assert [name for name in steps if STAGE[name].calls_server] == ["eval"]
    assert step_env(steps["eval"], "k3y")["ZTHUMB_API_KEY"] == "k3y"
    for name in ("fetch-model", "prepare-dataset", "train"):
        assert "ZTHUMB_API_KEY" not in step_env(steps[name]), name
