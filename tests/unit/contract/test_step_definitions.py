"""The step definitions a Job and a local run execute: each path flag carries the path
``RunPaths`` gives it, secrets reach the env and never the argv, and ``spec_args`` turns a spec
section into the flags the trainer CLI generates from the same fields.

The trainer's side (every step's argv parses, the values round-trip) is in
``tests/unit/trainer/test_cli.py``; here the argv is read as pairs, without the trainer.
"""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, Field
from zthumb_contract import env
from zthumb_contract.dataset_spec import DatasetSourceSpec
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.spec_base import SecretKeyRef
from zthumb_contract.steps import (
    TRAINER_COMMAND,
    RunPaths,
    deploy_env,
    eval_step,
    fetch_model_step,
    option_name,
    prepare_dataset_step,
    spec_args,
    train_step,
    unset_option,
)
from zthumb_contract.tracking_spec import TrackingSpec

SERVER = "http://zthumb.ml.svc:8080"


def _paths(spec: dict | None = None) -> RunPaths:
    return RunPaths("/data", "style", LoRAFinetuneSpec.model_validate(spec or {}))


def _flags(args: tuple[str, ...]) -> dict[str, str]:
    """``--flag value`` pairs after the subcommand (a value never starts with ``--`` here)."""
    pairs: dict[str, str] = {}
    rest = list(args[1:])
    for index, item in enumerate(rest):
        if item.startswith("--") and index + 1 < len(rest) and not rest[index + 1].startswith("--"):
            pairs.setdefault(item, rest[index + 1])
    return pairs


def test_fetch_model_reads_the_spec_and_writes_below_the_data_root() -> None:
    paths = _paths({"baseModel": {"tokenSecretRef": {"name": "hf"}, "maxBytes": 1234}})
    step = fetch_model_step(paths)
    base = paths.spec.base_model
    assert step.name == "fetch-model" and step.args[0] == "fetch-model"
    assert step.argv == [*TRAINER_COMMAND, *step.args]
    assert _flags(step.args) == {
        "--url": base.url,
        "--sha256": base.sha256,
        "--output": paths.base_model,
        "--config-url": base.config_url,
        "--config-dir": paths.base_model_config,
        "--max-bytes": "1234",
    }
    assert paths.base_model == f"/data/{base.path}"
    assert "--no-allow-insecure-http" in step.args
    # The token is env from its Secret, never a flag; the fields with flags of their own are not
    # repeated by spec_args.
    assert step.secret_env == {"HF_TOKEN": SecretKeyRef(name="hf")}
    assert not any("token" in arg or arg == "--path" for arg in step.args)
    assert not step.gpu and not step.reports_progress and step.nodes == 1


def test_fetch_model_without_a_token_has_no_secret_env() -> None:
    assert fetch_model_step(_paths()).secret_env == {}


def test_prepare_dataset_paths_and_captioner() -> None:
    paths = _paths({"dataset": {"captioning": {"enabled": True, "url": "https://e.com/blip.safetensors",
                                               "sha256": "1" * 64, "configUrl": "https://e.com/blip",
                                               "path": "models/blip", "configPath": "models/blip-config",
                                               "tokenSecretRef": {"name": "hf", "key": "t"}}}})  # fmt: skip
    step = prepare_dataset_step(paths)
    flags = _flags(step.args)
    assert step.args[0] == "prepare-dataset"
    assert flags["--dataset"] == paths.dataset == f"/data/{paths.spec.dataset.path}"
    assert flags["--output"] == paths.run_dir == "/data/outputs/lora/style"
    assert flags["--dataset-cache"] == paths.dataset_cache
    assert flags["--captioning-model"] == "/data/models/blip"
    assert flags["--captioning-config"] == "/data/models/blip-config"
    assert flags["--trigger-word"] == paths.spec.dataset.trigger_word
    assert "--path" not in step.args  # spec.dataset.path is --dataset, resolved below the root
    assert step.secret_env == {"HF_TOKEN": SecretKeyRef(name="hf", key="t")}


def test_prepare_dataset_without_captioning_passes_no_captioner() -> None:
    step = prepare_dataset_step(_paths())
    assert "--captioning-model" not in step.args and step.secret_env == {}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({}, {}),
        ({"http": {"url": "https://e.com/d.zip", "sha256": "0" * 64}}, {}),
        (
            {"http": {"url": "https://e.com/d.zip", "sha256": "0" * 64, "tokenSecretRef": {"name": "d"}}},
            {env.DATASET_TOKEN: SecretKeyRef(name="d")},
        ),
        ({"s3": {"bucket": "pics"}}, {}),
        (
            {"s3": {"bucket": "pics", "credentialsSecretRef": {"name": "s3", "accessKeyIdKey": "id"}}},
            {
                env.AWS_ACCESS_KEY_ID: SecretKeyRef(name="s3", key="id"),
                env.AWS_SECRET_ACCESS_KEY: SecretKeyRef(name="s3", key="secretAccessKey"),
            },
        ),
    ],
    ids=["volume", "http", "http-token", "s3-anonymous", "s3-credentials"],
)
def test_a_remote_datasets_credentials_are_env_from_their_secret(source: dict, expected: dict) -> None:
    paths = _paths({"dataset": {"source": source}})
    assert DatasetSourceSpec.model_validate(source).remote is bool(source)
    step = prepare_dataset_step(paths)
    assert step.secret_env == expected
    for ref in expected.values():
        assert ref.name not in step.args and ref.key not in step.args


def test_train_is_the_gpu_step_that_reports_progress() -> None:
    paths = _paths({"resources": {"gpus": 2, "nodes": 3}})
    step = train_step(paths)
    flags = _flags(step.args)
    assert step.args[0] == "train"
    assert (step.gpu, step.reports_progress, step.nodes) == (True, True, 3)
    assert flags["--run-name"] == "style"
    assert flags["--base-model"] == paths.base_model
    assert flags["--model-config"] == paths.base_model_config
    assert flags["--run-dir"] == paths.run_dir
    assert flags["--export-dir"] == paths.adapter_dir == "/data/models/lora/style"
    assert flags["--base-model-sha256"] == paths.spec.base_model.sha256
    assert flags["--trigger-word"] == paths.spec.dataset.trigger_word
    assert (flags["--gpus"], flags["--nodes"]) == ("2", "3")
    assert flags["--rank"] == str(paths.spec.training.rank)


def test_eval_talks_to_the_server_and_writes_the_report() -> None:
    paths = _paths({"deploy": {"loraScale": 0.75}})
    step = eval_step(paths, SERVER)
    flags = _flags(step.args)
    assert step.args[0] == "eval" and not step.gpu and not step.reports_progress
    assert flags["--server-url"] == SERVER
    assert flags["--run-name"] == "style"
    assert flags["--output"] == paths.eval_dir == "/data/outputs/lora_eval/style"
    assert flags["--lora-path"] == "style"  # relative to the server's LoRA root
    assert flags["--trigger-word"] == paths.spec.dataset.trigger_word
    assert flags["--train-summary"] == f"{paths.run_dir}/summary.json"
    assert flags["--served-scale"] == "0.75"
    assert flags["--clip-model"] == paths.clip_model
    assert flags["--clip-config"] == paths.clip_config
    assert flags["--dino-model"] == paths.dino_model
    assert flags["--dino-config"] == paths.dino_config
    assert flags["--aesthetic-model"] == paths.aesthetic_model
    # spec.eval.enabled decides whether the step exists, it is not one of its options; of
    # spec.training only the tracking reaches the eval.
    assert "--enabled" not in step.args and "--no-enabled" not in step.args
    assert "--rank" not in step.args


def test_eval_gets_the_clip_token_only_while_clip_is_on() -> None:
    ref = {"name": "hf"}
    on = eval_step(_paths({"eval": {"clip": {"tokenSecretRef": ref}}}), SERVER)
    off = eval_step(_paths({"eval": {"clip": {"enabled": False, "tokenSecretRef": ref}}}), SERVER)
    assert on.secret_env == {"HF_TOKEN": SecretKeyRef(name="hf")}
    assert off.secret_env == {}


def test_deploy_env_points_the_server_at_the_adapter_and_scale() -> None:
    paths = _paths({"deploy": {"loraScale": 0.5}})
    assert deploy_env(paths) == {env.LORA_PATH: "/data/models/lora/style", env.LORA_SCALE: "0.5"}


class _Nested(BaseModel):
    width: int = 64


class _Section(BaseModel):
    rank: int = 4
    bucketing: bool = True
    shuffle: bool = False
    seeds: list[int] = [0, 1]
    tags: list[str] = []
    prompts: Annotated[list[str], Field(min_length=1)] = ["a"]
    max_grad_norm: float | None = 1.0
    comment: str | None = None
    nested: _Nested = _Nested()
    bias: str = "none"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {},
            ["--rank", "4", "--bucketing", "--no-shuffle", "--seed", "0", "--seed", "1",
             "--prompt", "a", "--max-grad-norm", "1.0", "--bias", "none"],
        ),
        (
            {"bucketing": False, "shuffle": True, "seeds": [], "tags": ["x", "y"], "max_grad_norm": None,
             "comment": "hi", "nested": _Nested(width=32)},
            ["--rank", "4", "--no-bucketing", "--shuffle", "--no-seeds", "--tag", "x", "--tag", "y",
             "--prompt", "a", "--no-max-grad-norm", "--comment", "hi", "--nested", '{"width":32}',
             "--bias", "none"],
        ),
    ],
    ids=["defaults", "changed"],
)  # fmt: skip
def test_spec_args_one_flag_per_field(values: dict, expected: list[str]) -> None:
    assert spec_args(_Section(**values)) == expected


def test_spec_args_leaves_out_excluded_fields() -> None:
    args = spec_args(_Section(), exclude={"rank", "seeds", "bucketing"})
    assert args == ["--no-shuffle", "--prompt", "a", "--max-grad-norm", "1.0", "--bias", "none"]


@pytest.mark.parametrize(
    ("field", "option", "unset"),
    [
        ("rank", "rank", None),
        ("bias", "bias", None),  # ends in "s" but is not a list
        ("seeds", "seed", "no_seeds"),  # items by default: --no-seeds empties it
        ("tags", "tag", None),  # empty by default: an absent flag is the empty list
        ("prompts", "prompt", None),  # never empty
        ("max_grad_norm", "max_grad_norm", "no_max_grad_norm"),  # may be None, defaults to a value
        ("comment", "comment", None),  # None by default: an absent flag is None
        ("nested", "nested", None),
    ],
)
def test_option_names_and_their_unset_flags(field: str, option: str, unset: str | None) -> None:
    info = _Section.model_fields[field]
    assert option_name(field, info) == option
    assert unset_option(field, info) == unset


def test_a_list_whose_name_does_not_end_in_s_keeps_it() -> None:
    class Data(BaseModel):
        data: list[int] = [1]

    assert option_name("data", Data.model_fields["data"]) == "data"
    assert spec_args(Data()) == ["--data", "1"]


def test_a_list_made_by_a_default_factory_has_its_unset_flag() -> None:
    class Factory(BaseModel):
        extras: list[int] = Field(default_factory=lambda: [7])

    info = Factory.model_fields["extras"]
    assert unset_option("extras", info) == "no_extras"
    assert spec_args(Factory()) == ["--extra", "7"]
    assert spec_args(Factory(extras=[])) == ["--no-extras"]


def test_eval_gets_the_training_tracking_and_nothing_else_of_training() -> None:
    paths = _paths({"training": {"tracking": {"mlflow": {"trackingUri": "http://mlflow.ml.svc:5000"}}}})
    args = eval_step(paths, SERVER).args
    tracking = args[args.index("--tracking") + 1]
    assert TrackingSpec.model_validate_json(tracking) == paths.spec.training.tracking
    assert "--rank" not in args and "--learning-rate" not in args
