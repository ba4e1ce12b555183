"""manifests/operator/: the RBAC the operator needs for the runs' identities and the admission
settings, and the ValidatingAdmissionPolicy that says at apply time what the operator enforces."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from lft_helpers import ROOT, make_run
from zthumb_contract import crd
from zthumb_operator import identity
from zthumb_operator.config import OperatorConfig

MANIFESTS = ROOT / "manifests" / "operator"
ADMISSION = MANIFESTS / "admission"
OPERATOR_ROLES = [MANIFESTS / "clusterrole.yaml", MANIFESTS / "namespaced" / "role.yaml"]
# The policy's allowed lists (variables), and the operator setting (and env) each one mirrors.
LISTS = {
    "allowedTrainerImagePrefixes": "allowed_trainer_images",
    "allowedNodeSelectorKeys": "allowed_node_selector_keys",
    "allowedTolerationKeys": "allowed_toleration_keys",
}


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def grants(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        and not rule.get("resourceNames")
        for rule in rules
    )


@pytest.mark.parametrize("path", OPERATOR_ROLES, ids=lambda p: p.name)
def test_the_operator_may_create_and_adopt_each_runs_identity(path: Path) -> None:
    rules = load(path)["rules"]
    for group, resource in (("", "serviceaccounts"), ("rbac.authorization.k8s.io", "roles"),
                            ("rbac.authorization.k8s.io", "rolebindings")):  # fmt: skip
        for verb in ("create", "get"):
            assert grants(rules, group, resource, verb), (resource, verb)
    assert grants(rules, "", "secrets", "get")  # the labels of the Secrets a run names
    # RBAC's escalation check: the operator holds everything the runs' Roles grant.
    for rule in identity.build_role(make_run())["rules"]:
        for verb in rule["verbs"]:
            assert grants(rules, rule["apiGroups"][0], rule["resources"][0], verb)


def test_no_shared_trainer_service_account_is_shipped() -> None:
    for path in MANIFESTS.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (
                doc.get("kind") == "ServiceAccount" and doc["metadata"]["name"] == "zthumb-trainer"
            ), path


def policy_lists() -> dict[str, tuple[str, ...]]:
    """The allowed lists of the policy: its variables that are list literals, by variable name."""
    variables = load(ADMISSION / "policy.yaml")["spec"]["variables"]
    return {v["name"]: tuple(ast.literal_eval(v["expression"])) for v in variables if v["name"] in LISTS}


def test_the_policys_lists_and_the_operator_deployment_say_the_operators_defaults() -> None:
    defaults = OperatorConfig()
    lists = policy_lists()
    assert sorted(lists) == sorted(LISTS)
    (container,) = load(MANIFESTS / "deployment.yaml")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    for variable, setting in LISTS.items():
        assert lists[variable] == getattr(defaults, setting), variable
        assert tuple(env[f"ZTHUMB_OPERATOR_{setting.upper()}"].split(",")) == lists[variable]
    assert env["ZTHUMB_OPERATOR_REQUIRE_SECRET_LABEL"] == "true"
    assert env["ZTHUMB_OPERATOR_DEPLOYMENT_SELECTOR"] == ",".join(
        f"{k}={v}" for k, v in defaults.deployment_selector.items()
    )


def test_the_policy_judges_new_runs_and_each_message_names_its_spec_field() -> None:
    policy = load(ADMISSION / "policy.yaml")
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert "paramKind" not in spec  # the lists live in the policy (see its header)
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        [crd.GROUP],
        [crd.PLURAL],
        ["CREATE"],
    )
    assert rule["apiVersions"] == [crd.VERSION]  # named: the API server type-checks against its schema
    expressions = " ".join(v["expression"] + v["messageExpression"] for v in spec["validations"])
    for variable in LISTS:
        assert f"variables.{variable}" in expressions, variable
    fields = ["spec.images.trainer", "spec.resources.nodeSelector", "spec.resources.tolerations"]
    assert len(spec["validations"]) == len(fields)
    for validation, field in zip(spec["validations"], fields, strict=True):
        assert validation["message"].startswith(f"{field}: ")
        assert validation["messageExpression"].startswith(f"'{field}: ")
        assert validation["reason"] == "Forbidden"


def test_the_binding_denies_with_the_policy() -> None:
    binding = load(ADMISSION / "binding.yaml")["spec"]
    assert binding["policyName"] == load(ADMISSION / "policy.yaml")["metadata"]["name"]
    assert binding["validationActions"] == ["Deny"]
    assert "paramRef" not in binding
