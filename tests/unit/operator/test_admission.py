"""What a run may use (admission.py and its settings in config.py): each refusal fails the run
before any Job exists, with reason NotAllowed and a message naming the spec field."""

from __future__ import annotations

from typing import Any

import pytest
from reconcile_harness import Harness
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_operator import admission, cli
from zthumb_operator.config import OperatorConfig

LABELLED = {admission.SECRET_ALLOW_LABEL: admission.SECRET_ALLOW_VALUE}
SHA = "0" * 64
# Every field of the spec that names a Secret, with a spec that sets it to a Secret "s".
SECRET_FIELDS = {
    "spec.baseModel.tokenSecretRef": {"baseModel": {"tokenSecretRef": {"name": "s"}}},
    "spec.dataset.source.http.tokenSecretRef": {
        "dataset": {
            "source": {
                "http": {"url": "https://data.example/d.zip", "sha256": SHA, "tokenSecretRef": {"name": "s"}}
            }
        }
    },
    "spec.dataset.source.s3.credentialsSecretRef": {
        "dataset": {"source": {"s3": {"bucket": "data", "credentialsSecretRef": {"name": "s"}}}}
    },
    "spec.eval.clip.tokenSecretRef": {"eval": {"clip": {"tokenSecretRef": {"name": "s"}}}},
    "spec.images.pullSecrets[0]": {"images": {"pullSecrets": ["s"]}},
    "spec.training.tracking.mlflow.credentialsSecretRef": {
        "training": {
            "tracking": {
                "mlflow": {"trackingUri": "https://mlflow.example", "credentialsSecretRef": {"name": "s"}}
            }
        }
    },
}


def refused(h: Harness, *fields: str) -> str:
    """The run failed as NotAllowed before any Job, naming ``fields``; returns the message."""
    status = h.status()
    assert (status.get("phase"), status.get("reason")) == ("Failed", admission.REASON), status
    assert h.api.creates == []
    for field in fields:
        assert field in status["message"], status["message"]
    assert any(reason == admission.REASON for _, reason, _ in h.api.events)
    return str(status["message"])


def started(h: Harness) -> None:
    assert h.status().get("phase") == "Downloading", h.status()
    assert h.api.creates == ["z-style-fetch-model"]


# --------------------------------------------------------------------------- settings


def test_the_defaults_are_safe_for_a_shared_namespace() -> None:
    config = OperatorConfig()
    assert config.allowed_trainer_images == ("ghcr.io/zthumb/trainer:", "ghcr.io/zthumb/trainer@")
    assert config.require_secret_label is True
    assert config.deployment_selector == {"app.kubernetes.io/name": "zthumb"}
    assert config.allowed_node_selector_keys == ("*",)
    assert config.allowed_toleration_keys == ("nvidia.com/gpu",)


def test_lists_and_the_selector_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ZTHUMB_OPERATOR_ALLOWED_TRAINER_IMAGES", " registry.example/ml/ , ghcr.io/zthumb/trainer@"
    )
    monkeypatch.setenv("ZTHUMB_OPERATOR_ALLOWED_TOLERATION_KEYS", "")
    monkeypatch.setenv("ZTHUMB_OPERATOR_DEPLOYMENT_SELECTOR", "app.kubernetes.io/name=zthumb, team=a")
    monkeypatch.setenv("ZTHUMB_OPERATOR_REQUIRE_SECRET_LABEL", "false")
    config = OperatorConfig()
    assert config.allowed_trainer_images == ("registry.example/ml/", "ghcr.io/zthumb/trainer@")
    assert config.allowed_toleration_keys == ()
    assert config.deployment_selector == {"app.kubernetes.io/name": "zthumb", "team": "a"}
    assert config.require_secret_label is False


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ZTHUMB_OPERATOR_ALLOWED_TRAINER_IMAGES", "ghcr.io/zthumb"),  # would match ghcr.io/zthumb-evil/
        ("ZTHUMB_OPERATOR_DEPLOYMENT_SELECTOR", "app.kubernetes.io/name"),
        ("ZTHUMB_OPERATOR_REQUIRE_SECRET_LABEL", "maybe"),
    ],
)
def test_a_bad_setting_exits_2_naming_the_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main(["--check-config"]) == 2
    assert variable in capsys.readouterr().err


# --------------------------------------------------------------------------- spec-only rules


def test_the_trainer_image_must_start_with_an_allowed_prefix() -> None:
    h = Harness({"images": {"trainer": "ghcr.io/zthumb-evil/trainer:1"}})
    h.reconcile()
    message = refused(h, "spec.images.trainer")
    assert "ghcr.io/zthumb-evil/trainer:1" in message and "ghcr.io/zthumb/trainer:" in message


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("ghcr.io/zthumb/trainer:0.2.0", ("ghcr.io/zthumb/trainer:",)),
        ("ghcr.io/zthumb/trainer@sha256:" + SHA, ("ghcr.io/zthumb/trainer@",)),
        ("anything.example/x:1", ("*",)),
    ],
)
def test_an_allowed_trainer_image_runs(image: str, allowed: tuple[str, ...]) -> None:
    h = Harness({"images": {"trainer": image}}, allowed_trainer_images=allowed)
    h.reconcile()
    started(h)
    assert (
        h.api.jobs[("ml", "z-style-fetch-model")]["spec"]["template"]["spec"]["containers"][0]["image"]
        == image
    )


def test_no_allowed_prefix_means_only_the_operators_image() -> None:
    h = Harness({"images": {"trainer": "ghcr.io/zthumb/trainer:0.1.0"}}, allowed_trainer_images=())
    h.reconcile()
    assert "allowed prefixes: none" in refused(h, "spec.images.trainer")
    unset = Harness(allowed_trainer_images=())
    unset.reconcile()
    started(unset)


def test_node_selector_keys_outside_the_allowed_ones_are_refused() -> None:
    spec = {"resources": {"nodeSelector": {"zthumb.io/pool": "gpu", "kubernetes.io/hostname": "n1"}}}
    h = Harness(spec, allowed_node_selector_keys=("zthumb.io/pool",))
    h.reconcile()
    message = refused(h, "spec.resources.nodeSelector")
    assert "'kubernetes.io/hostname'" in message and "'zthumb.io/pool'" not in message
    ok = Harness(
        {"resources": {"nodeSelector": {"zthumb.io/pool": "gpu"}}},
        allowed_node_selector_keys=("zthumb.io/pool",),
    )
    ok.reconcile()
    started(ok)


@pytest.mark.parametrize(
    ("toleration", "shown"),
    [
        ({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}, "control-plane"),
        ({"operator": "Exists"}, "every taint"),  # no key: tolerates every taint
    ],
)
def test_toleration_keys_outside_the_allowed_ones_are_refused(toleration: dict[str, Any], shown: str) -> None:
    spec = {"resources": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}, toleration]}}
    h = Harness(spec)
    h.reconcile()
    assert shown in refused(h, "spec.resources.tolerations[1].key")


def test_every_refusal_of_a_run_is_in_one_message() -> None:
    spec = {
        "images": {"trainer": "evil.example/x:1"},
        "resources": {"tolerations": [{"operator": "Exists"}]},
        "baseModel": {"tokenSecretRef": {"name": "hf"}},
    }
    h = Harness(spec)
    h.reconcile()
    refused(h, "spec.images.trainer", "spec.resources.tolerations[0].key", "spec.baseModel.tokenSecretRef")


# --------------------------------------------------------------------------- Secrets


def test_the_secret_fields_are_found_wherever_the_spec_declares_them() -> None:
    for field, spec in SECRET_FIELDS.items():
        assert list(admission.secret_refs(LoRAFinetuneSpec.model_validate(spec))) == [(field, "s")]
    assert list(admission.secret_refs(LoRAFinetuneSpec())) == []


@pytest.mark.parametrize("field", sorted(SECRET_FIELDS))
def test_an_unlabelled_secret_is_refused(field: str) -> None:
    h = Harness(SECRET_FIELDS[field])
    h.api.secret_labels[("ml", "s")] = {"team": "a"}
    h.reconcile()
    message = refused(h, field)
    assert f"Secret s is not labelled {admission.SECRET_ALLOW_LABEL}=true" in message


@pytest.mark.parametrize("field", sorted(SECRET_FIELDS))
def test_a_labelled_secret_may_be_used(field: str) -> None:
    h = Harness(SECRET_FIELDS[field])
    h.api.secret_labels[("ml", "s")] = LABELLED
    h.reconcile()
    started(h)


def test_a_missing_secret_is_refused_by_name() -> None:
    h = Harness(SECRET_FIELDS["spec.baseModel.tokenSecretRef"])
    h.reconcile()
    assert "Secret s does not exist" in refused(h, "spec.baseModel.tokenSecretRef")


def test_without_the_label_requirement_no_secret_is_looked_up() -> None:
    h = Harness(SECRET_FIELDS["spec.baseModel.tokenSecretRef"], require_secret_label=False)
    h.reconcile()  # the Secret does not exist in the fake: a lookup would refuse the run
    started(h)


# --------------------------------------------------------------------------- Deployments


def test_a_deployment_without_the_servers_labels_is_refused_before_any_job() -> None:
    h = Harness()
    h.api.deployments[("ml", "zthumb")]["metadata"]["labels"] = {"app.kubernetes.io/name": "payroll"}
    h.reconcile()
    assert "app.kubernetes.io/name=zthumb" in refused(h, "spec.deploy.deployment")


def test_any_deployment_with_an_empty_selector_or_without_deploy() -> None:
    for h in (Harness(deployment_selector={}), Harness({"deploy": {"enabled": False}})):
        h.api.deployments[("ml", "zthumb")]["metadata"]["labels"] = {}
        h.reconcile()
        started(h)


def test_a_deployment_that_appears_unlabelled_later_is_refused_before_its_rollout() -> None:
    h = Harness()
    server = h.api.deployments.pop(("ml", "zthumb"))
    h.reconcile()  # admitted: no Deployment yet
    for step in ("fetch-model", "prepare-dataset", "train"):
        h.complete(step)
        h.reconcile()
    server["metadata"]["labels"] = {}
    h.api.deployments[("ml", "zthumb")] = server
    h.reconcile()
    status = h.status()
    assert (status["phase"], status["reason"]) == ("Failed", admission.REASON)
    assert "spec.deploy.deployment" in status["message"]
    env = server["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "Z_LORA_PATH", "value": "/data/models/lora/old"}]  # never patched
    assert not server["metadata"]["annotations"]  # nor locked


def test_runs_are_checked_again_after_a_restart_with_new_settings() -> None:
    h = Harness(
        {"images": {"trainer": "registry.example/t:1"}}, allowed_trainer_images=("registry.example/",)
    )
    h.reconcile()
    started(h)
    restarted = Harness({"images": {"trainer": "registry.example/t:1"}})
    restarted.api.runs[("ml", "z-style")]["status"] = dict(h.status())
    restarted.controller.runs[("ml", "z-style")]["status"] = dict(h.status())
    restarted.reconcile()
    assert restarted.status()["reason"] == admission.REASON


def test_each_refusal_says_what_is_allowed_and_where_that_is_set() -> None:
    config = OperatorConfig(allowed_node_selector_keys=("zthumb.io/pool", "team"), allowed_toleration_keys=())
    spec = LoRAFinetuneSpec.model_validate(
        {
            "resources": {
                "nodeSelector": {"kubernetes.io/hostname": "n1"},
                "tolerations": [{"operator": "Exists"}],
            }
        }
    )
    assert admission.spec_refusals(config, spec) == [
        "spec.resources.nodeSelector: key 'kubernetes.io/hostname' is not allowed here (allowed keys: "
        "zthumb.io/pool, team, ZTHUMB_OPERATOR_ALLOWED_NODE_SELECTOR_KEYS)",
        "spec.resources.tolerations[0].key: '' (every taint) is not allowed here (allowed keys: none, "
        "ZTHUMB_OPERATOR_ALLOWED_TOLERATION_KEYS)",
    ]
    assert admission.secret_refusal("spec.dataset.source.http.tokenSecretRef", "s", {}) == (
        "spec.dataset.source.http.tokenSecretRef: Secret s is not labelled "
        f"{admission.SECRET_ALLOW_LABEL}={admission.SECRET_ALLOW_VALUE}, so runs may not use it; an admin "
        "labels the Secrets that any run in this namespace may send to a host of its choosing"
    )


def test_a_trainer_image_refusal_names_the_prefixes_and_the_way_out() -> None:
    config = OperatorConfig(allowed_trainer_images=("registry.example/zthumb/",))
    spec = LoRAFinetuneSpec.model_validate({"images": {"trainer": "evil.example/miner:1"}})
    assert admission.spec_refusals(config, spec) == [
        "spec.images.trainer: image 'evil.example/miner:1' is not allowed here (allowed prefixes: "
        "registry.example/zthumb/, ZTHUMB_OPERATOR_ALLOWED_TRAINER_IMAGES); leave it unset for the "
        "operator's trainer image"
    ]
