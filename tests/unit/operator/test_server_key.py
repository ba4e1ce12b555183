"""The server's API key reaches the eval Job by reference: found in the target Deployment (as the
chart renders it), copied as the same secretKeyRef, never as the key; any other form is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from reconcile_harness import Harness, deployment
from zthumb_contract import env as contract_env
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.spec_base import SecretKeyRef
from zthumb_contract.stages import build_steps
from zthumb_operator import builders as b
from zthumb_operator import deployments, serverkey

SETTINGS = b.JobSettings(image="registry.example/trainer:1")
# What charts/zthumb renders into container zthumb (templates/deployment.yaml).
CHART_KEY_ENV = {
    "name": "ZTHUMB_API_KEY",
    "valueFrom": {"secretKeyRef": {"name": "zthumb-api-key", "key": "api-key"}},
}


def server(env: list[dict[str, Any]], container: str = "zthumb") -> dict[str, Any]:
    d = deployment(env)
    d["spec"]["template"]["spec"]["containers"][0]["name"] = container
    return d


def eval_job(run: dict[str, Any], ref: SecretKeyRef | None) -> dict[str, Any]:
    spec = LoRAFinetuneSpec.from_manifest(run)
    (step,) = [
        s for s in build_steps("z-style", spec, "/data", "http://zthumb.ml.svc:8080") if s.name == "eval"
    ]
    return b.build_job(serverkey.with_server_key(step, ref), run=run, spec=spec, settings=SETTINGS)


def job_env(job: dict[str, Any]) -> list[dict[str, Any]]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container["env"]


# --------------------------------------------------------------------------- pure


def test_the_charts_secret_reference_is_found() -> None:
    d = server([{"name": "ZTHUMB_BACKEND", "value": "full"}, CHART_KEY_ENV])
    assert serverkey.server_key_ref(d, "zthumb") == SecretKeyRef(name="zthumb-api-key", key="api-key")


@pytest.mark.parametrize(
    "env",
    [
        [{"name": "ZTHUMB_BACKEND", "value": "full"}],
        [{"name": "ZTHUMB_API_KEY", "value": ""}],  # the server reads an empty key as none
    ],
    ids=["no-key", "empty-value"],
)
def test_a_server_without_a_key_gives_none(env: list[dict[str, Any]]) -> None:
    assert serverkey.server_key_ref(server(env), "zthumb") is None


def test_the_last_entry_of_the_name_wins_whatever_its_case() -> None:
    # Kubernetes keeps the last of two entries of a name; the server reads its settings
    # case-insensitively.
    later = {"name": "zthumb_api_key", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}
    d = server([CHART_KEY_ENV, later])
    assert serverkey.server_key_ref(d, "zthumb") == SecretKeyRef(name="other", key="k")


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"name": "ZTHUMB_API_KEY", "value": "s3cret-literal"}, "literal value"),
        (
            {"name": "ZTHUMB_API_KEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            "from configMapKeyRef, not from a Secret",
        ),
        (
            {
                "name": "ZTHUMB_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}},
            },
            "as optional",
        ),
        # A reference missing its Secret's name or its key names no Secret the eval pod could use.
        ({"name": "ZTHUMB_API_KEY", "valueFrom": {"secretKeyRef": {"key": "k"}}}, "from secretKeyRef, not"),
        ({"name": "ZTHUMB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "s"}}}, "from secretKeyRef, not"),
    ],
    ids=["literal", "configmap", "optional", "ref-without-name", "ref-without-key"],
)
def test_a_key_that_is_not_a_plain_secret_reference_is_refused(entry: dict[str, Any], says: str) -> None:
    with pytest.raises(serverkey.ServerKeyError) as error:
        serverkey.server_key_ref(server([entry]), "zthumb")
    assert error.value.reason == serverkey.KEY_NOT_IN_SECRET
    assert says in error.value.message and "ZTHUMB_API_KEY" in error.value.message
    assert "secretKeyRef" in error.value.message  # says how to fix it
    assert "s3cret-literal" not in error.value.message


def test_a_missing_container_is_named() -> None:
    deployment = server([CHART_KEY_ENV], container="other")
    deployment["metadata"]["name"] = "zthumb-api"
    with pytest.raises(serverkey.ServerKeyError) as error:
        serverkey.server_key_ref(deployment, "zthumb")
    assert error.value.reason == serverkey.CONTAINER_NOT_FOUND
    assert error.value.message == "deployment zthumb-api has no container 'zthumb'"


def test_an_env_entry_without_a_name_is_not_the_key() -> None:
    assert serverkey.server_key_ref(server([{"value": "x"}, CHART_KEY_ENV]), "zthumb") is not None
    assert serverkey.server_key_ref(server([{"value": "x"}]), "zthumb") is None


def test_the_eval_job_gets_the_same_secret_reference(run: dict[str, Any]) -> None:
    ref = SecretKeyRef(name="zthumb-api-key", key="api-key")
    env = job_env(eval_job(run, ref))
    (entry,) = [e for e in env if e["name"] == contract_env.API_KEY]
    assert entry == {
        "name": "ZTHUMB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "zthumb-api-key", "key": "api-key"}},
    }


def test_no_key_no_env_and_the_other_secret_env_stays(run: dict[str, Any]) -> None:
    spec = LoRAFinetuneSpec.from_manifest(run)
    (step,) = [s for s in build_steps("z-style", spec, "/data", "http://x") if s.name == "eval"]
    step_with_token = serverkey.with_server_key(step, None)
    assert step_with_token is step
    assert contract_env.API_KEY not in {e["name"] for e in job_env(eval_job(run, None))}
    keyed = serverkey.with_server_key(step, SecretKeyRef(name="k", key="api-key"))
    assert keyed.secret_env == {
        **step.secret_env,
        contract_env.API_KEY: SecretKeyRef(name="k", key="api-key"),
    }
    assert keyed.args == step.args  # never in the argv


# --------------------------------------------------------------------------- reconcile


def server_env(h: Harness) -> list[dict[str, Any]]:
    """The env list of the fake server Deployment's container, to change in place."""
    pod = h.api.deployments[("ml", "zthumb")]["spec"]["template"]["spec"]
    env: list[dict[str, Any]] = pod["containers"][0]["env"]
    return env


def through_deploy(h: Harness) -> None:
    for step in ("fetch-model", "prepare-dataset", "train"):
        h.reconcile()
        h.complete(step)
    h.reconcile()  # deploy: lock, patch


def test_the_reconciled_eval_job_references_the_servers_secret() -> None:
    h = Harness()
    server_env(h).append(CHART_KEY_ENV)
    through_deploy(h)
    h.rollout_done()
    h.reconcile()
    assert h.status()["phase"] == "Evaluating"
    job = h.api.jobs[("ml", "z-style-eval")]
    (entry,) = [e for e in job_env(job) if e["name"] == "ZTHUMB_API_KEY"]
    assert entry["valueFrom"] == CHART_KEY_ENV["valueFrom"]
    # A secretKeyRef is resolved by the kubelet in the pod's namespace: the eval pod needs no API
    # access (no token) and no RBAC for it.
    assert job["metadata"]["namespace"] == "ml"
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_a_key_turned_literal_after_the_rollout_fails_the_eval_stage_without_a_job() -> None:
    h = Harness()
    through_deploy(h)
    h.rollout_done()
    server_env(h).append({"name": "ZTHUMB_API_KEY", "value": "s3cret-literal"})
    h.reconcile()
    st = h.status()
    assert st["phase"] == "Failed" and st["reason"] == serverkey.KEY_NOT_IN_SECRET, st
    assert "step eval" in st["message"] and "literal value" in st["message"]
    assert ("ml", "z-style-eval") not in h.api.jobs
    assert "s3cret-literal" not in json.dumps(st) + json.dumps(h.api.events)


def test_a_literal_key_is_refused_before_the_adapter_is_rolled_out() -> None:
    h = Harness()
    server_env(h).append({"name": "ZTHUMB_API_KEY", "value": "s3cret-literal"})
    through_deploy(h)
    st = h.status()
    assert st["phase"] == "Failed" and st["reason"] == serverkey.KEY_NOT_IN_SECRET, st
    assert "was not rolled out" in st["message"]
    d = h.api.deployments[("ml", "zthumb")]
    assert deployments.lora_env_values(d, "zthumb") == {"Z_LORA_PATH": "/data/models/lora/old"}
    assert deployments.ROLLOUT_OWNER_ANNOTATION not in d["metadata"]["annotations"]  # lock released
    assert "s3cret-literal" not in json.dumps(st)


def test_without_eval_a_literal_key_does_not_stop_the_rollout() -> None:
    h = Harness({"dataset": {"triggerWord": "z"}, "eval": {"enabled": False}})
    server_env(h).append({"name": "ZTHUMB_API_KEY", "value": "s3cret-literal"})
    through_deploy(h)
    h.rollout_done()
    h.reconcile()
    assert h.status()["phase"] == "Succeeded", h.status()


def test_a_key_is_never_sent_to_a_service_url_the_run_chooses() -> None:
    # Whoever may create a run would otherwise collect the server's key at a host of their own.
    h = Harness({"deploy": {"serviceUrl": "http://collector.example:9000"}})
    server_env(h).append(CHART_KEY_ENV)
    through_deploy(h)
    st = h.status()
    assert st["phase"] == "Failed" and st["reason"] == serverkey.KEY_TO_CHOSEN_URL, st
    assert "spec.deploy.serviceUrl" in st["message"] and "was not rolled out" in st["message"]
    assert ("ml", "z-style-eval") not in h.api.jobs


def test_a_service_url_without_a_server_key_is_still_called() -> None:
    h = Harness({"deploy": {"serviceUrl": "http://other:9000"}})
    through_deploy(h)
    h.rollout_done()
    h.reconcile()
    assert h.status()["phase"] == "Evaluating"
    job = h.api.jobs[("ml", "z-style-eval")]
    assert "http://other:9000" in json.dumps(job)
    assert "ZTHUMB_API_KEY" not in {e["name"] for e in job_env(job)}


def test_a_refusal_names_the_deployment_or_a_question_mark() -> None:
    literal = {"name": "ZTHUMB_API_KEY", "value": "s3cret-literal"}
    deployment = server([literal])
    deployment["metadata"]["name"] = "zthumb-api"
    with pytest.raises(serverkey.ServerKeyError) as named:
        serverkey.server_key_ref(deployment, "zthumb")
    assert named.value.message.startswith("deployment zthumb-api container 'zthumb' sets ZTHUMB_API_KEY")
    del deployment["metadata"]["name"]
    with pytest.raises(serverkey.ServerKeyError) as unnamed:
        serverkey.server_key_ref(deployment, "zthumb")
    assert unnamed.value.message.startswith("deployment ? container 'zthumb' sets ZTHUMB_API_KEY")
    deployment["spec"]["template"]["spec"]["containers"][0]["name"] = "other"
    with pytest.raises(serverkey.ServerKeyError) as missing:
        serverkey.server_key_ref(deployment, "zthumb")
    assert missing.value.message == "deployment ? has no container 'zthumb'"
