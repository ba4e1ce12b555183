"""The CLI accepts exactly the argv the shared step definitions build (the operator's Job commands)."""

from __future__ import annotations

import json

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner
from zthumb_contract.dataset_spec import DatasetSpec
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import build_steps
from zthumb_contract.steps import spec_args
from zthumb_trainer.cli import app
from zthumb_trainer.options import spec_options

SPECS = {
    "defaults": {},
    "everything": {
        "baseModel": {"tokenSecretRef": {"name": "hf", "key": "token"}, "maxBytes": 8 * 2**30,
                      "allowInsecureHttp": True},
        "dataset": {"captionFormat": "jsonl", "missingCaption": "trigger", "bucketing": False,
                    "source": {"http": {"url": "https://example.com/d.zip", "sha256": "0" * 64,
                                        "maxBytes": 2**30, "allowInsecureHttp": True}}},
        "training": {"snrGamma": None, "trainTextEncoder": True, "gradientCheckpointing": False,
                     "mixedPrecision": "fp16", "noiseOffset": 0.1, "optimizer": "prodigy",
                     "useDora": True, "emaDecay": 0.995,
                     "validation": {"prompts": ["a {trigger}", "b"], "seeds": [0, 5], "everyNSteps": 50,
                                    "width": 512, "steps": 4, "guidance": 0}},
        "eval": {"prompts": ["a", "b {trigger}"], "seeds": [1, 2, 3], "scales": [0, 0.5, 1],
                 "width": 512, "height": 768},
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_step_argv_parses(name):
    spec = LoRAFinetuneSpec.model_validate(SPECS[name])
    command = typer.main.get_command(app)
    steps = build_steps("style", spec, "/data", "http://zthumb.ml.svc:8080")
    assert [step.name for step in steps] == ["fetch-model", "prepare-dataset", "train", "eval"]
    for step in steps:
        assert step.argv[0] == "zthumb-train"
        subcommand = command.commands[step.args[0]]  # type: ignore[attr-defined]
        context = subcommand.make_context(step.args[0], list(step.args[1:]))
        assert context.params, step.name
        if step.name == "fetch-model":
            assert context.params["max_bytes"] == spec.base_model.max_bytes
            assert context.params["allow_insecure_http"] == spec.base_model.allow_insecure_http
        if step.name == "prepare-dataset" and spec.dataset.source.remote:
            assert json.loads(context.params["source"]) == spec.dataset.source.model_dump(by_alias=True)
        if step.name == "eval":
            assert list(context.params["prompt"]) == spec.eval.prompts
            assert list(context.params["scale"]) == spec.eval.scales
        if step.name == "train":
            # None is --no-snr-gamma (its default is 5.0): the flag's own value stays the default.
            assert context.params["no_snr_gamma"] is (spec.training.snr_gamma is None)
            if spec.training.snr_gamma is not None:
                assert context.params["snr_gamma"] == spec.training.snr_gamma
            assert context.params["train_text_encoder"] == spec.training.train_text_encoder
            assert context.params["optimizer"] == spec.training.optimizer
            assert context.params["use_dora"] == spec.training.use_dora
            assert context.params["ema_decay"] == spec.training.ema_decay
            if name == "defaults":  # off: left out of the argv
                assert "--validation" not in step.args and context.params["validation"] is None
            else:
                assert json.loads(context.params["validation"]) == spec.training.validation.model_dump(
                    by_alias=True
                )


def _parsed(params, field, info):
    """A field's value from a command's parsed flags: ``--no-<field>`` (None, or an empty list)
    wins over the flag's own value, which stays its default."""
    from zthumb_contract.steps import option_name, unset_option

    unset = unset_option(field, info)
    if unset is not None and params[unset]:
        return [] if isinstance(params[option_name(field, info)], (list, tuple)) else None
    return params[option_name(field, info)]


def test_help_lists_every_subcommand():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("fetch-model", "prepare-dataset", "train", "export", "eval", "run", "tiny-model"):
        assert name in result.output


def test_bad_enum_values_are_refused():
    result = CliRunner().invoke(app, ["prepare-dataset", "--dataset", "/x", "--output", "/y",
                                      "--caption-format", "csv"])  # fmt: skip
    assert result.exit_code == 2 and "caption-format" in result.output


def test_run_needs_local():
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2 and "--local" in result.output


def test_spec_options_round_trip_through_the_step_argv():
    """Every spec.training / spec.eval field is a CLI option, and the argv carries its value."""
    from zthumb_contract.eval_spec import EvalSpec
    from zthumb_contract.spec import TrainingSpec

    spec = LoRAFinetuneSpec.model_validate(
        {"training": {"rank": 7, "alpha": 3.5, "snrGamma": None, "gradientCheckpointing": False,
                      "mixedPrecision": "fp16", "checkpointsTotalLimit": 9, "optimizer": "adamw8bit",
                      "useDora": True, "emaDecay": 0.9,
                      "validation": {"prompts": ["p {trigger}"], "seeds": [2, 3], "everyNSteps": 7,
                                     "height": 128}},
         "eval": {"prompts": ["x"], "seeds": [4], "scales": [0.3], "steps": 3, "width": 64,
                  "gate": {"maxClipTDrop": 0.05}}}
    )  # fmt: skip
    command = typer.main.get_command(app)
    steps = {step.name: step for step in build_steps("style", spec, "/data", "http://s")}
    for name, model, section in (("train", TrainingSpec, spec.training), ("eval", EvalSpec, spec.eval)):
        args = steps[name].args
        params = command.commands[args[0]].make_context(args[0], list(args[1:])).params  # type: ignore[attr-defined]
        values = {
            field: _parsed(params, field, info)
            for field, info in model.model_fields.items()
            if field != "enabled"
        }
        for field, info in model.model_fields.items():  # a nested section is one JSON option
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                if values[field] is None:  # left out of the argv: it equals its defaults
                    del values[field]
                else:
                    values[field] = json.loads(values[field])
        assert model.model_validate(values) == section


def test_the_validation_option_parses_its_json_and_refuses_bad_values(tmp_path):
    base = ["train", "--run-name", "r", "--base-model", str(tmp_path / "m"), "--run-dir", str(tmp_path / "d")]
    result = CliRunner().invoke(app, [*base, "--validation", "{not json"])
    assert result.exit_code == 2 and "--validation" in result.output and "not JSON" in result.output
    result = CliRunner().invoke(app, [*base, "--validation", '{"prompts": ["x"], "steps": 1000}'])
    assert result.exit_code == 2 and "--validation" in result.output


@pytest.mark.parametrize("section", ["training", "dataset.captioning"])
def test_every_training_and_captioning_option_has_a_row_in_the_trainer_readme(section):
    from pathlib import Path

    from zthumb_contract.dataset_spec import CaptioningSpec
    from zthumb_contract.spec import TrainingSpec

    model = {"training": TrainingSpec, "dataset.captioning": CaptioningSpec}[section]
    readme = (Path(__file__).parents[3] / "images" / "trainer" / "README.md").read_text()
    rows = {line.split("`")[1] for line in readme.splitlines() if line.startswith("| `")}
    fields = {info.alias or name for name, info in model.model_fields.items()}
    assert fields <= rows, f"spec.{section} fields without a row in images/trainer/README.md: {fields - rows}"


def test_the_captioning_option_round_trips_through_the_step_argv():
    """spec.dataset.captioning is one --captioning option holding its JSON, parsed back by the CLI
    into the same model; left out of the argv while it is off and default."""
    captioning = {"enabled": True, "mode": "all", "url": "https://hf.example/blip/model.safetensors",
                  "sha256": "b" * 64, "configUrl": "https://hf.example/blip/", "maxNewTokens": 12,
                  "batchSize": 3, "prompt": "a photography of", "tokenSecretRef": {"name": "hf"}}  # fmt: skip
    spec = DatasetSpec.model_validate({"captioning": captioning})
    assert "--captioning" not in spec_args(DatasetSpec())
    seen = []

    @spec_options(DatasetSpec, "dataset", exclude={"path"})
    def command(*, dataset: DatasetSpec) -> None:
        seen.append(dataset)

    probe = typer.Typer()
    probe.command()(command)
    result = CliRunner().invoke(probe, spec_args(spec, exclude={"path"}))
    assert result.exit_code == 0, result.output
    assert seen == [spec]
    bad = json.dumps({**captioning, "batchSize": 65})
    refused = CliRunner().invoke(probe, ["--captioning", bad])
    assert refused.exit_code == 2 and "batchSize" in refused.output


@pytest.mark.parametrize("prompts", [[], ["a red car"], None])
def test_leakage_prompts_reach_the_eval_from_the_step_argv_even_when_empty(monkeypatch, prompts):
    """An empty list has no items to repeat: the argv says --no-leakage-prompts, and the eval gets []
    rather than the default prompts."""
    import zthumb_trainer.eval.run as eval_run
    from zthumb_contract.eval_spec import DEFAULT_LEAKAGE_PROMPTS

    seen = []

    def capture(config):
        seen.append(config.leakage_prompts)
        raise eval_run.EvalError("captured")

    monkeypatch.setattr(eval_run, "run_eval", capture)
    spec = LoRAFinetuneSpec.model_validate({} if prompts is None else {"eval": {"leakagePrompts": prompts}})
    step = next(step for step in build_steps("style", spec, "/data", "http://s") if step.name == "eval")
    assert ("--no-leakage-prompts" in step.args) is (prompts == [])
    result = CliRunner().invoke(app, list(step.args))
    assert result.exit_code == 1 and "captured" in result.output
    assert seen == [DEFAULT_LEAKAGE_PROMPTS if prompts is None else prompts]


def test_the_schedule_and_augmentation_options_round_trip_and_cross_field_refusals_name_the_field(tmp_path):
    from zthumb_contract.spec import TrainingSpec

    spec = LoRAFinetuneSpec.model_validate(
        {"training": {"lrScheduler": "cosine_with_restarts", "lrWarmupSteps": 5, "maxGradNorm": None,
                      "captionDropout": 0.25, "randomFlip": True}}
    )  # fmt: skip
    (train,) = [step for step in build_steps("style", spec, "/data", "http://s") if step.name == "train"]
    command = typer.main.get_command(app).commands[train.args[0]]  # type: ignore[attr-defined]
    params = command.make_context(train.args[0], list(train.args[1:])).params
    fields = ("lr_scheduler", "lr_warmup_steps", "max_grad_norm", "caption_dropout", "random_flip")
    info = TrainingSpec.model_fields
    assert {field: _parsed(params, field, info[field]) for field in fields} == {
        field: getattr(spec.training, field) for field in fields
    }
    base = ["train", "--run-name", "r", "--base-model", str(tmp_path / "m"), "--run-dir", str(tmp_path / "d")]
    result = CliRunner().invoke(app, [*base, "--lr-warmup-steps", "3"])
    text = " ".join(result.output.replace("│", " ").split())  # unwrapped from rich's error box
    assert result.exit_code == 2 and "spec.training.lrWarmupSteps 3 needs a schedule with a warm-up" in text


@pytest.mark.parametrize(("training", "flag"), [({}, None), ({"maxGradNorm": None}, "--no-max-grad-norm"),
                                                ({"snrGamma": None}, "--no-snr-gamma"),
                                                ({"maxGradNorm": 0.5}, "--max-grad-norm")])  # fmt: skip
def test_an_absent_flag_is_the_spec_default_and_no_flag_is_null(monkeypatch, training, flag):
    """A field that defaults to a value but may be null (maxGradNorm 1.0, null: no clipping) is its
    default when the flag is absent, as in the spec, and null only with --no-<field>: the CLI run by
    hand and the Job's argv train the same."""
    from zthumb_contract.spec import TrainingSpec
    from zthumb_trainer.train import loop

    seen = []
    monkeypatch.setattr(loop, "run_training", lambda config: seen.append(config) or {})
    spec = LoRAFinetuneSpec.model_validate({"training": training})
    step = next(step for step in build_steps("style", spec, "/data", "http://s") if step.name == "train")
    assert flag is None or flag in step.args
    args = list(step.args)
    for option in ("--max-grad-norm", "--snr-gamma"):  # as a user who leaves them to their defaults
        if flag is None and option in args:
            del args[args.index(option) : args.index(option) + 2]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen[0].max_grad_norm == spec.training.max_grad_norm
    assert seen[0].snr_gamma == spec.training.snr_gamma
    assert TrainingSpec().max_grad_norm == 1.0  # the default the hand-run CLI gets
