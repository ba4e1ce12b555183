"""What a run may use, as the cluster's admin allows it (config.py's admission settings), checked
before any of its Jobs exists.

Whoever may create a LoRAFinetune in a namespace chooses what its pods run and touch: the trainer
image (which runs with the train pod's token and the run's Secrets), the Secrets its steps send
to hosts of its choosing, the Deployment whose env its deploy stage patches, and where its pods may
schedule. The ValidatingAdmissionPolicy in ``manifests/operator/admission/`` refuses the first and
the last at apply time; it cannot look at other objects, so the Secrets' and the Deployment's
labels are checked here only. The operator applies every rule itself too, so the policy is
defence in depth, not a prerequisite. A refused run fails with reason ``NotAllowed`` and a message
that names each spec field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel
from zthumb_contract.spec import SECRET_NAMES, LoRAFinetuneSpec

from zthumb_operator.api import Api
from zthumb_operator.config import ANY, ENV_PREFIX, OperatorConfig

REASON = "NotAllowed"
# The label an admin puts on a Secret that every run in its namespace may use.
SECRET_ALLOW_LABEL = "zthumb.io/allow-runs"
SECRET_ALLOW_VALUE = "true"
# Fields of the spec that name a Secret end in this (tokenSecretRef, credentialsSecretRef, ...).
SECRET_REF_SUFFIX = "SecretRef"


class NotAllowedError(Exception):
    """The run uses something the admin does not allow; the message names every such field."""


def allows(allowed: tuple[str, ...], value: str) -> bool:
    return ANY in allowed or value in allowed


def _listed(allowed: tuple[str, ...]) -> str:
    return ", ".join(allowed) if allowed else "none"


def spec_refusals(config: OperatorConfig, spec: LoRAFinetuneSpec) -> list[str]:
    """What the spec alone shows to be refused: the trainer image, node selector and toleration keys."""
    refusals = []
    image = spec.images.trainer
    prefixes = config.allowed_trainer_images
    if image is not None and ANY not in prefixes and not image.startswith(prefixes):
        refusals.append(
            f"spec.images.trainer: image {image!r} is not allowed here (allowed prefixes: "
            f"{_listed(prefixes)}, {ENV_PREFIX}ALLOWED_TRAINER_IMAGES); leave it unset for the "
            "operator's trainer image"
        )
    for key in spec.resources.node_selector:
        if not allows(config.allowed_node_selector_keys, key):
            refusals.append(
                f"spec.resources.nodeSelector: key {key!r} is not allowed here (allowed keys: "
                f"{_listed(config.allowed_node_selector_keys)}, {ENV_PREFIX}ALLOWED_NODE_SELECTOR_KEYS)"
            )
    for index, toleration in enumerate(spec.resources.tolerations):
        key = str(toleration.get("key") or "")
        if not allows(config.allowed_toleration_keys, key):
            shown = repr(key) if key else "'' (every taint)"
            refusals.append(
                f"spec.resources.tolerations[{index}].key: {shown} is not allowed here (allowed keys: "
                f"{_listed(config.allowed_toleration_keys)}, {ENV_PREFIX}ALLOWED_TOLERATION_KEYS)"
            )
    return refusals


def secret_refs(model: BaseModel, path: str = "spec") -> Iterator[tuple[str, str]]:
    """(field path, Secret name) of every Secret the spec names, wherever the model declares one:
    its ``*SecretRef`` fields and every list of Secret names (marked ``SECRET_NAMES``)."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        here = f"{path}.{field.alias or name}"
        if here.endswith(SECRET_REF_SUFFIX) and value is not None:
            yield here, str(value.name)
        elif SECRET_NAMES in field.metadata:
            yield from ((f"{here}[{index}]", str(secret)) for index, secret in enumerate(value))
        elif isinstance(value, BaseModel):
            yield from secret_refs(value, here)


def secret_refusal(field: str, name: str, labels: Mapping[str, str] | None) -> str | None:
    """Why the Secret ``name`` (None: missing) may not be used, or None when it may."""
    if labels is None:
        return f"{field}: Secret {name} does not exist in this namespace"
    if labels.get(SECRET_ALLOW_LABEL) == SECRET_ALLOW_VALUE:
        return None
    return (
        f"{field}: Secret {name} is not labelled {SECRET_ALLOW_LABEL}={SECRET_ALLOW_VALUE}, so runs may "
        "not use it; an admin labels the Secrets that any run in this namespace may send to a host "
        "of its choosing"
    )


def deployment_refusal(config: OperatorConfig, deployment: Mapping[str, Any]) -> str | None:
    """Why a run may not roll out this Deployment (not a ZThumb server's labels), or None."""
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    wanted = config.deployment_selector
    if all(labels.get(key) == value for key, value in wanted.items()):
        return None
    selector = ",".join(f"{key}={value}" for key, value in wanted.items())
    return (
        f"spec.deploy.deployment: Deployment {deployment['metadata']['name']} is not labelled as a "
        f"ZThumb server ({selector}, {ENV_PREFIX}DEPLOYMENT_SELECTOR), so runs may not roll it out"
    )


async def check_run(api: Api, config: OperatorConfig, run: Mapping[str, Any], spec: LoRAFinetuneSpec) -> None:
    """Raise ``NotAllowedError`` naming every field of the run that the settings refuse."""
    ns = run["metadata"]["namespace"]
    refusals = spec_refusals(config, spec)
    if config.require_secret_label:
        labels: dict[str, dict[str, str] | None] = {}
        for field, name in secret_refs(spec):
            if name not in labels:
                labels[name] = await api.get_secret_labels(ns, name)
            refusal = secret_refusal(field, name, labels[name])
            if refusal:
                refusals.append(refusal)
    if spec.deploy.enabled and config.deployment_selector:
        # Checked again before each rollout (rollout.py): the Deployment may not exist yet.
        deployment = await api.get_deployment(ns, spec.deploy.deployment)
        refusal = deployment_refusal(config, deployment) if deployment else None
        if refusal:
            refusals.append(refusal)
    if refusals:
        raise NotAllowedError("; ".join(refusals))
