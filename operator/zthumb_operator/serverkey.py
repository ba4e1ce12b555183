"""The server's API key for the steps that call the server (eval), by reference only.

The chart gives the server container its key as ``ZTHUMB_API_KEY`` from a Secret
(``valueFrom.secretKeyRef``). The eval Job gets the very same ``secretKeyRef``, read from the
target Deployment when the eval stage starts: the key itself never passes through the operator,
its memory, the Job spec or the run's status, and a rotated Secret reaches both pods alike.

A key given any other way is refused (``ServerKeyError``): a literal ``value`` would have to be
copied into the Job spec, where everyone who can read Jobs reads it; a ConfigMap or a field
reference is not a Secret either. An ``optional`` reference is refused too: without its Secret the
server would run open while the eval pod could not start at all. ``envFrom`` is not looked into:
which names a Secret's ``envFrom`` provides is only known by reading the Secret, which the operator
has no right to do (a key that only comes that way makes the eval's requests fail with HTTP 401).

Pure: plain values in, values out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from zthumb_contract import env as contract_env
from zthumb_contract.spec_base import SecretKeyRef
from zthumb_contract.steps import StepDefinition

# The reason a run fails with when the server's key is not one the eval Job can reference.
KEY_NOT_IN_SECRET = "ApiKeyNotInSecret"
CONTAINER_NOT_FOUND = "ContainerNotFound"
DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"
# The reason a run fails with when the key would go to a URL the run's author chose.
KEY_TO_CHOSEN_URL = "ApiKeyToServiceUrl"

HOW_TO_FIX = (
    "put the key in a Secret and reference it with valueFrom.secretKeyRef (the chart does this "
    "by default; auth.existingSecret names your own Secret)"
)


class ServerKeyError(Exception):
    """The server's key cannot be passed on by reference; ``reason`` is the run's failure reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _container(deployment: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    template = (deployment.get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or []:
        if container.get("name") == name:
            return container
    return None


def _key_entry(container: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The container's last env entry for the key (Kubernetes: a later entry of a name wins). The
    server reads its settings case-insensitively, so ``zthumb_api_key`` counts too."""
    found = None
    for entry in container.get("env") or []:
        if str(entry.get("name", "")).upper() == contract_env.API_KEY:
            found = entry
    return found


def server_key_ref(deployment: Mapping[str, Any], container: str) -> SecretKeyRef | None:
    """The Secret reference of the server container's API key; None when the server has no key.

    Raises ``ServerKeyError`` when the container is missing or its key is not a plain Secret
    reference."""
    meta = deployment.get("metadata") or {}
    where = f"deployment {meta.get('name', '?')} container {container!r}"
    found = _container(deployment, container)
    if found is None:
        raise ServerKeyError(
            CONTAINER_NOT_FOUND, f"deployment {meta.get('name', '?')} has no container {container!r}"
        )
    entry = _key_entry(found)
    if entry is None:
        return None
    source = entry.get("valueFrom")
    if source is None:
        if not entry.get("value"):
            return None  # an empty value: the server runs without a key
        raise ServerKeyError(
            KEY_NOT_IN_SECRET,
            f"{where} sets {contract_env.API_KEY} as a literal value; the operator passes the key to "
            f"the eval Job only by reference and never copies it into a Job spec: {HOW_TO_FIX}",
        )
    ref = source.get("secretKeyRef")
    if not isinstance(ref, Mapping) or not ref.get("name") or not ref.get("key"):
        kinds = ", ".join(sorted(source)) or "nothing"
        raise ServerKeyError(
            KEY_NOT_IN_SECRET,
            f"{where} takes {contract_env.API_KEY} from {kinds}, not from a Secret: {HOW_TO_FIX}",
        )
    if ref.get("optional"):
        raise ServerKeyError(
            KEY_NOT_IN_SECRET,
            f"{where} takes {contract_env.API_KEY} from Secret {ref['name']} as optional: without that "
            "Secret the server would run open and the eval pod could not start; drop secretKeyRef.optional",
        )
    return SecretKeyRef(name=str(ref["name"]), key=str(ref["key"]))


def eval_key_ref(
    deployment: Mapping[str, Any], container: str, service_url: str | None
) -> SecretKeyRef | None:
    """``server_key_ref``, and refused when the eval step would send that key to
    ``spec.deploy.serviceUrl``: a URL the run's author chooses, so anyone who may create a run
    could collect the server's key at a host of their own. Without it, eval calls the target
    Deployment's own Service (the operator's URL template), which only an admin sets."""
    ref = server_key_ref(deployment, container)
    if ref is not None and service_url:
        raise ServerKeyError(
            KEY_TO_CHOSEN_URL,
            f"spec.deploy.serviceUrl is set ({service_url}) and the server has an API key: step eval "
            "would send the key to a URL the run chooses. Leave spec.deploy.serviceUrl unset; eval "
            "then calls the target Deployment's own Service",
        )
    return ref


def with_server_key(step: StepDefinition, ref: SecretKeyRef | None) -> StepDefinition:
    """``step`` with the server's key in its Secret env (unchanged when the server has none)."""
    if ref is None:
        return step
    return dataclasses.replace(step, secret_env={**step.secret_env, contract_env.API_KEY: ref})
